"""The in-memory fake holds to the backend contract (the real server: tests/integration)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from integrations.label_studio.fake import FakeLabelStudio
from integrations.label_studio.workbench import Workbench
from planner.errors import TransientError
from tests.unit.integrations.contract import CHECKS, project


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_the_fake_keeps_the_contract(check: Callable[[Workbench], None]) -> None:
    check(FakeLabelStudio())


def test_an_unreachable_fake_raises_a_transient_error() -> None:
    fake = FakeLabelStudio()
    pid, _ = project(fake, 1)
    fake.unreachable = True
    with pytest.raises(TransientError, match="unreachable"):
        list(fake.iter_tasks(pid))
