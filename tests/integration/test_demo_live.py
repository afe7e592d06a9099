"""`planner demo` itself, small: it starts its own Label Studio, runs the daemon's cycles with
the simulated annotator, and everything it tells a person to look at exists."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from integrations.label_studio import launcher
from planner.training import load_latest
from tests.integration.daemon.processes import PLANNER

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _after(label: str, output: str) -> str:
    found = re.search(rf"^\s*{re.escape(label)}[^:]*: (\S+)$", output, re.MULTILINE)
    assert found, f"the demo prints {label!r}:\n{output}"
    return found.group(1)


def test_the_demo_prints_where_to_look_and_it_is_all_there(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
    argv = [PLANNER, "demo", "--workdir", str(workdir), "--port", str(_free_port())]
    argv += ["--head", "40", "--batch-size", "10", "--first-labels", "15", "--cycles", "3"]
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        output = done.stdout
        assert done.returncode == 0, f"{output}\n{done.stderr}"
        pushed = re.findall(
            r"^cycle\s+(\d+) .*pushed planner-p\d+-b0*(\d+): 10 tasks", output, re.M
        )
        assert pushed[0] == ("1", "1"), output
        assert all(cycle == batch for cycle, batch in pushed), "one batch per cycle"

        report = Path(_after("Daily report", output))
        assert report.is_file()
        page = report.read_text(encoding="utf-8")
        assert "Quota report" in page
        assert 'src="data:image/svg+xml;base64,' in page, "with its charts"
        summary = json.loads((report.parent / "report.json").read_text(encoding="utf-8"))

        artifact = Path(_after("Weights and resampling plan", output))
        loaded = load_latest(artifact.parent)
        assert loaded.path == artifact
        assert set(loaded.classes) >= {"7", "8", "9"}
        stopped = "Stopped:" in output
        assert loaded.data["reason"]["trigger"] == ("stop_rule" if stopped else "on_demand")
        assert summary["all_met"] is stopped

        view = _after("Next batch in Label Studio", output)
        state = launcher.ServerState.read(workdir / "label-studio")
        assert state is not None
        assert launcher.healthy(state.url), "the server stays up for a person to look at"
        found = re.match(rf"{re.escape(state.url)}/projects/(\d+)/data\?tab=(\d+)$", view)
        assert found, view
        pid, tab = found.groups()
        auth = {"Authorization": f"Token {state.token}"}
        assert httpx.get(view, timeout=30).status_code in {200, 302}, "the page answers"
        tasks = httpx.get(
            f"{state.url}/api/tasks",
            params={"project": pid, "view": tab, "fields": "all"},
            headers=auth,
            timeout=30,
        ).json()["tasks"]
        size = int(re.search(r"Next batch in Label Studio \((\d+) tasks", output).group(1))  # type: ignore[union-attr]
        assert len(tasks) == size == 10
        labelled = [t for t in tasks if t["total_annotations"] > 0]
        expect = 10 if stopped else 0
        assert len(labelled) == expect, "left for a person unless the quotas were met"
        config = Path(_after("Config of the demo project", output))
        status = subprocess.run(
            [PLANNER, "status", "-c", str(config), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["projects"][0]["ls_project_id"] == int(pid)
    finally:
        launcher.stop(workdir / "label-studio")
