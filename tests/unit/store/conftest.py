"""Stores opened by a test and closed after it, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from planner.store import Store, ensure_project, open_store

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store on a fresh SQLite file or PostgreSQL database."""
    opened = open_store(store_url)
    yield opened
    opened.dispose()


@pytest.fixture
def project_id(store: Store) -> int:
    with store.session() as session:
        return int(ensure_project(session, ls_project_id=7, title="traffic").id or 0)
