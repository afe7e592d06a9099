"""``planner run`` as a process behind the fault proxy: Label Studio goes away and comes back;
the daemon reports it in ``planner status``, ``/metrics`` and ``/healthz``, and resumes by
itself, with the annotations made meanwhile synced and no batch pushed twice."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest

from planner.store import open_store
from tests.faults.conftest import Rig, compare
from tests.faults.services import free_port
from tests.faults.tally import Tally
from tests.integration.daemon.processes import kill, planner_status, start_daemon, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]
PLANNER = str(Path(sys.executable).parent / "planner")


def _state(config: Path, env: dict[str, str]) -> str | None:
    """The Label Studio state ``planner status --json`` shows, None before the first sync."""
    projects = planner_status(config, env)
    health = projects[0]["label_studio"] if projects else None
    return None if health is None else str(health["state"])


def test_planner_run_reports_label_studio_down_and_resumes_by_itself(
    tally: Tally, rig: Rig
) -> None:
    live, backend, ls_proxy, tmp_path = rig.live, rig.backend, rig.proxy, rig.tmp_path
    port = free_port()
    env = {
        **live.env,
        "PLANNER_LABEL_STUDIO__URL": ls_proxy.url,
        "PLANNER_LABEL_STUDIO__TIMEOUT_S": "3",
        "PLANNER_SCHEDULE__RETRY_BACKOFF_MAX": "PT2S",
        "PLANNER_DASHBOARD__METRICS_PORT": str(port),
    }
    log = tmp_path / "daemon.log"
    proc = start_daemon(live, log, env)
    try:
        wait_for("a first sync", lambda: _state(live.config, env) == "ok", [log], 180)
        with tally.fault("label_studio.down_under_planner_run"):
            ls_proxy.down()
            wait_for("the outage", lambda: _state(live.config, env) == "unreachable", [log], 90)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert 'planner_label_studio_state{planner_label_studio_state="unreachable"} 1.0' in (
                metrics
            )
            assert "planner_label_studio_up 0.0" in metrics
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
            assert health["label_studio"]["state"] == "unreachable"
            for task in live.ids[20:23]:
                rig.annotate(task)
            ls_proxy.heal()
            wait_for("the daemon to resume", lambda: _state(live.config, env) == "ok", [log], 90)
            assert proc.poll() is None, "the daemon never stopped"
        with open_store(f"sqlite:///{live.db}") as store:
            found = wait_for(
                "the annotations made during the outage",
                lambda: (c := compare(backend, store, live.pid)).lost == 0 and c,
                [log],
                60,
            )
        tally.annotations_lost(found.lost)
        tally.duplicate_pushes(found.duplicates)
        assert found.duplicates == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        kill(proc)
