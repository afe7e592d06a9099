"""Label Studio faults, injected for real through a TCP proxy in front of the real server.

Each test runs the project daemon in this process against the real Label Studio behind a
``FaultProxy``: the server stopped in the middle of a sync or a push, answering too slowly,
answering 503, the token rotated, the project deleted. The daemon must back off, record the
state (``planner status``, the dashboard, ``/metrics``), resume once the fault ends, and lose
no annotation nor push a batch twice (checked against the store and the server afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from starlette.testclient import TestClient

from integrations.label_studio.client import LabelStudioBackend
from integrations.label_studio.launcher import ServerState
from planner.daemon.rotation import token_refresher
from planner.daemon.service import ProjectDaemon
from planner.settings import load_settings
from planner.status import project_statuses, state_lines
from planner.store.models import Batch, BatchItem
from planner.web import WebConfig, create_app
from tests.faults.conftest import Rig, compare, make_daemon
from tests.faults.tally import Tally
from tests.integration.daemon.processes import batch_items, next_batch_view, planner_predictions

pytestmark = [pytest.mark.fault, pytest.mark.integration]
TASKS = b"GET /api/tasks"


class _Clock:
    """The daemon's clock: real time, or frozen at ``frozen`` while a test checks that the
    daemon backs off (on a loaded machine the checks between two calls may take longer than
    the suite's 0.3 s backoff itself)."""

    def __init__(self) -> None:
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen or datetime.now(UTC)


def _wait_retry(daemon: ProjectDaemon) -> None:
    """Until the backed-off next try is due (the schedule would run the sync then)."""
    deadline = time.monotonic() + 10
    while not daemon.retry_due():
        assert time.monotonic() < deadline, "the backoff never ends"
        time.sleep(0.05)


def _shown(rig: Rig, state: str) -> None:
    """The state is in the store for ``planner status`` and on the dashboard's front page."""
    store, tmp_path = rig.store, rig.tmp_path
    with store.session() as session:
        (status,) = project_statuses(session)
    assert status.label_studio is not None
    assert status.label_studio.state == state
    assert status.label_studio_line().startswith(state)
    board = WebConfig(reports_dir=tmp_path / "reports", artifacts_dir=tmp_path / "artifacts")
    app = create_app(board, states=lambda: state_lines(store))
    page = TestClient(app, base_url="http://127.0.0.1").get("/").text
    if state == "ok":
        assert 'role="alert"' not in page
    else:
        assert f"Label Studio {state} since" in page


def _metric_state(daemon: ProjectDaemon, state: str) -> None:
    line = f'planner_label_studio_state{{planner_label_studio_state="{state}"}} 1.0'
    assert line.encode() in daemon.telemetry.render()


def test_label_studio_stopped_mid_sync_loses_no_annotation(tally: Tally, rig: Rig) -> None:
    clock = _Clock()
    daemon = rig.daemon(clock=clock)
    assert daemon.sync() is not None
    with tally.fault("label_studio.stopped_mid_sync"):
        for task in rig.live.ids[20:25]:  # annotators go on; the daemon will not see them
            rig.annotate(task)
        rig.proxy.down_after(TASKS, 1)  # the project is read, the task listing is cut
        assert daemon.sync() is None
        clock.frozen = daemon.health.since  # the moment of the failure
        assert (daemon.health.state, daemon.health.failures) == ("unreachable", 1)
        _shown(rig, "unreachable")
        _metric_state(daemon, "unreachable")
        asked = rig.proxy.seen(b"HTTP/1.1")
        assert daemon.sync() is None
        assert rig.proxy.seen(b"HTTP/1.1") == asked, "backing off: no call before the next try"
        assert daemon.health.failures == 1
        clock.frozen = None
        _wait_retry(daemon)
        assert daemon.sync() is None, "still down"
        assert daemon.health.failures == 2
        rig.proxy.heal()
        _wait_retry(daemon)
        assert daemon.sync() is not None
        assert daemon.health.state == "ok"
        _shown(rig, "ok")
        _metric_state(daemon, "ok")
    found = compare(rig.backend, rig.store, rig.live.pid)
    tally.annotations_lost(found.lost)
    assert found.lost == 0


def test_a_slow_label_studio_times_out_then_resumes(tally: Tally, rig: Rig) -> None:
    daemon = rig.daemon()
    assert daemon.sync() is not None
    with tally.fault("label_studio.slow"):
        rig.annotate(rig.live.ids[25])
        rig.proxy.slow(3.0)  # the adapter's timeout is 2 s
        assert daemon.sync() is None
        assert daemon.health.state == "slow"
        assert "did not answer in time" in (daemon.health.last_error or "")
        _shown(rig, "slow")
        rig.proxy.heal()
        _wait_retry(daemon)
        assert daemon.sync() is not None
        assert daemon.health.state == "ok"
    found = compare(rig.backend, rig.store, rig.live.pid)
    tally.annotations_lost(found.lost)
    assert found.lost == 0


def test_label_studio_answering_503_is_backed_off_then_resumed(tally: Tally, rig: Rig) -> None:
    daemon = rig.daemon()
    assert daemon.sync() is not None
    with tally.fault("label_studio.5xx"):
        rig.proxy.answer(503)
        rig.annotate(rig.live.ids[26])
        outcome = daemon.cycle()
        assert outcome.pushed is None
        assert daemon.health.state == "failing"
        assert "answered 503" in (daemon.health.last_error or "")
        _shown(rig, "failing")
        _metric_state(daemon, "failing")
        first_wait = daemon.health.retry_at
        _wait_retry(daemon)
        assert daemon.sync() is None
        assert daemon.health.retry_at is not None
        assert first_wait is not None
        assert daemon.health.retry_at > first_wait
        assert daemon.health.failures == 2
        rig.proxy.heal()
        _wait_retry(daemon)
        assert daemon.cycle().pushed is not None
        assert daemon.health.state == "ok"
    found = compare(rig.backend, rig.store, rig.live.pid)
    tally.annotations_lost(found.lost)
    tally.duplicate_pushes(found.duplicates)
    assert (found.lost, found.duplicates) == (0, 0)


def test_label_studio_stopped_mid_push_finishes_that_batch_once(tally: Tally, rig: Rig) -> None:
    daemon = rig.daemon()
    assert daemon.sync() is not None
    with tally.fault("label_studio.stopped_mid_push"):
        # predictions imported and ranks written; the server goes away at the view update
        rig.proxy.down_after(b"/api/dm/views", 1)
        outcome = daemon.cycle()
        assert outcome.pushed is None
        assert outcome.why.startswith("failed, retried next time")
        assert daemon.health.state == "unreachable"
        with rig.store.session() as session:
            assert [b.state for b in session.exec(select(Batch)).all()] == ["planned"]
        rig.proxy.heal()
        _wait_retry(daemon)
        finished = daemon.cycle()
        assert finished.recovered, finished.why
        with rig.store.session() as session:
            (batch,) = session.exec(select(Batch)).all()
        assert finished.pushed == batch.tag
        assert next_batch_view(rig.backend, rig.live.pid) == batch_items(
            Path(str(rig.store.engine.url.database)), batch.tag
        )
    found = compare(rig.backend, rig.store, rig.live.pid)
    tally.duplicate_pushes(found.duplicates)
    tally.annotations_lost(found.lost)
    assert (found.duplicates, found.lost) == (0, 0)


def test_a_rotated_token_is_reread_from_the_token_file(
    tally: Tally, rig: Rig, label_studio: ServerState
) -> None:
    annotator = rig.backend.create_annotator(f"rotating-{rig.live.pid}@example.com")
    old = rig.backend._tokens[annotator]
    token_file = rig.tmp_path / "token"
    token_file.write_text(old + "\n")
    config = rig.tmp_path / "rotating.toml"
    config.write_text(
        f'[label_studio]\nurl = "{rig.proxy.url}"\nproject_id = {rig.live.pid}\n'
        f'token_file = "{token_file}"\n'
    )
    settings = load_settings(config, environ=False)
    with LabelStudioBackend(rig.proxy.url, old, timeout_s=5, attempts=1) as adapter:
        daemon = make_daemon(rig.live, rig.store, adapter)
        daemon.refresh_token = token_refresher(settings, adapter)
        assert daemon.sync() is not None
        with tally.fault("label_studio.token_rotated"):
            answer = httpx.post(
                f"{label_studio.url}/api/current-user/reset-token/",
                headers={"Authorization": f"Token {old}"},
                timeout=30,
            )
            answer.raise_for_status()
            new = str(answer.json()["token"])
            assert new != old
            rig.annotate(rig.live.ids[27])
            assert daemon.sync() is None, "the old token is refused and the file still holds it"
            assert daemon.health.state == "unauthorized"
            assert "rejected the token (401)" in (daemon.health.last_error or "")
            _shown(rig, "unauthorized")
            _metric_state(daemon, "unauthorized")
            token_file.write_text(new + "\n")  # the operator rotates the file
            _wait_retry(daemon)
            assert daemon.sync() is not None, "the new token is read from the file"
            assert daemon.health.state == "ok"
    found = compare(rig.backend, rig.store, rig.live.pid)
    tally.annotations_lost(found.lost)
    assert found.lost == 0


def test_a_deleted_project_is_reported_and_the_store_kept(tally: Tally, rig: Rig) -> None:
    clock = _Clock()
    daemon = rig.daemon(clock=clock)
    report = daemon.sync()
    assert report is not None
    before = compare(rig.backend, rig.store, rig.live.pid)
    assert before.lost == 0
    with tally.fault("label_studio.project_deleted"):
        rig.backend.sdk.projects.delete(id=rig.live.pid)
        assert daemon.sync() is None
        clock.frozen = daemon.health.since
        assert daemon.health.state == "gone"
        assert "does not exist" in (daemon.health.last_error or "")
        _shown(rig, "gone")
        _metric_state(daemon, "gone")
        assert daemon.cycle().why.startswith("Label Studio gone since"), "no push, backing off"
        clock.frozen = None
        _wait_retry(daemon)
        assert daemon.sync() is None
        assert daemon.health.failures == 2, "still tried, with backoff: it may be restored"
        with rig.store.session() as session:
            (status,) = project_statuses(session)
        assert status.tasks["labelled"] == 20, "what was synced stays"


def test_tasks_deleted_while_the_batch_is_scored_leave_it_and_the_rest_is_pushed(
    tally: Tally, rig: Rig
) -> None:
    daemon = rig.daemon()
    open_tasks = rig.live.ids[20:]  # the 10 unlabelled tasks; the batch takes 8 of them
    deleted = open_tasks[::2][:4]
    scorer = daemon.scorer

    def score_while_someone_deletes(project_id: int, items: Sequence[tuple[int, str]]) -> str:
        version = scorer(project_id, items)
        for task in deleted:
            rig.backend.delete_task(task)
        return version

    daemon.scorer = score_while_someone_deletes
    with tally.fault("label_studio.task_deleted_mid_cycle"):
        outcome = daemon.cycle()
        assert outcome.why == "pushed", outcome.why
        assert outcome.pushed is not None
        planned = batch_items(Path(str(rig.store.engine.url.database)), outcome.pushed)
        assert outcome.missing == tuple(sorted(set(planned) & set(deleted)))
        assert len(outcome.missing) >= 2  # 8 of 10 planned, 4 of the 10 deleted
        served = [task for task in planned if task not in deleted]
        assert next_batch_view(rig.backend, rig.live.pid) == served
        assert sorted(t for t, _ in planner_predictions(rig.backend, rig.live.pid)) == sorted(
            served
        )
        with rig.store.session() as session:
            items = session.exec(select(BatchItem)).all()
        assert {i.ls_task_id for i in items if i.state == "expired"} == set(outcome.missing)
        assert daemon.health.state == "ok"
        report = daemon.sync(reconcile=True)
        assert report is not None, "the sync goes on"
        assert set(report.deleted) == set(deleted) - set(outcome.missing)
    found = compare(rig.backend, rig.store, rig.live.pid)
    tally.annotations_lost(found.lost)
    tally.duplicate_pushes(found.duplicates)
    assert (found.lost, found.duplicates) == (0, 0)
