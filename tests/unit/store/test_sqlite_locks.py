"""A SQLite file another process holds the write lock of: opening it waits instead of failing.

Switching a file to WAL needs the write lock and SQLite does not wait for it (the busy timeout
does not apply), so a daemon that opened the file while a second one migrated it died with
"database is locked" (seen with two `planner run` on one store).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from planner.daemon.schedule import Schedule
from planner.errors import StoreError
from planner.settings import ScheduleSettings
from planner.store.db import make_engine


@contextmanager
def write_locked(path: Path, seconds: float) -> Iterator[None]:
    """Another connection holds the write lock of ``path`` for ``seconds`` (in a thread)."""
    held = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("CREATE TABLE IF NOT EXISTS other (i INTEGER)")
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO other VALUES (1)")
        held.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(5)
    try:
        yield
    finally:
        thread.join()


def test_a_new_file_switches_to_wal_once_the_lock_is_free(tmp_path: Path) -> None:
    path = tmp_path / "planner.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with write_locked(path, 0.6):
            started = time.monotonic()
            with engine.connect() as connection:
                mode = connection.execute(text("PRAGMA journal_mode")).scalar_one()
            waited = time.monotonic() - started
        assert mode == "wal"
        assert waited >= 0.3, "it waited for the lock rather than racing it"
    finally:
        engine.dispose()


class Idle:
    def sync(self) -> None: ...
    def cycle(self) -> None: ...
    def report(self) -> None: ...
    def housekeeping(self) -> None: ...


def test_a_schedule_whose_store_is_locked_says_so_and_starts_on_the_next_try(
    tmp_path: Path,
) -> None:
    path = tmp_path / "planner.db"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    schedule = Schedule("p7", Idle(), ScheduleSettings(), engine)
    try:
        sqlite3.connect(path).execute("PRAGMA journal_mode=DELETE").close()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # not even a read gets through
        try:
            with pytest.raises(StoreError, match="planner database is unavailable"):
                schedule.start()
            assert not schedule.running
            schedule.run_soon("sync")  # a nudge meanwhile is dropped, not raised
        finally:
            other.execute("ROLLBACK")
            other.close()
        schedule.start()
        assert schedule.running
        assert set(schedule.next_runs()) == {"sync", "cycle", "report", "housekeeping"}
    finally:
        schedule.shutdown()
        engine.dispose()
