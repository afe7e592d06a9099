"""The daemon process never imports torch nor keeps matplotlib: scoring and the daily report
run in child processes. A fresh interpreter runs a real cycle and a report and tells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from planner.daemon.embedded import (
    CancelledError,
    ChildGroup,
    ChunkDeaths,
    run_in_child,
    score_pool_in_child,
)
from planner.daemon.run import _scorer
from planner.errors import ConfigError, PlannerError, TransientError
from planner.settings import Settings
from planner.store import ensure_project, open_store
from planner.store.scores import load_scores
from workers.config import WorkerConfig

REPO = Path(__file__).resolve().parents[3]

SCRIPT = """
import json, sys
from pathlib import Path

from planner.daemon.run import build_daemon
from planner.settings import Settings
from planner.store import DatabaseLease, open_store
from tests.unit.daemon.helpers import digits_project

if __name__ == "__main__":
    root, work = Path(sys.argv[1]), Path(sys.argv[2])
    targets = json.loads(sys.argv[3])
    project = digits_project(targets)
    settings = Settings(
        label_studio={"project_id": project.pid},
        store={"url": f"sqlite:///{work / 'planner.db'}"},
        planning={"batch_size": 8},
        quotas={"7": {"target": 30, "criticality": 3.0}},
        workers={"image_root": str(root), "num_workers": 0},
        artifacts={"dir": str(work / "artifacts")},
        dashboard={"reports_dir": str(work / "reports")},
    )
    with open_store(settings.store.url) as store:
        lease = DatabaseLease(store.engine, "p", holder="only")
        daemon = build_daemon(settings, backend=project.fake, store=store, lease=lease)
        outcome = daemon.cycle()
        report = daemon.report()
    print(json.dumps({
        "pushed": outcome.pushed,
        "why": outcome.why,
        "view": project.fake.view_task_ids(project.pid, 1),
        "report": None if report is None else str(report),
        "torch": "torch" in sys.modules,
        "matplotlib": "matplotlib" in sys.modules,
    }))
"""


def test_a_cycle_and_a_report_leave_the_daemon_free_of_torch_and_matplotlib(
    digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    root, targets = digit_files
    script = tmp_path / "daemon_once.py"
    script.write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, str(script), str(root), str(tmp_path), json.dumps(targets[:150])],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["why"] == "pushed", result
    assert len(result["view"]) == 8, "the child scored the pool; the daemon pushed the batch"
    assert result["torch"] is False, "torch was imported by the daemon process"
    assert result["matplotlib"] is False, "the report's charts were drawn in the daemon process"
    day = Path(result["report"])
    assert (
        json.loads((day / "report.json").read_text())["batches"][0]["batch_id"] == result["pushed"]
    )


def test_errors_of_the_child_come_back_as_the_planners(tmp_path: Path) -> None:
    bad = WorkerConfig(store_url=f"sqlite:///{tmp_path / 'x.db'}", classes=("a",), model="nope")
    with pytest.raises(ConfigError, match=r"workers\.model = 'nope'"):
        score_pool_in_child(bad, 1, [(1, "/data/local-files/?d=x.png")])
    with pytest.raises(TransientError, match="child process died"):
        run_in_child(os._exit, 3)


def test_a_task_without_an_image_is_unscorable_for_having_no_reference(
    digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """None crosses to the child as no reference, never as the file name "None"."""
    root, _ = digit_files
    url = f"sqlite:///{tmp_path / 'planner.db'}"
    with open_store(url) as store, store.session() as session:
        pid = int(ensure_project(session, ls_project_id=1).id or 0)
    cfg = WorkerConfig(
        store_url=url,
        classes=tuple("0123456789"),
        image_root=root,
        model="tests.unit.workers.test_scoring:tiny_factory",
        num_workers=0,
    )
    result = score_pool_in_child(cfg, pid, [(1, None), (2, "/data/local-files/?d=digits/0000.png")])
    assert (result.scored, result.unscorable) == (1, 1)
    with open_store(url) as store, store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=result.model_version)
    assert scores.unscorable == {1: "the task has no image reference"}


def test_a_cancelled_group_stops_its_running_child_and_refuses_new_ones() -> None:
    group = ChildGroup()
    timer = threading.Timer(2.0, group.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(CancelledError, match="stopping"):
        run_in_child(time.sleep, 120, group=group)  # would sleep two minutes
    assert time.monotonic() - started < 60
    timer.join()
    with pytest.raises(CancelledError, match="not started"):
        run_in_child(os._exit, 0, group=group)


def test_a_bug_in_the_child_comes_back_as_a_planner_error() -> None:
    with pytest.raises(PlannerError, match="ZeroDivisionError"):
        run_in_child(divmod, 1, 0)


def test_a_task_that_kills_every_scoring_child_is_given_up_after_three_deaths(
    digit_files: tuple[Path, list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash in native code or the OOM killer on the same image every cycle: the daemon's
    scorer learns which chunk each child died on, has it scored one image a batch, then given
    up on."""
    root, _ = digit_files
    monkeypatch.setenv("PLANNER_TEST_HOOK_DIR", str(tmp_path))  # the children inherit it
    Image.new("RGB", (32, 32), "white").save(root / "digits" / "white-embedded.png")
    url = f"sqlite:///{tmp_path / 'planner.db'}"
    settings = Settings(
        store={"url": url},
        artifacts={"dir": tmp_path / "artifacts"},
        workers={
            "image_root": root,
            "model": "tests.integration.workers.hooks:fatal",  # kills its process on white
            "num_workers": 0,
            "chunk_size": 10,
            "batch_size": 10,
        },
    )
    items = [(i, f"/data/local-files/?d=digits/{i:04d}.png") for i in range(1, 31)]
    items[14] = (15, "/data/local-files/?d=digits/white-embedded.png")  # in the second chunk
    with open_store(url) as store:
        with store.session() as session:
            project = ensure_project(session, ls_project_id=1)
            project.classes = list("0123456789")
            session.add(project)
            pid = int(project.id or 0)
        score = _scorer(settings, store)  # one per daemon: it remembers across cycles
        for _ in range(3):
            with pytest.raises(TransientError, match="child process died"):
                score(pid, items)
        version = score(pid, items)
        with store.session() as session:
            scores = load_scores(session, project_id=pid, model_version=version)
    assert len((tmp_path / "fatal.log").read_text().split()) == 3, "no fourth death"
    assert "the scoring process died on it 3 times" in scores.unscorable[15]
    assert set(scores.unscorable) == {15}, "the culprit alone, not the tasks after it"
    assert set(scores.task_ids.tolist()) | set(scores.unscorable) == set(range(1, 31))


def test_the_tasks_suspected_are_those_every_child_in_a_row_died_on() -> None:
    deaths = ChunkDeaths()
    deaths.died_on(range(11, 21))
    deaths.died_on([])  # between chunks: no chunk's doing
    assert (deaths.suspects, deaths.deaths) == (frozenset(range(11, 21)), 1)
    deaths.died_on(range(15, 25))  # the pool shifted: the same culprit among them
    assert (deaths.suspects, deaths.deaths) == (frozenset(range(15, 21)), 2)
    deaths.died_on(range(31, 41))  # another chunk: counting starts again
    assert (deaths.suspects, deaths.deaths) == (frozenset(range(31, 41)), 1)
    deaths.clear()
    assert (deaths.suspects, deaths.deaths) == (frozenset(), 0)
