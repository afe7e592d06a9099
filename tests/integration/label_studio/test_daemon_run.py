"""`planner run` as a process against the real Label Studio: it syncs, scores in its child
process, pushes a batch that Label Studio serves first, serves its metrics, and stops cleanly
on SIGTERM; killed mid-push, it finishes that batch on restart."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from integrations.label_studio.client import PAUSE_AFTER_PREDICTIONS, LabelStudioBackend
from integrations.label_studio.launcher import ServerState
from tests.integration.daemon.processes import (
    batch_items,
    batches,
    digits_project,
    kill,
    next_batch_view,
    planner_predictions,
    planner_status,
    start_daemon,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PLANNER = str(Path(sys.executable).parent / "planner")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_planner_run_pushes_a_batch_and_stops_on_sigterm(
    label_studio: ServerState, backend: LabelStudioBackend, images: Path, tmp_path: Path
) -> None:
    project = digits_project(backend, label_studio, images, tmp_path)  # type: ignore[arg-type]
    pid, ids, config, env = project.pid, project.ids, project.config, project.env
    port = _free_port()
    env = {**env, "PLANNER_DASHBOARD__METRICS_PORT": str(port)}
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PLANNER, "run", "-c", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 240
        batch = None
        while time.monotonic() < deadline and proc.poll() is None:
            projects = planner_status(config, env)
            batch = projects[0]["batch"] if projects else None
            if batch:
                break
            time.sleep(2)
        assert batch, f"no batch pushed; daemon log:\n{log.read_text()[-3000:]}"
        served = backend.next_task(pid)
        assert served in ids[80:]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "planner_batches_pushed_total 1.0" in metrics
        assert "planner_leader 1.0" in metrics
        labelled = 'planner_class_count{cls="7",kind="images",split="train"}'
        assert labelled in metrics, "the counts of the daemon's sync"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert label_studio.token not in log.read_text()


def test_a_daemon_killed_between_predictions_and_view_leaves_no_duplicate_on_restart(
    label_studio: ServerState, backend: LabelStudioBackend, images: Path, tmp_path: Path
) -> None:
    project = digits_project(backend, label_studio, images, tmp_path)  # type: ignore[arg-type]
    pause = tmp_path / "pause"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start_daemon(project, first_log, {PAUSE_AFTER_PREDICTIONS: str(pause)})
    second = None
    try:
        reached = Path(f"{pause}.reached")
        wait_for("the push to reach its crash point", reached.exists, [first_log], 300)
        (planned,) = batches(project.db)
        assert planned[2] == "planned"
        tag = planned[1]
        ranked = batch_items(project.db, tag)
        on_server = planner_predictions(backend, project.pid)  # type: ignore[arg-type]
        assert sorted(on_server) == sorted((t, tag) for t in ranked), "predictions are in"
        assert next_batch_view(backend, project.pid) is None, "the view is not"  # type: ignore[arg-type]
        assert kill(first) == -signal.SIGKILL
        second = start_daemon(project, second_log)  # no crash point: a plain restart
        wait_for(
            "the restart to finish the batch",
            lambda: batches(project.db) == [(1, tag, "active")],
            [second_log],
            240,
        )
        assert next_batch_view(backend, project.pid) == ranked  # type: ignore[arg-type]
        time.sleep(8)  # a few more syncs: nothing is pushed again
        on_server = planner_predictions(backend, project.pid)  # type: ignore[arg-type]
        assert sorted(on_server) == sorted((t, tag) for t in ranked), "one prediction per task"
        assert [b[1] for b in batches(project.db)] == [tag], "one batch in the store"
        assert "pushing it again" in second_log.read_text()
        assert backend.next_task(project.pid) == ranked[0]
        assert kill(second, signal.SIGTERM) == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                kill(proc)
