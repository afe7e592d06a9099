"""Task listings of a real Label Studio 1.23.2 are read whole, or fail; never cut short quietly.

A server of its own, started with ``TASK_API_PAGE_SIZE_MAX=3`` (it sends at most 3 tasks a page
whatever the planner asks for), behind a ``FaultProxy`` that refuses one page of a listing.
A listing cut short would make the reconciliation mark every task it missed as deleted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from integrations.label_studio import launcher
from integrations.label_studio.client import LabelStudioBackend
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.errors import AuthError, IncompleteListingError, TransientError
from planner.store import Store, open_store
from planner.store.models import Task
from planner.sync import sync_project
from tests.faults.proxy import FaultProxy
from tests.integration.label_studio.conftest import free_port
from tests.unit.integrations.contract import CONFIG

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]
PAGE_MAX = 3
SECOND_PAGE = b"&page=2&"


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[launcher.ServerState]:
    """A Label Studio that sends at most ``PAGE_MAX`` tasks a page."""
    root = tmp_path_factory.mktemp("capped-label-studio")
    with pytest.MonkeyPatch.context() as env:
        env.setitem(os.environ, "TASK_API_PAGE_SIZE_MAX", str(PAGE_MAX))
        launcher.install()
        state = launcher.start(root / "data", document_root=root / "images", port=free_port())
    try:
        yield state
    finally:
        launcher.stop(root / "data")


@pytest.fixture(scope="module")
def server(capped: launcher.ServerState) -> Iterator[LabelStudioWorkbench]:
    with LabelStudioWorkbench(capped.url, capped.token) as connected:
        yield connected


@pytest.fixture
def proxy(capped: launcher.ServerState) -> Iterator[FaultProxy]:
    made = FaultProxy("127.0.0.1", capped.port)
    yield made
    made.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as opened:
        yield opened


def _project(server: LabelStudioWorkbench, n: int = 8) -> tuple[int, list[int]]:
    pid = server.create_project(f"listing-{uuid.uuid4().hex[:8]}", CONFIG)
    ids = server.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(n)])
    assert len(ids) == n
    return pid, ids


def _stored(store: Store, state: str) -> list[int]:
    with store.session() as session:
        return sorted(t.ls_task_id for t in session.exec(select(Task).where(Task.state == state)))


def test_a_server_capping_the_page_size_is_listed_whole(
    server: LabelStudioWorkbench, store: Store
) -> None:
    pid, ids = _project(server)
    assert set(server.task_stamps(pid)) == set(ids)
    assert sorted(t.id for t in server.iter_tasks(pid)) == ids
    sync_project(server, store, pid, now=datetime.now(UTC))
    server.delete_task(ids[5])
    report = sync_project(server, store, pid, now=datetime.now(UTC), reconcile=True)
    assert report.deleted == (ids[5],), "only the deleted task, not every one past page 1"
    assert report.problem is None
    assert _stored(store, "deleted") == [ids[5]]


def test_a_page_of_the_id_list_refused_fails_the_sync_and_marks_nothing_deleted(
    server: LabelStudioWorkbench, store: Store, proxy: FaultProxy, capped: launcher.ServerState
) -> None:
    pid, ids = _project(server)
    with LabelStudioBackend(proxy.url, capped.token, attempts=1) as daemon_side:
        sync_project(daemon_side, store, pid, now=datetime.now(UTC))
        proxy.answer_next(SECOND_PAGE, 401)
        with pytest.raises(AuthError, match="rejected the token"):
            daemon_side.task_stamps(pid)
        proxy.answer_next(SECOND_PAGE, 401)
        with pytest.raises(AuthError):
            sync_project(daemon_side, store, pid, now=datetime.now(UTC), reconcile=True)
        assert _stored(store, "deleted") == []
        assert _stored(store, "unlabelled") == ids
        assert set(daemon_side.task_stamps(pid)) == set(ids), "the next try reads them all"


class _DeletesAfterFirstPage(LabelStudioBackend):
    """Someone deletes ``victim`` in Label Studio while the planner reads the id list, right
    after its first page: the tasks after it shift one place towards the first page."""

    def __init__(self, server: LabelStudioWorkbench, victim: int, **kwargs: Any) -> None:
        super().__init__(server.url, kwargs.pop("token"), **kwargs)
        self.server, self.victim, self.done = server, victim, False

    def get(self, path: str, params: Any = None) -> Any:
        answer = super().get(path, params)
        if path == "/api/tasks/" and not self.done:
            self.done = True
            self.server.delete_task(self.victim)
        return answer


def test_tasks_deleted_while_the_id_list_is_read_mark_nothing_deleted(
    server: LabelStudioWorkbench, store: Store, capped: launcher.ServerState
) -> None:
    pid, ids = _project(server)
    sync_project(server, store, pid, now=datetime.now(UTC))
    with _DeletesAfterFirstPage(server, ids[0], token=capped.token) as racing:
        with pytest.raises(IncompleteListingError, match=f"7 of its {len(ids)} tasks"):
            racing.task_stamps(pid)
        racing.done = False
        server_ids = set(ids[2:])  # ids[1] goes the same way as ids[0] now
        racing.victim = ids[1]
        report = sync_project(racing, store, pid, now=datetime.now(UTC), reconcile=True)
    assert report.deleted == ()
    assert report.problem is not None
    assert "reconciliation skipped" in report.problem
    assert _stored(store, "deleted") == [], "a task the list skipped is no deleted task"
    again = sync_project(server, store, pid, now=datetime.now(UTC))
    assert set(again.deleted) == {ids[0], ids[1]}, "the next sync reconciles"
    assert set(_stored(store, "unlabelled")) == server_ids


def test_a_page_that_fails_once_is_fetched_again_and_one_that_keeps_failing_raises(
    server: LabelStudioWorkbench, proxy: FaultProxy, capped: launcher.ServerState
) -> None:
    pid, ids = _project(server)
    with LabelStudioBackend(proxy.url, capped.token, attempts=3) as retrying:
        proxy.answer_next(SECOND_PAGE, 503)
        assert sorted(t.id for t in retrying.iter_tasks(pid)) == ids
        assert proxy.seen(SECOND_PAGE) == 2, "refused once, then asked for again"
    with LabelStudioBackend(proxy.url, capped.token, attempts=1) as once:
        proxy.answer_next(SECOND_PAGE, 503)
        with pytest.raises(TransientError, match="answered 503"):
            list(once.iter_tasks(pid))
