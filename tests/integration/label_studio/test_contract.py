"""The real Label Studio 1.23.2 keeps the same contract as the in-memory fake."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from integrations.label_studio.workbench import LabelStudioWorkbench, Workbench
from tests.unit.integrations.contract import CHECKS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_the_real_server_keeps_the_contract(
    check: Callable[[Workbench], None], backend: LabelStudioWorkbench
) -> None:
    check(backend)
