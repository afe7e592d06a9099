"""What `planner run` does with Label Studio's webhook: it registers it once Label Studio takes
it, a deleted task's webhook reconciles, and a daemon that found the receiver's port taken (a
standby on the leader's host) serves it once the port is free; the in-memory Label Studio and
a SQLite store."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from planner.core.quotas import Quota
from planner.daemon import run
from planner.daemon.run import run_daemon
from planner.daemon.service import ProjectDaemon
from planner.daemon.serving import Servers, WebhookRegistration, webhook_trigger
from planner.errors import ConfigError
from planner.health import ScoringRun
from planner.settings import Settings, load_settings
from planner.store import Store
from planner.store.models import Task
from planner.store.sync_state import record_scoring
from planner.web import SECRET_HEADER, WEBHOOK_PATH
from tests.unit.daemon.helpers import (
    Project150,
    TableScorer,
    by_task_id,
    digits_project,
    make_daemon,
)

URL = "http://planner.internal:8765/webhook/label-studio"
TARGETS = [i % 10 for i in range(40)]


class _Schedule:
    """The schedule as the webhook sees it: the leader's (running); the jobs asked for."""

    running = True

    def __init__(self) -> None:
        self.asked: list[str] = []

    def run_soon(self, name: str) -> None:
        self.asked.append(name)


def _daemon(store: Store, project: Project150, now: list[datetime]) -> ProjectDaemon:
    scorer = TableScorer(store, by_task_id)
    return make_daemon(project, store, [Quota("7", target=40)], scorer, clock=lambda: now[0])


