"""A fresh SQLite store per test, and the session's digit images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from planner.store import Store, open_store
from tests.unit.workers.conftest import digit_files

__all__ = ["digit_files", "store"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as opened:
        yield opened
