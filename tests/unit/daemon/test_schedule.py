"""The daemon's schedule: APScheduler with its job store in a real SQLite database."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_ERROR
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from planner.daemon.schedule import JOBS, Schedule, next_report_time, run_job
from planner.errors import ConfigError
from planner.settings import ScheduleSettings


class Runner:
    """Counts the jobs it was asked to run; ``sync`` can be made slow."""

    def __init__(self, sync_seconds: float = 0.0) -> None:
        self.calls: Counter[str] = Counter()
        self.sync_seconds = sync_seconds
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def _run(self, name: str, seconds: float = 0.0) -> None:
        with self._lock:
            self.calls[name] += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(seconds)
        with self._lock:
            self.running -= 1

    def sync(self) -> None:
        self._run("sync", self.sync_seconds)

    def cycle(self) -> None:
        self._run("cycle")

    def report(self) -> None:
        self._run("report")

    def housekeeping(self) -> None:
        self._run("housekeeping")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return create_engine(f"sqlite:///{tmp_path / 'planner.db'}")


def _wait(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.02)
    return False


def test_four_jobs_with_their_triggers(engine: Engine) -> None:
    schedule = Schedule("p1", Runner(), ScheduleSettings(timezone="Europe/Berlin"), engine)
    schedule.start()
    try:
        runs = schedule.next_runs()
        assert set(runs) == set(JOBS)
        now = datetime.now(UTC)
        sync_at = runs["sync"]
        assert sync_at is not None
        assert timedelta(minutes=4) < sync_at - now <= timedelta(minutes=5)
        report_at = runs["report"]
        assert report_at is not None
        assert report_at.astimezone(report_at.tzinfo).strftime("%H:%M") == "07:00"
        assert str(report_at.tzinfo) == "Europe/Berlin"
    finally:
        schedule.shutdown()


def test_run_soon_runs_the_job_now(engine: Engine) -> None:
    runner = Runner()
    schedule = Schedule("p2", runner, ScheduleSettings(), engine)
    schedule.start()
    try:
        schedule.run_soon("sync")
        assert _wait(lambda: runner.calls["sync"] == 1)
        assert runner.calls["cycle"] == 0
    finally:
        schedule.shutdown()


def test_a_job_never_overlaps_itself(engine: Engine) -> None:
    runner = Runner(sync_seconds=0.5)
    schedule = Schedule("p3", runner, ScheduleSettings(sync_interval=timedelta(seconds=1)), engine)
    schedule.start()
    try:
        for _ in range(3):
            schedule.run_soon("sync")
            time.sleep(0.1)
        assert _wait(lambda: runner.calls["sync"] >= 1)
        time.sleep(0.6)
        assert runner.most_at_once == 1
    finally:
        schedule.shutdown()


def test_a_restart_keeps_the_stored_schedule(engine: Engine) -> None:
    settings = ScheduleSettings(sync_interval=timedelta(hours=2))
    first = Schedule("p4", Runner(), settings, engine)
    first.start()
    before = first.next_runs()
    first.shutdown()
    time.sleep(1.1)  # a new trigger would now compute a later next run time
    second = Schedule("p4", Runner(), settings, engine)
    second.start()
    try:
        assert second.next_runs()["sync"] == before["sync"]
    finally:
        second.shutdown()


def test_changed_settings_replace_the_stored_trigger(engine: Engine) -> None:
    first = Schedule("p5", Runner(), ScheduleSettings(report_at="07:00"), engine)
    first.start()
    first.shutdown()
    second = Schedule("p5", Runner(), ScheduleSettings(report_at="18:30"), engine)
    second.start()
    try:
        report = second.next_runs()["report"]
        assert report is not None
        assert report.strftime("%H:%M") == "18:30"
    finally:
        second.shutdown()


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # the day before the spring change: 07:00 CET is 06:00 UTC
        (datetime(2026, 3, 28, 6, 0, tzinfo=UTC), datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),
        # after the change 07:00 CEST is 05:00 UTC
        (datetime(2026, 3, 29, 5, 0, tzinfo=UTC), datetime(2026, 3, 30, 5, 0, tzinfo=UTC)),
        # a minute before the report
        (datetime(2026, 11, 2, 5, 59, tzinfo=UTC), datetime(2026, 11, 2, 6, 0, tzinfo=UTC)),
    ],
)
def test_next_report_time_follows_the_time_zone(after: datetime, expected: datetime) -> None:
    settings = ScheduleSettings(timezone="Europe/Berlin", report_at="07:00")
    assert next_report_time(settings, after) == expected


def test_a_job_for_a_daemon_not_running_here_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="restart `planner run`"):
        run_job("nobody", "sync")


def test_a_paused_schedule_runs_nothing_until_started_again(engine: Engine) -> None:
    runner = Runner()
    schedule = Schedule("p1", runner, ScheduleSettings(sync_interval=timedelta(seconds=1)), engine)
    schedule.start()
    try:
        assert schedule.running
        schedule.pause()  # the lease was lost: a standby runs no job
        assert not schedule.running
        before = runner.calls["sync"]
        schedule.run_soon("sync")
        time.sleep(1.5)
        assert runner.calls["sync"] == before, "a paused schedule ran a job"
        schedule.start()  # leading again
        assert schedule.running
        assert _wait(lambda: runner.calls["sync"] > before)
    finally:
        schedule.shutdown()
    assert not schedule.running


def test_a_job_that_nudges_another_does_not_hang_the_shutdown(engine: Engine) -> None:
    """A sync that finds the batch done calls ``run_soon("cycle")``; when that happens while
    the daemon shuts down, the shutdown still ends (APScheduler alone deadlocks here)."""
    started = threading.Event()
    holder: list[Schedule] = []

    class Nudging(Runner):
        def sync(self) -> None:
            started.set()
            time.sleep(0.5)  # the shutdown begins while this job runs
            holder[0].run_soon("cycle")
            super().sync()

    runner = Nudging()
    schedule = Schedule("p6", runner, ScheduleSettings(), engine)
    holder.append(schedule)
    schedule.start()
    schedule.run_soon("sync")
    assert started.wait(5)
    done = threading.Thread(target=schedule.shutdown, daemon=True)
    done.start()
    done.join(10)
    assert not done.is_alive(), "the shutdown hung on a job that called run_soon"
    assert runner.calls["sync"] == 1
    assert not schedule.running


def test_daemons_of_two_projects_sharing_a_database_run_only_their_own_jobs(
    engine: Engine,
) -> None:
    fast = ScheduleSettings(sync_interval=timedelta(seconds=0.2))
    first, second = Runner(), Runner()
    one = Schedule("project-1", first, fast, engine)
    two = Schedule("project-2", second, fast, engine)
    one.start()
    two.start()
    failed: list[BaseException] = []
    for schedule in (one, two):
        schedule._scheduler.add_listener(
            lambda event: failed.append(event.exception), EVENT_JOB_ERROR
        )
    try:
        assert _wait(lambda: first.calls["sync"] >= 3 and second.calls["sync"] >= 3, timeout=30)
        # with one shared table each scheduler saw (and ran) the other's due jobs too: in
        # another process, where that daemon does not run, they failed and were lost
        for schedule in (one, two):
            mine = {job.id for job in schedule._scheduler.get_jobs()}
            assert mine == {schedule.job_id(name) for name in JOBS}
    finally:
        one.shutdown()
        two.shutdown()
    assert failed == []


def test_the_schedule_outlives_a_database_locked_past_its_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "planner.db"
    # a short busy timeout, so the job store's writes fail while another holds the lock
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    runner = Runner()
    schedule = Schedule("p1", runner, ScheduleSettings(sync_interval=timedelta(seconds=1)), engine)
    schedule.start()
    try:
        assert _wait(lambda: runner.calls["sync"] >= 1, timeout=10)
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another writer: reads go on, writes fail, 3 s
        time.sleep(3)
        locker.execute("COMMIT")
        locker.close()
        after = runner.calls["sync"]
        # the scheduler's thread lived through it and goes on running the jobs
        assert _wait(lambda: runner.calls["sync"] >= after + 2, timeout=15)
        assert schedule._scheduler._thread.is_alive()
    finally:
        schedule.shutdown()


def test_a_job_handed_over_as_the_shutdown_began_is_skipped(engine: Engine) -> None:
    runner = Runner()
    schedule = Schedule("p1", runner, ScheduleSettings(), engine)
    schedule.start()
    schedule.shutdown()
    schedule._runner.sync()  # what the executor would call for a job submitted just before
    assert runner.calls["sync"] == 0


def test_a_changed_misfire_grace_reaches_the_stored_jobs(engine: Engine) -> None:
    first = Schedule("p9", Runner(), ScheduleSettings(misfire_grace=timedelta(hours=1)), engine)
    first.start()
    first.shutdown()
    second = Schedule("p9", Runner(), ScheduleSettings(misfire_grace=timedelta(hours=6)), engine)
    second.start()
    try:
        graces = {job.misfire_grace_time for job in second._scheduler.get_jobs()}
        assert graces == {6 * 3600}
    finally:
        second.shutdown()