def test_a_webhook_label_studio_could_not_take_at_the_start_is_registered_after_a_sync(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = digits_project(TARGETS, labelled=10, tasks=40)
    calls: list[str] = []
    register = project.fake.ensure_webhook

    def counted(project_id: int, url: str, *, secret: str) -> int:
        calls.append(url)
        return register(project_id, url, secret=secret)

    monkeypatch.setattr(project.fake, "ensure_webhook", counted)
    now = [datetime.now(UTC)]
    daemon = _daemon(store, project, now)
    webhook = WebhookRegistration(project.fake, project.pid, URL, "s3cret")
    daemon.on_synced = webhook.ensure
    project.fake.unreachable = True  # down when the daemon starts
    webhook.ensure()
    assert daemon.sync() is None
    webhook.ensure()
    warned = [r for r in caplog.records if "could not register" in r.getMessage()]
    assert len(warned) == 1, "said once per reason, not at every try"
    assert warned[0].levelno == logging.WARNING
    project.fake.unreachable = False
    now[0] += timedelta(minutes=1)  # past the backoff
    assert daemon.sync() is not None
    (hook,) = project.fake.list_webhooks(project.pid)
    assert hook[1:] == (URL, {SECRET_HEADER: "s3cret"})
    assert len(calls) == 3, "two tries while it was down, then the one after the sync"
    assert daemon.sync() is not None
    assert len(calls) == 3, "registered once, not again at every sync"


def test_a_webhook_url_without_a_secret_refuses_to_start(
    tmp_path: Path, no_planner_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""[label_studio]
url = "http://127.0.0.1:1"
project_id = 3
[store]
url = "sqlite:///{tmp_path / "planner.db"}"
[dashboard]
metrics_port = 0
webhook_url = "{URL}"
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", "token")
    stopped = threading.Event()
    stopped.set()  # were it to start, it would stop at once
    with pytest.raises(ConfigError, match=r"webhook_url is set but dashboard\.webhook_secret"):
        run_daemon(load_settings(config), stop=stopped)
    assert not (tmp_path / "planner.db").exists(), "refused before anything was written"


def _state(store: Store, task_id: int) -> str:
    with store.session() as session:
        return session.exec(select(Task.state).where(Task.ls_task_id == task_id)).one()


def test_a_tasks_deleted_webhook_reconciles(store: Store) -> None:
    project = digits_project(TARGETS, labelled=10, tasks=40)
    now = [datetime.now(UTC)]
    daemon = _daemon(store, project, now)
    schedule = _Schedule()
    trigger = webhook_trigger(daemon, schedule)
    assert daemon.sync() is not None  # the first sync reconciles; the next one is hours away
    gone = project.ids[-1]
    project.fake.delete_task(gone)
    trigger("ANNOTATION_CREATED")
    assert daemon.sync() is not None  # the sync job the webhook asked for
    assert _state(store, gone) == "unlabelled", "an incremental sync does not see deletions"
    project.fake.unreachable = True
    trigger("TASKS_DELETED")
    trigger("TASKS_DELETED")
    assert schedule.asked == ["sync"] * 3
    assert daemon.sync() is None  # Label Studio down: the reconcile waits for the next sync
    project.fake.unreachable = False
    now[0] += timedelta(minutes=1)
    assert daemon.sync() is not None
    assert _state(store, gone) == "deleted"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answer(call: Callable[[], httpx.Response], deadline_s: float = 20.0) -> httpx.Response:
    """``call``'s response once something listens (a few heartbeats at most)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return call()
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_a_daemon_on_the_leaders_host_serves_the_webhook_once_the_port_is_free(
    store: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    no_planner_env: None,
) -> None:
    monkeypatch.setattr(run, "HEARTBEAT_S", 0.05)
    caplog.set_level(logging.INFO, logger="planner.daemon")
    # the leader: its receiver and metrics on this host
    project = digits_project(TARGETS, labelled=10, tasks=40)
    leader_daemon = _daemon(store, project, [datetime.now(UTC)])
    leader_schedule = _Schedule()
    port = _free_port()
    board = {"webhook_secret": "s3cret", "port": port, "metrics_port": _free_port()}
    leader = Servers(Settings(dashboard=board), leader_daemon, leader_schedule)  # type: ignore[arg-type]
    leader.ensure()
    assert leader.receiver is not None
    assert leader.metrics is not None
    # a second daemon of the project on the same host finds both ports taken
    settings = Settings(
        label_studio={"url": "http://127.0.0.1:1", "project_id": 3, "token": "token"},
        store={"url": f"sqlite:///{tmp_path / 'second.db'}"},
        dashboard=board,
    )
    stop = threading.Event()
    second = threading.Thread(target=run_daemon, args=(settings,), kwargs={"stop": stop})
    second.start()
    try:
        deadline = time.monotonic() + 20
        while "until the port is free" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(10 * run.HEARTBEAT_S)  # each heartbeat tries the ports again, said once
        for what in ("the webhook receiver", "/metrics and /healthz"):
            assert caplog.text.count(f"running without {what} until the port is free") == 1
        leader.stop_receiver()  # the leader is gone
        leader.stop_metrics()

        def post() -> httpx.Response:
            url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
            payload = {"action": "ANNOTATION_CREATED"}
            return httpx.post(url, json=payload, headers={SECRET_HEADER: "s3cret"}, timeout=5)

        assert _answer(post).status_code == 204
        health = _answer(lambda: httpx.get(f"http://127.0.0.1:{board['metrics_port']}/healthz"))
        assert health.status_code == 200
        assert leader_schedule.asked == [], "the second daemon served the webhook"
    finally:
        stop.set()
        second.join(timeout=60)
    assert not second.is_alive()


def test_the_daemons_own_dashboard_alerts_on_its_last_scoring_runs_warnings(
    store: Store, tmp_path: Path, no_planner_env: None
) -> None:
    project = digits_project(TARGETS, labelled=10, tasks=40)
    daemon = _daemon(store, project, [datetime.now(UTC)])
    report = daemon.sync()
    assert report is not None
    with store.session() as session:
        ended = datetime(2026, 12, 7, 6, 31, tzinfo=UTC)
        record_scoring(session, report.project_id, ScoringRun(ended, "m-1", ("no BALD <x>",)))
    port = _free_port()
    board = {"webhook_secret": "s3cret", "port": port, "reports_dir": tmp_path / "reports"}
    servers = Servers(Settings(dashboard=board), daemon, _Schedule())  # type: ignore[arg-type]
    servers.ensure()
    try:
        page = _answer(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=5))
    finally:
        servers.stop_receiver()
    assert 'role="alert"' in page.text
    assert f"project {project.pid}: last scoring run 2026-12-07 06:31 UTC" in page.text
    assert "(model m-1): no BALD &lt;x&gt;" in page.text
    assert (  # workers.image_root unset: the 30 unlabelled digits come through Label Studio
        f"project {project.pid}: 30 unlabelled tasks&#x27; images are served by Label Studio "
        "from its local storage"
    ) in page.text
