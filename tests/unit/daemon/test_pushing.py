"""A batch whose tasks were deleted, or that Label Studio refuses, never holds up the daemon:
the in-memory Label Studio and a SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from integrations.label_studio.fake import FakeLabelStudio
from planner.core.quotas import Quota
from planner.daemon.service import CycleOutcome, ProjectDaemon
from planner.errors import ConfigError, TransientError
from planner.ports import PushBatch, PushResult
from planner.store import Store
from planner.store.lease import DatabaseLease
from planner.store.models import Batch, BatchItem, Task
from tests.unit.daemon.helpers import Project150, TableScorer, by_task_id, digits_project
from tests.unit.daemon.helpers import make_daemon as _make_daemon


class _DeletesBeforePush(FakeLabelStudio):
    """Someone deletes the first ``delete`` tasks of the batch in Label Studio after the
    planner planned it and before its push arrives (while it scored, say)."""

    def __init__(self, inner: FakeLabelStudio, delete: int) -> None:
        self.__dict__ = inner.__dict__  # the same server
        self.delete = delete
        self.deleted: list[int] = []

    def push_batch(self, project_id: int, batch: PushBatch) -> PushResult:
        if not self.deleted:
            ranked = [task for task, _ in sorted(batch.items, key=lambda item: item[1])]
            self.deleted = ranked[: self.delete]
            for task in self.deleted:
                self.delete_task(task)
        return super().push_batch(project_id, batch)


def _daemon(
    project: Project150, store: Store, now: list[datetime], **extra: object
) -> ProjectDaemon:
    scorer = TableScorer(store, by_task_id)
    quotas = [Quota("7", target=40)]
    return _make_daemon(project, store, quotas, scorer, clock=lambda: now[0], **extra)


def _items(store: Store) -> dict[int, str]:
    with store.session() as session:
        return {i.ls_task_id: i.state for i in session.exec(select(BatchItem)).all()}


def _batch_states(store: Store) -> list[str]:
    with store.session() as session:
        return [b.state for b in session.exec(select(Batch).order_by(Batch.number)).all()]


def _cycle_deleting(
    store: Store, targets: list[int], delete: int
) -> tuple[Project150, _DeletesBeforePush, ProjectDaemon, CycleOutcome]:
    """A cycle during which ``delete`` tasks of its batch are deleted in Label Studio."""
    project = digits_project(targets)
    backend = _DeletesBeforePush(project.fake, delete=delete)
    daemon = _daemon(project, store, [datetime.now(UTC)], backend=backend)
    return project, backend, daemon, daemon.cycle()


def test_tasks_deleted_before_the_push_are_left_out_and_the_rest_is_served(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project, backend, daemon, outcome = _cycle_deleting(store, digit_files[1], delete=2)
    assert outcome.why == "pushed"
    assert outcome.pushed is not None
    assert outcome.missing == tuple(sorted(backend.deleted))
    assert outcome.as_dict()["missing"] == sorted(backend.deleted)
    items = _items(store)
    assert len(items) == 10
    assert {t for t, s in items.items() if s == "expired"} == set(backend.deleted)
    assert {s for t, s in items.items() if t not in backend.deleted} == {"pushed"}
    served = project.fake.view_task_ids(project.pid, 1)
    assert len(served) == 8
    assert not set(served) & set(backend.deleted)
    assert project.fake.next_task(project.pid) == served[0]
    with store.session() as session:
        rows = session.exec(select(Task).where(Task.state == "deleted")).all()
        assert sorted(t.ls_task_id for t in rows) == sorted(backend.deleted)
    assert daemon.health.state == "ok"
    assert daemon.sync() is not None, "the next job syncs"
    assert _batch_states(store) == ["active"]
    with store.session() as session:  # score pruning keeps the scores it was planned from
        assert outcome.model_version
        assert session.exec(select(Batch.model_version)).all() == [outcome.model_version]


def test_a_batch_whose_tasks_are_all_gone_expires_unpushed_and_the_daemon_goes_on(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project, backend, daemon, outcome = _cycle_deleting(store, digit_files[1], delete=10)
    assert outcome.pushed is None
    assert "was deleted in Label Studio" in outcome.why
    assert len(outcome.missing) == 10
    assert _batch_states(store) == ["expired"]
    assert set(_items(store).values()) == {"expired"}
    assert project.fake.list_predictions(project.pid) == [], "nothing was pushed"
    assert daemon.health.state == "ok", "a deleted task is no Label Studio outage"
    assert daemon.sync() is not None
    again = daemon.cycle()
    assert again.why == "pushed", "the next cycle plans from the tasks that are left"
    assert _batch_states(store) == ["expired", "pushed"]
    assert not set(project.fake.view_task_ids(project.pid, 1)) & set(backend.deleted)


class _Refuses(FakeLabelStudio):
    """Label Studio refuses the push with ``error`` the first ``times`` times."""

    def __init__(self, inner: FakeLabelStudio, error: Exception, times: int) -> None:
        self.__dict__ = inner.__dict__
        self.error, self.times = error, times

    def push_batch(self, project_id: int, batch: PushBatch) -> PushResult:
        if self.times > 0:
            self.times -= 1
            raise self.error
        return super().push_batch(project_id, batch)


def test_a_half_pushed_batch_refused_for_good_expires_and_the_sync_goes_on(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    now = [datetime.now(UTC)]
    outage = _Refuses(project.fake, TransientError("Label Studio answered 503"), times=1)
    daemon = _daemon(project, store, now, backend=outage)
    assert daemon.cycle().why.startswith("failed, retried next time")
    assert _batch_states(store) == ["planned"]
    assert daemon.health.state == "failing"
    # back, but the batch is refused now (a 400 the planner cannot get past)
    refusal = ConfigError("Label Studio refused predictions of project 1 (400): bad task")
    daemon.backend = _Refuses(project.fake, refusal, times=5)
    now[0] += timedelta(seconds=5)
    report = daemon.sync()
    assert report is not None, "the refused batch must not hold up the sync"
    assert daemon.health.state == "ok"
    assert _batch_states(store) == ["expired"]
    assert set(_items(store).values()) == {"expired"}
    assert daemon.sync() is not None
    daemon.housekeeping()
    assert _batch_states(store) == ["expired"], "expired once, never pushed again"


@pytest.mark.parametrize("error", [ConfigError("refused (400)"), TransientError("503")])
def test_only_an_outage_backs_off_after_a_failed_push(
    store: Store, digit_files: tuple[Path, list[int]], error: Exception
) -> None:
    project = digits_project(digit_files[1])
    now = [datetime.now(UTC)]
    daemon = _daemon(project, store, now, backend=_Refuses(project.fake, error, times=1))
    outcome = daemon.cycle()
    assert outcome.pushed is None
    if isinstance(error, TransientError):
        assert daemon.health.state == "failing"
        assert _batch_states(store) == ["planned"], "pushed again by the next job"
    else:
        assert daemon.health.state == "ok"
        assert outcome.why.startswith("Label Studio refused the batch")
        assert _batch_states(store) == ["expired"]
        assert daemon.cycle().why == "pushed", "the next cycle plans and pushes a new one"


class _LeaseStoreDown(DatabaseLease):
    """A lease held at the cycle's start whose store stops answering before the push (Redis
    going down while the pool is scored: not producible at that moment here)."""

    def __init__(self, inner: DatabaseLease) -> None:
        self.__dict__ = inner.__dict__

    def renew(self) -> bool:
        raise TransientError("Redis leader lease 'project-1': Connection refused")

    def acquire(self) -> bool:
        raise TransientError("Redis leader lease 'project-1': Connection refused")


def test_a_lease_store_down_at_the_push_waits_and_blames_not_label_studio(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    daemon = _daemon(project, store, [datetime.now(UTC)])
    assert daemon.lease.acquire()
    daemon.lease = _LeaseStoreDown(daemon.lease)  # type: ignore[arg-type]
    outcome = daemon.cycle()
    assert outcome.pushed is None
    assert daemon.health.state == "ok", "Label Studio was not at fault"
    assert _batch_states(store) == [], "nothing planned was kept for a push that never came"
    assert project.fake.view_task_ids(project.pid, 1) == []
