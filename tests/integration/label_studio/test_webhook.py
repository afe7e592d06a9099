"""The real Label Studio calls the planner's webhook receiver on 127.0.0.1, and `planner run`
syncs early on it. (The launcher starts the server with SSRF_PROTECTION_ENABLED=false, without
which Label Studio refuses webhook URLs on loopback.)"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from integrations.label_studio import launcher
from integrations.label_studio.launcher import ServerState
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.daemon.run import run_daemon
from planner.errors import AuthError, UrlRefusedError
from planner.settings import load_settings
from planner.store import open_store
from planner.store.models import SyncState, Task
from planner.web import SECRET_HEADER, WEBHOOK_PATH, BackgroundServer, WebConfig, create_app
from tests.unit.integrations.contract import CONFIG, choice

pytestmark = pytest.mark.integration
SECRET = "webhook-secret-for-the-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class _Statuses:
    """The receiver app, recording the status it answers each call with."""

    def __init__(self, app: Any) -> None:
        self.app, self.answered = app, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def record(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.answered.append(message["status"])
            await send(message)

        await self.app(scope, receive, record)


def test_label_studio_delivers_webhooks_with_the_secret(
    backend: LabelStudioWorkbench, tmp_path: Path
) -> None:
    events: list[str] = []
    app = _Statuses(
        create_app(WebConfig(tmp_path, tmp_path, webhook_secret=SECRET), on_webhook=events.append)
    )
    server = BackgroundServer(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}{WEBHOOK_PATH}"
    try:
        pid = backend.create_project(f"hook-{uuid.uuid4().hex[:8]}", CONFIG)
        ids = backend.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(3)])
        hook = backend.ensure_webhook(pid, url, secret=SECRET)
        assert backend.ensure_webhook(pid, url, secret=SECRET) == hook
        assert backend.list_webhooks(pid) == [(hook, url, {SECRET_HEADER: SECRET})]
        annotation = backend.annotate(ids[0], choice("Car"))
        _wait(lambda: "ANNOTATION_CREATED" in events, "ANNOTATION_CREATED")
        backend.update_annotation(annotation, choice("Wheelchair"))
        _wait(lambda: "ANNOTATION_UPDATED" in events, "ANNOTATION_UPDATED")
        backend.import_tasks(pid, [{"data": {"image": "/img/new.png"}}])
        _wait(lambda: "TASKS_CREATED" in events, "TASKS_CREATED")
        backend.delete_task(ids[2])
        _wait(lambda: "TASKS_DELETED" in events, "TASKS_DELETED")
        assert set(app.answered) == {204}, "every call carried the secret"
        # the same webhook with a wrong secret: Label Studio still calls, the receiver refuses
        assert backend.ensure_webhook(pid, url, secret="not-the-secret") == hook
        before = list(events)
        backend.annotate(ids[1], choice("Car"))
        _wait(lambda: 403 in app.answered, "the refused call")
        assert events == before, "a refused call triggers nothing"
        assert httpx.post(url, json={"action": "ANNOTATION_CREATED"}, timeout=5).status_code == 403
        assert events == before
    finally:
        server.stop()


def test_planner_run_syncs_early_on_a_webhook(
    label_studio: ServerState,
    backend: LabelStudioWorkbench,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pid = backend.create_project(f"early-{uuid.uuid4().hex[:8]}", CONFIG)
    ids = backend.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(3)])
    backend.annotate(ids[0], choice("Car"))  # the quota is met: the daemon pushes no batch
    port = _free_port()
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    database = tmp_path / "planner.db"
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""[label_studio]
url = "{label_studio.url}"
project_id = {pid}
[store]
url = "sqlite:///{database}"
[quotas.Car]
target = 1
[schedule]
sync_interval = 3600
cycle_interval = 3600
housekeeping_interval = 3600
[dashboard]
port = {port}
webhook_url = "{url}"
reports_dir = "{tmp_path / "reports"}"
[artifacts]
dir = "{tmp_path / "artifacts"}"
""",
        encoding="utf-8",
    )
    for key in [k for k in os.environ if k.startswith("PLANNER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", label_studio.token)
    monkeypatch.setenv("PLANNER_DASHBOARD__WEBHOOK_SECRET", SECRET)
    stop = threading.Event()
    daemon = threading.Thread(
        target=run_daemon, args=(load_settings(config),), kwargs={"stop": stop}
    )
    daemon.start()
    try:
        health = f"http://127.0.0.1:{port}/healthz"
        _wait(lambda: _answers(health), "the daemon's receiver", timeout_s=60)
        hooks = backend.list_webhooks(pid)
        assert [(u, h) for _, u, h in hooks] == [(url, {SECRET_HEADER: SECRET})]
        with open_store(f"sqlite:///{database}") as store:

            def synced() -> bool:
                with store.session() as session:
                    state = session.exec(select(SyncState)).first()
                    return state is not None and state.last_sync_at is not None

            def labelled(task_id: int) -> bool:
                with store.session() as session:
                    row = session.exec(select(Task).where(Task.ls_task_id == task_id)).first()
                    return row is not None and row.state == "labelled"

            _wait(synced, "the first sync", timeout_s=60)
            assert labelled(ids[0])
            assert not labelled(ids[1])
            backend.annotate(ids[1], choice("Wheelchair"))
            # the next scheduled sync is an hour away: only the webhook explains this one
            _wait(lambda: labelled(ids[1]), "the early sync")
    finally:
        stop.set()
        daemon.join(timeout=180)
    assert not daemon.is_alive(), _stacks()
    assert not _answers(health), "the receiver stops with the daemon"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _stacks() -> str:
    """Where every thread is, for a daemon that did not stop."""
    frames = sys._current_frames()
    return "\n".join(
        f"--- {t.name}\n" + "".join(traceback.format_stack(frames[t.ident]))
        for t in threading.enumerate()
        if t.ident in frames
    )


def test_a_webhook_url_refused_by_ssrf_protection_says_so_not_the_token(tmp_path: Path) -> None:
    # a second server, as Label Studio runs by default: its SSRF protection refuses a webhook
    # to 127.0.0.1 with a 403 (webhooks/serializers.py validate_url -> core/utils/io.py
    # validate_ip: SsrfBlockedUrlError), which was taken for a token without access
    state = launcher.start(
        tmp_path / "data",
        document_root=tmp_path / "images",
        port=_free_port(),
        ssrf_protection=True,
    )
    try:
        with LabelStudioWorkbench(state.url, state.token) as guarded:
            pid = guarded.create_project(f"ssrf-{uuid.uuid4().hex[:8]}", CONFIG)
            url = f"http://127.0.0.1:{_free_port()}{WEBHOOK_PATH}"
            with pytest.raises(UrlRefusedError) as refused:
                guarded.ensure_webhook(pid, url, secret=SECRET)
            assert not isinstance(refused.value, AuthError)
            said = str(refused.value)
            assert "reserved network address (block: 127.0.0.0/8)" in said
            assert "SSRF_PROTECTION_ENABLED=false" in said
            assert "dashboard.webhook_url" in said
            assert guarded.list_webhooks(pid) == []
    finally:
        launcher.stop(tmp_path / "data")
