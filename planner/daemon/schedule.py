"""When the daemon acts: APScheduler jobs kept in the planner's database.

APScheduler decides *when*; *what* is the ``JobRunner`` of the running daemon (STYLE 7). Jobs
are stored as ``run_job(daemon_key, job)``, so the job store holds only strings and a restart
finds its schedule where it left it: a daily report missed while the daemon was down runs on
start within the misfire grace, an interval job keeps its next run time.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from planner.errors import ConfigError, StoreError
from planner.settings import ScheduleSettings
from planner.store.db import JOB_TABLE_PREFIX

log = logging.getLogger("planner.daemon")
JobName = Literal["sync", "cycle", "report", "housekeeping"]
JOBS: tuple[JobName, ...] = ("sync", "cycle", "report", "housekeeping")


def job_table(key: str) -> str:
    """The job table of daemon ``key``: a table a key, for APScheduler runs every due job of
    its table, and daemons of other projects sharing the database would run each other's (the
    run failing there: no such daemon in that process), each project losing syncs and reports."""
    return f"{JOB_TABLE_PREFIX}_{re.sub(r'[^a-z0-9]+', '_', key.lower())}"[:63]


class JobRunner(Protocol):
    """What each scheduled job does; the daemon implements it."""

    def sync(self) -> None: ...
    def cycle(self) -> None: ...
    def report(self) -> None: ...
    def housekeeping(self) -> None: ...


_RUNNERS: dict[str, JobRunner] = {}
"""Daemons running in this process by key; the job store can only hold their keys."""


def run_job(daemon_key: str, job: str) -> None:
    """The function every stored job calls: look up the daemon and run one of its jobs."""
    runner = _RUNNERS.get(daemon_key)
    if runner is None:
        raise ConfigError(f"no daemon {daemon_key!r} runs in this process; restart `planner run`")
    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}; jobs are {JOBS}")
    getattr(runner, job)()


class _Running:
    """The jobs of one schedule running now, so a shutdown can wait for them without holding
    the scheduler's locks (APScheduler's own ``shutdown(wait=True)`` waits while holding the
    job-store lock, and a job that calls ``run_soon`` then waits on it forever)."""

    def __init__(self, runner: JobRunner, closing: threading.Event) -> None:
        self._runner = runner
        self._closing = closing
        self._count = 0
        self._idle = threading.Condition()

    def __getattr__(self, job: str) -> Callable[[], None]:
        run: Callable[[], None] = getattr(self._runner, job)

        def counted() -> None:
            if self._closing.is_set():  # handed to the executor as the shutdown began
                log.info("%s skipped: the daemon is stopping", job)
                return
            with self._idle:
                self._count += 1
            try:
                run()
            finally:
                with self._idle:
                    self._count -= 1
                    self._idle.notify_all()

        return counted

    def wait_idle(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._count == 0)


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: JobName
    trigger: BaseTrigger


def job_specs(schedule: ScheduleSettings) -> tuple[JobSpec, ...]:
    """The triggers of the four jobs for ``schedule``."""
    hour, minute = (int(part) for part in schedule.report_at.split(":"))
    zone = ZoneInfo(schedule.timezone)
    return (
        JobSpec("sync", _every(schedule.sync_interval)),
        JobSpec("cycle", _every(schedule.cycle_interval)),
        JobSpec("report", CronTrigger(hour=hour, minute=minute, timezone=zone)),
        JobSpec("housekeeping", _every(schedule.housekeeping_interval)),
    )


def next_report_time(schedule: ScheduleSettings, after: datetime) -> datetime:
    """When the daily report runs next after ``after`` (aware), in the configured zone."""
    if after.tzinfo is None:
        raise ConfigError("next_report_time needs an aware datetime")
    trigger = next(s.trigger for s in job_specs(schedule) if s.name == "report")
    fire: datetime | None = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    if fire is None:  # a daily cron always fires again
        raise ConfigError(f"report_at {schedule.report_at!r} never fires")
    return fire


class _JobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """APScheduler's SQLAlchemy job store, surviving a database error where the scheduler's
    loop does not guard it: an error there (SQLite locked past its busy timeout, a dropped
    PostgreSQL connection) ended the scheduler's thread while it still said it was running,
    and the leader held its lease doing nothing. A failed update leaves the job due (it runs
    again, once); a failed look at the next run time looks again in ``RETRY_S``."""

    RETRY_S = 5.0

    def update_job(self, job: Job) -> None:
        try:
            super().update_job(job)
        except OperationalError as exc:
            log.warning("could not store the next run of %s: %s", job.id, exc.orig)

    def get_next_run_time(self) -> datetime | None:
        try:
            found: datetime | None = super().get_next_run_time()
        except OperationalError as exc:
            log.warning("could not read the schedule: %s; trying again shortly", exc.orig)
            return datetime.now(UTC) + timedelta(seconds=self.RETRY_S)
        return found


class Schedule:
    """The daemon's scheduler: four jobs for one daemon key, stored through ``engine``."""

    def __init__(self, key: str, runner: JobRunner, schedule: ScheduleSettings, engine: Engine):
        self.key = key
        self._closing = threading.Event()
        self._runner = _Running(runner, self._closing)
        self._specs = job_specs(schedule)
        self._misfire_s = int(schedule.misfire_grace.total_seconds())
        self._scheduler = BackgroundScheduler(
            jobstores={"default": _JobStore(engine=engine, tablename=job_table(key))},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": self._misfire_s,
            },
            timezone=UTC,
        )

    def start(self) -> None:
        """Register the runner, reconcile stored jobs with the settings, then run them (again,
        after ``pause``: a daemon that lost the lease and won it back)."""
        _RUNNERS[self.key] = self._runner
        self._closing.clear()
        try:
            self._reconcile()
        except OperationalError as exc:  # the job store is the planner's database
            raise StoreError(
                f"cannot start the schedule: the planner database is unavailable ({exc.orig}); "
                "the daemon tries again at its next heartbeat"
            ) from exc
        self._scheduler.resume()

    def _reconcile(self) -> None:
        """Started (or paused), with the stored jobs matching the settings."""
        if self._scheduler.state == STATE_STOPPED:
            self._scheduler.start(paused=True)
        else:
            self._scheduler.pause()
        for spec in self._specs:
            job_id = self.job_id(spec.name)
            stored = self._scheduler.get_job(job_id)
            if (
                stored is not None
                and _same(stored.trigger, spec.trigger)
                and stored.misfire_grace_time == self._misfire_s
            ):
                continue  # keep its next run time (and a missed run) across the restart
            self._scheduler.add_job(
                run_job,
                spec.trigger,
                args=[self.key, spec.name],
                id=job_id,
                name=f"{spec.name} ({self.key})",
                replace_existing=True,
            )

    def pause(self) -> None:
        """Stop running jobs (the running one finishes); a standby's schedule stays paused, so
        only the leader's scheduler moves the shared job store."""
        if self._scheduler.state == STATE_RUNNING:
            self._scheduler.pause()

    @property
    def running(self) -> bool:
        """Started and not paused."""
        return bool(self._scheduler.state == STATE_RUNNING)

    def run_soon(self, name: JobName) -> None:
        """Run a job now instead of at its next time (a webhook, a finished batch); nothing
        once the schedule is shutting down."""
        if self._closing.is_set() or self._scheduler.state == STATE_STOPPED:
            return
        try:
            self._scheduler.modify_job(self.job_id(name), next_run_time=datetime.now(UTC))
        except OperationalError as exc:  # the job still runs at its next time
            log.warning("could not move the %s job forward: %s", name, exc.orig)

    def next_runs(self) -> Mapping[str, datetime | None]:
        """Each job's next run time, for ``planner status``."""
        jobs: dict[str, Job | None] = {n: self._scheduler.get_job(self.job_id(n)) for n in JOBS}
        return {name: (job.next_run_time if job else None) for name, job in jobs.items()}

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop scheduling; with ``wait`` the running job finishes first (outside the
        scheduler's locks, so the job may still call ``run_soon``)."""
        self._closing.set()
        if self._scheduler.state != STATE_STOPPED:
            if wait:
                self._scheduler.pause()  # no new job starts
                self._runner.wait_idle()
            self._scheduler.shutdown(wait=wait)
        _RUNNERS.pop(self.key, None)

    def job_id(self, name: str) -> str:
        return f"{self.key}:{name}"


def _same(stored: BaseTrigger, wanted: BaseTrigger) -> bool:
    """Same schedule: ``str`` shows the fields and period, the zone is compared apart."""
    zone = str(getattr(stored, "timezone", None)) == str(getattr(wanted, "timezone", None))
    return str(stored) == str(wanted) and zone


def _every(period: timedelta) -> IntervalTrigger:
    return IntervalTrigger(seconds=max(1, int(period.total_seconds())), timezone=UTC)
