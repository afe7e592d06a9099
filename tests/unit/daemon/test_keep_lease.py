"""``keep_lease``: the lease a cycle outside ``planner run`` holds while it scores and pushes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from planner.daemon import run
from planner.daemon.run import finish_jobs, keep_lease
from planner.daemon.schedule import Schedule
from planner.settings import ScheduleSettings
from planner.store import DatabaseLease, open_store


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A migrated SQLite store, and a heartbeat every 0.1 s for leases of 0.5 s."""
    url = f"sqlite:///{tmp_path}/planner.db"
    open_store(url).dispose()
    monkeypatch.setattr(run, "HEARTBEAT_S", 0.1)
    engine = create_engine(url)
    yield engine
    engine.dispose()


def test_the_lease_outlives_its_ttl_inside_the_block_and_is_free_after(engine: Engine) -> None:
    mine = DatabaseLease(engine, "project-1", holder="cycle", ttl_s=0.5)
    other = DatabaseLease(engine, "project-1", holder="daemon", ttl_s=0.5)
    assert mine.acquire()
    with keep_lease(mine):
        time.sleep(1.5)  # three times the ttl: only the heartbeat keeps it
        assert mine.held()
        assert not other.acquire(), "taken while the cycle ran"
    assert not mine.held()
    assert other.acquire(), "released at the end of the block"


def test_a_lease_free_at_the_start_is_taken_by_the_heartbeat(engine: Engine) -> None:
    mine = DatabaseLease(engine, "project-1", holder="cycle", ttl_s=0.5)
    with keep_lease(mine):
        deadline = time.monotonic() + 5
        while not mine.held() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mine.held()


class _SlowSync:
    """A sync job that outlasts the lease's ttl three times, noting whether it led throughout."""

    def __init__(self, lease: DatabaseLease) -> None:
        self.lease = lease
        self.started = threading.Event()
        self.led_throughout: bool | None = None

    def sync(self) -> None:
        self.started.set()
        time.sleep(1.5)
        self.led_throughout = self.lease.held()

    def cycle(self) -> None: ...
    def report(self) -> None: ...
    def housekeeping(self) -> None: ...


def test_a_job_running_at_shutdown_finishes_while_the_lease_is_still_held(
    engine: Engine,
) -> None:
    mine = DatabaseLease(engine, "project-1", holder="daemon", ttl_s=0.5)
    standby = DatabaseLease(engine, "project-1", holder="standby", ttl_s=0.5)
    assert mine.acquire()
    job = _SlowSync(mine)
    schedule = Schedule("project-1", job, ScheduleSettings(), engine)
    schedule.start()
    schedule.run_soon("sync")
    assert job.started.wait(10)
    finish_jobs(schedule, mine)  # SIGTERM arrived while the sync ran
    assert job.led_throughout is True, "the lease ran out under the job"
    assert standby.acquire(), "released once the job was done"
