"""`planner serve` as a real process: it listens, checks the token and refuses bad exposure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from planner.health import ScoringRun
from planner.store import ensure_project, open_store
from planner.store.models import Task
from planner.store.sync_state import record_scoring

PLANNER = str(Path(sys.executable).parent / "planner")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
    env.update(PLANNER_DASHBOARD__REPORTS_DIR=str(tmp_path), PLANNER_ARTIFACTS__DIR=str(tmp_path))
    env.update(extra)
    return env


def _health(url: str, proc: subprocess.Popen[bytes]) -> httpx.Response:
    """``/healthz`` once ``planner serve`` listens."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return httpx.get(f"{url}/healthz", timeout=1)
        except httpx.TransportError:
            assert time.monotonic() < deadline, "planner serve did not start listening"
            assert proc.poll() is None, "planner serve exited"
            time.sleep(0.2)


def test_serve_answers_health_and_guards_the_rest(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(tmp_path, PLANNER_DASHBOARD__TOKEN="t0ken-for-test")
    proc = subprocess.Popen([PLANNER, "serve", "--port", str(port)], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        health = _health(url, proc)
        assert health.json() == {"ok": True}
        assert httpx.get(f"{url}/metrics", timeout=2).status_code == 401
        auth = {"Authorization": "Bearer t0ken-for-test"}
        assert httpx.get(f"{url}/metrics", headers=auth, timeout=2).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_serve_opens_with_the_last_scoring_runs_warnings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'planner.db'}"
    with open_store(url) as store, store.session() as session:
        pid = int(ensure_project(session, ls_project_id=4).id or 0)
        ended = datetime(2026, 12, 7, 6, 31, tzinfo=UTC)
        record_scoring(session, pid, ScoringRun(ended, "m-1", ("model file x.pt passed over",)))
        session.add(Task(project_id=pid, ls_task_id=1, image="/data/upload/4/a.png"))
    port = _free_port()
    proc = subprocess.Popen(
        [PLANNER, "serve", "--port", str(port)], env=_env(tmp_path, PLANNER_STORE__URL=url)
    )
    try:
        _health(f"http://127.0.0.1:{port}", proc)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert 'role="alert"' in page
    assert "project 4: last scoring run 2026-12-07 06:31 UTC (model m-1): model file x.pt" in page
    uploads = "images are served by Label Studio from the files uploaded into it"
    assert f"project 4: 1 unlabelled tasks&#x27; {uploads}" in page, "workers.upload_root unset"


def test_serve_beyond_loopback_without_token_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [PLANNER, "serve", "--host", "0.0.0.0", "--port", str(_free_port())],  # noqa: S104
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "needs a token" in done.stderr


def _serve(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLANNER, "serve", *args],
        env=_env(tmp_path, PLANNER_DASHBOARD__TOKEN="t0ken-for-test", **extra),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_on_a_taken_port_says_which_to_change_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        by_flag = _serve(tmp_path, "--port", port)
        by_setting = _serve(tmp_path, PLANNER_DASHBOARD__PORT=port)
    for done, key in ((by_flag, "--port"), (by_setting, "dashboard.port")):
        assert done.returncode == 2, done.stderr
        assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in done.stderr
        assert f"change {key}, or stop what listens there" in done.stderr
        assert "Traceback" not in done.stderr


def test_serve_on_a_host_it_cannot_have_says_to_change_it_with_exit_2(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--port", str(_free_port()), PLANNER_DASHBOARD__HOST="not a host")
    assert done.returncode == 2, done.stderr
    assert "cannot listen on not a host:" in done.stderr
    assert "change dashboard.host to an address of this machine" in done.stderr


def test_serve_refuses_a_port_out_of_range_with_exit_2(tmp_path: Path) -> None:
    for port in ("70000", "0"):
        done = _serve(tmp_path, "--port", port)
        assert done.returncode == 2, done.stderr
        assert "Invalid value for '--port'" in done.stderr
        assert "Traceback" not in done.stderr
