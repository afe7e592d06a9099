"""Known secrets go through a real sync, cycle, report and emit, and failures with tracebacks;
none of them ever appears in a log, an output, a traceback, a report or an artifact.

The Label Studio personal access token reads the project and (in the scoring child) the
images, the store password goes to PostgreSQL, the dashboard token and webhook secret guard
the daemon's receiver. Everything the planner wrote is grepped for each of them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from integrations.label_studio.launcher import ServerState
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.artifacts import EmitReason
from planner.connect import connect, open_settings_store
from planner.daemon.run import build_daemon
from planner.errors import PlannerError
from planner.outputs import emit_artifacts, emit_options
from planner.settings import load_settings
from planner.store import DatabaseLease, open_store
from planner.sync import sync_project
from tests.integration.daemon.processes import digits_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PLANNER = str(Path(sys.executable).parent / "planner")
PASSWORD = f"pw-{uuid.uuid4().hex}"
DASHBOARD_TOKEN = f"dash-{uuid.uuid4().hex}"
WEBHOOK_SECRET = f"hook-{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Secrets:
    """Every secret of the run, and every place the planner wrote to."""

    def __init__(self, token: str) -> None:
        self.values = {"token": token, "password": PASSWORD}
        self.values |= {"dashboard": DASHBOARD_TOKEN, "webhook": WEBHOOK_SECRET}
        self.texts: dict[str, str] = {}

    def add(self, where: str, content: str | bytes) -> None:
        text_ = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        self.texts[where] = self.texts.get(where, "") + text_

    def add_tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.add(str(path), path.read_bytes())

    def leaks(self) -> list[str]:
        return [
            f"{name} in {where}"
            for where, content in self.texts.items()
            for name, value in self.values.items()
            if value in content or value[-20:] in content
        ]


@pytest.fixture
def project(  # noqa: PLR0917 - pytest passes fixtures by position
    backend: LabelStudioWorkbench,
    label_studio: ServerState,
    images: Path,
    tmp_path: Path,
    postgres_url: str,
    personal_access_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, dict[str, str], Secrets]:
    live = digits_project(backend, label_studio, images, tmp_path, tasks=60, labelled=40)
    backend.connect_local_storage(live.pid, str(images))  # Label Studio serves the images
    text_ = live.config.read_text(encoding="utf-8")
    text_ = text_.replace(f'url = "sqlite:///{live.db}"', f'url = "{postgres_url}"')
    text_ = text_.replace("[dashboard]\n", f"[dashboard]\nport = {_free_port()}\n")
    # no image_root: the scoring child fetches every image from Label Studio with the token
    text_ = "\n".join(line for line in text_.splitlines() if not line.startswith("image_root"))
    live.config.write_text(text_ + "\n", encoding="utf-8")
    env = {
        **live.env,
        "PLANNER_LABEL_STUDIO__TOKEN": personal_access_token,
        "PLANNER_STORE__PASSWORD": PASSWORD,
        "PLANNER_DASHBOARD__TOKEN": DASHBOARD_TOKEN,
        "PLANNER_DASHBOARD__WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    for key in [k for k in os.environ if k.startswith("PLANNER_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("PLANNER_"):
            monkeypatch.setenv(key, value)
    return live.config, env, Secrets(personal_access_token)


def _cli(secrets: Secrets, env: dict[str, str], *args: str, ok: bool = True) -> str:
    done = subprocess.run(
        [PLANNER, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    secrets.add(f"planner {' '.join(args)}", done.stdout + done.stderr)
    assert (done.returncode == 0) == ok, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_no_secret_ever_appears_in_logs_outputs_tracebacks_reports_or_artifacts(
    project: tuple[Path, dict[str, str], Secrets],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    postgres_url: str,
) -> None:
    config, env, secrets = project
    caplog.set_level(logging.DEBUG)  # httpx, httpcore, sqlalchemy and the planner, all of it

    # the daemon as a process: sync, score in its child, push; its whole stderr is kept
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [PLANNER, "run", "-c", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline, batch = time.monotonic() + 300, None
        while time.monotonic() < deadline and daemon.poll() is None and not batch:
            time.sleep(3)
            status = subprocess.run(
                [PLANNER, "status", "-c", str(config), "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if status.returncode == 0:
                found = json.loads(status.stdout)["projects"]
                batch = found[0]["batch"] if found else None
        assert batch, log.read_text()[-3000:]
        port = load_settings(config).dashboard.port
        webhook = f"http://127.0.0.1:{port}/webhook/label-studio"
        refused = httpx.post(webhook, json={"action": "X"}, headers={"X-Planner-Secret": "no"})
        secrets.add("webhook answer", refused.text)
        assert refused.status_code == 403
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    secrets.add("daemon stderr", log.read_bytes())

    # the CLI, each command's output kept
    _cli(secrets, env, "sync", "-c", str(config), "--reconcile")
    _cli(secrets, env, "report", "-c", str(config))
    _cli(secrets, env, "emit", "-c", str(config))
    _cli(secrets, env, "status", "-c", str(config), "--json")
    _cli(secrets, env, "config", "show", "-c", str(config))
    _cli(secrets, env, "config", "check", "-c", str(config))

    # in-process, under caplog: a cycle, the report and an emit
    settings = load_settings(config)
    store = open_settings_store(settings)
    backend = connect(settings)
    lease = DatabaseLease(store.engine, "secrets-test", ttl_s=900, holder="secrets")
    try:
        planner = build_daemon(settings, backend=backend, store=store, lease=lease)
        planner.report_writer = None  # in this process, so caplog sees all of it
        outcome = planner.cycle()
        secrets.add("cycle outcome", repr(outcome))
        assert planner.report() is not None
        written = emit_artifacts(
            store,
            settings.label_studio.project_id or 0,
            emit_options(settings),
            splits=tuple(settings.planning.split_ratios),
            reason=EmitReason("on_demand", "secrets test"),
            now=datetime.now(UTC),
        )
        secrets.add("emit", repr(written))
        secrets.add("daemon repr", repr(planner))
        secrets.add("settings repr", repr(settings) + str(settings.model_dump()))
    finally:
        backend.close()
        store.dispose()

    # failures, each with its traceback as a log handler would print it
    bad_env = {**env, "PLANNER_LABEL_STUDIO__URL": "http://127.0.0.1:9/"}
    _cli(secrets, bad_env, "sync", "-c", str(config), ok=False)
    closed = postgres_url.replace("127.0.0.1:5432", "127.0.0.1:9")
    _cli(secrets, {**env, "PLANNER_STORE__URL": closed}, "run", "-c", str(config), ok=False)

    def missing_project() -> None:
        with connect(settings) as client, open_settings_store(settings) as opened:
            sync_project(client, opened, 999_999, now=datetime.now(UTC))

    def closed_store() -> None:
        open_store(closed, password=PASSWORD).dispose()

    for fail in (missing_project, closed_store):
        try:
            fail()
        except PlannerError:
            logging.getLogger("planner.test").exception("expected failure")
            secrets.add("traceback", traceback.format_exc())
        else:
            pytest.fail("the failure did not happen")

    secrets.add("caplog", caplog.text)
    for record in caplog.records:
        secrets.add("caplog records", f"{record.getMessage()} {record.args!r} {record.exc_text}")
    secrets.add_tree(settings.dashboard.reports_dir)
    secrets.add_tree(settings.artifacts.dir)
    assert any((settings.artifacts.dir).rglob("*.json")), "emit wrote artifacts"
    assert any(settings.dashboard.reports_dir.rglob("report.json")), "a report was written"
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        for table in ("syncstate", "quarantineentry", "batch", "artifactrecord", "task"):
            rows = connection.execute(text(f"SELECT * FROM {table}")).all()  # noqa: S608
            secrets.add(f"store table {table}", repr(rows))
    engine.dispose()
    assert len(secrets.texts) > 15
    assert secrets.leaks() == []
