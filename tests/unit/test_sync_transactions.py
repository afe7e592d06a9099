"""The sync holds no store transaction across a Label Studio call (a real SQLite store).

A listing page that takes long (a busy server, a slow network) must not hold the database's
write lock: a worker writing scores and the daemon renewing its leader lease go on meanwhile.
A sync cut short keeps what it stored and resumes from there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlmodel import select

from integrations.label_studio.fake import FakeLabelStudio
from planner.errors import UnreachableError
from planner.store import DatabaseLease, Store, open_store
from planner.store.models import SyncState, Task
from planner.store.scores import write_scores
from planner.sync import SyncOptions, sync_project
from tests.unit.test_sync import CONFIG, choice

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PAGE = 5
WAIT_S = 10.0


class _StallsAtPage:
    """A backend whose listing stops before page ``page`` until ``release`` is set (or fails
    there with ``fail``), as a slow or dying Label Studio does; ``reached`` is set then."""

    def __init__(self, inner: FakeLabelStudio, page: int, *, fail: bool = False) -> None:
        self.inner, self.page, self.fail = inner, page, fail
        self.reached, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def iter_tasks(self, project_id: int, **kwargs: Any) -> Iterator[Any]:
        for position, task in enumerate(self.inner.iter_tasks(project_id, **kwargs)):
            if position == (self.page - 1) * kwargs["page_size"]:
                self.reached.set()
                if self.fail:
                    raise UnreachableError("the fake Label Studio went away mid-listing")
                assert self.release.wait(WAIT_S), "the test never let the page through"
            yield task


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'planner.db'}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with open_store(url) as opened:
        yield opened


def _impatient(url: str) -> Store:
    """Another connection to the same file that waits 1 s for a lock, not the store's 30 s."""
    return Store(create_engine(url, connect_args={"timeout": 1}))


def test_a_slow_page_leaves_the_database_to_workers_and_the_lease(store: Store, url: str) -> None:
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(12)])
    fake.annotate(ids[0], choice("Car"))
    slow = _StallsAtPage(fake, page=2)
    worker = _impatient(url)
    lease = DatabaseLease(worker.engine, "project-1")
    assert lease.acquire()
    results: list[Any] = []
    options = SyncOptions(page_size=PAGE)
    syncing = threading.Thread(
        target=lambda: results.append(
            sync_project(slow, store, pid, now=NOW, options=options)  # type: ignore[arg-type]
        )
    )
    syncing.start()
    try:
        assert slow.reached.wait(WAIT_S)
        with worker.session() as session:  # StoreError "database is locked" with the lock held
            written = write_scores(
                session, project_id=1, model_version="m", task_ids=ids[:2], probs=[[0.5, 0.5]] * 2
            )
        assert written == 2
        assert lease.renew(), "the leader's heartbeat renews while the page is awaited"
        with worker.session() as session:
            stored = session.exec(select(Task)).all()
            state = session.get(SyncState, 1)
        assert len(stored) == PAGE, "the first page is committed before the second is asked for"
        assert state is not None
        assert state.watermark == max(t.ls_updated_at for t in stored)
    finally:
        slow.release.set()
        syncing.join(WAIT_S)
        worker.dispose()
    (report,) = results
    assert (report.seen, report.new) == (12, 12)
    assert report.watermark == max(t.updated_at for t in fake.iter_tasks(pid))


def test_a_sync_cut_short_keeps_what_it_read_and_resumes_without_a_gap(store: Store) -> None:
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(8)])
    first = sync_project(fake, store, pid, now=NOW)
    for task in ids:
        fake.annotate(task, choice("Car"))
    options = SyncOptions(page_size=3)
    dying = _StallsAtPage(fake, page=2, fail=True)
    with pytest.raises(UnreachableError):
        sync_project(dying, store, pid, now=NOW + timedelta(minutes=1), options=options)  # type: ignore[arg-type]
    with store.session() as session:
        labelled = sorted(
            t.ls_task_id for t in session.exec(select(Task).where(Task.state == "labelled"))
        )
        state = session.get(SyncState, first.project_id)
    assert labelled == ids[:3], "the page read before the failure is kept"
    assert state is not None
    assert state.watermark is not None
    assert state.watermark < min(t.updated_at for t in fake.tasks_by_id(pid, ids[3:]))
    report = sync_project(fake, store, pid, now=NOW + timedelta(minutes=2), options=options)
    assert not report.full
    assert report.changed == 5, "the rest, from where the failed sync stopped"
    with store.session() as session:
        states = {t.ls_task_id: t.state for t in session.exec(select(Task))}
    assert set(states.values()) == {"labelled"}
