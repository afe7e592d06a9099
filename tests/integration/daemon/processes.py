"""`planner run` processes against the real Label Studio: a digits project, a config, the store
read back while the daemons work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from integrations.label_studio.launcher import ServerState
from integrations.label_studio.workbench import LabelStudioWorkbench

PLANNER = str(Path(sys.executable).parent / "planner")
DIGITS = "".join(f'<Choice value="{d}"/>' for d in range(10))
CONFIG = f"""<View><Image name="image" value="$image"/>
<Choices name="digit" toName="image">{DIGITS}</Choices></View>"""
_T = TypeVar("_T")


def choice(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


@dataclass
class LiveProject:
    pid: int
    ids: list[int]
    truth: dict[int, int]
    config: Path
    db: Path
    env: dict[str, str]


def digits_project(
    backend: LabelStudioWorkbench,
    label_studio: ServerState,
    images: Path,
    tmp_path: Path,
    *,
    tasks: int = 120,
    labelled: int = 80,
    workers: str = "",
) -> LiveProject:
    """A Label Studio project of digit images, the first ``labelled`` annotated, and a config."""
    digits = load_digits()
    for i in range(tasks):
        pixels = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32)).save(images / f"{i:04d}.png")
    pid = backend.create_project(f"daemon-{uuid.uuid4().hex[:8]}", CONFIG)
    data = [
        {"data": {"image": f"/data/local-files/?d={images.name}/{i:04d}.png"}} for i in range(tasks)
    ]
    ids = backend.import_tasks(pid, data)
    for k in range(labelled):
        backend.annotate(ids[k], choice(str(digits.target[k])))
    db = tmp_path / "planner.db"
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""[label_studio]
url = "{label_studio.url}"
project_id = {pid}
[store]
url = "sqlite:///{db}"
[planning]
batch_size = 8
[quotas.7]
target = 60
criticality = 3.0
[workers]
image_root = "{Path(label_studio.document_root)}"
num_workers = 0
{workers}[schedule]
sync_interval = 3
[dashboard]
metrics_port = 0
reports_dir = "{tmp_path / "reports"}"
[artifacts]
dir = "{tmp_path / "artifacts"}"
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
    env["PLANNER_LABEL_STUDIO__TOKEN"] = label_studio.token
    truth = {task: int(digits.target[i]) for i, task in enumerate(ids)}
    return LiveProject(pid, ids, truth, config, db, env)


def start_daemon(
    project: LiveProject, log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``planner run`` in its own process group (SIGKILL of the group = a killed container)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [PLANNER, "run", "-c", str(project.config)],
            env={**project.env, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def planner_status(config: Path, env: Mapping[str, str]) -> list[dict[str, Any]] | None:
    """The projects of ``planner status --json`` (exit 1 is an unhealthy one), None on error."""
    shown = subprocess.run(
        [PLANNER, "status", "-c", str(config), "--json"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if shown.returncode not in (0, 1):
        return None
    projects: list[dict[str, Any]] = json.loads(shown.stdout)["projects"]
    return projects


def kill(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    return proc.wait(timeout=60)


def wait_for(what: str, probe: Callable[[], _T | None], logs: list[Path], timeout: float) -> _T:
    """``probe()`` once it is truthy; fails with the daemons' logs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def store_rows(db: Path, sql: str, **params: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` in the planner's SQLite store (read-only, beside the daemons)."""
    if not db.exists():
        return []
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql), params)]
    except OperationalError:  # no schema yet: the daemon is starting
        return []
    finally:
        engine.dispose()


def batches(db: Path) -> list[tuple[int, str, str]]:
    """``(number, tag, state)`` of every batch, oldest first."""
    return [
        (int(n), str(t), str(s))
        for n, t, s in store_rows(db, "SELECT number, tag, state FROM batch ORDER BY number")
    ]


def batch_items(db: Path, tag: str) -> list[int]:
    """Task ids of a batch in rank order."""
    rows = store_rows(
        db,
        "SELECT i.ls_task_id FROM batchitem i JOIN batch b ON b.id = i.batch_id "
        "WHERE b.tag = :tag ORDER BY i.rank",
        tag=tag,
    )
    return [int(r[0]) for r in rows]


def planner_predictions(backend: LabelStudioWorkbench, pid: int) -> list[tuple[int, str]]:
    """``(task, model_version)`` of every planner prediction on the server."""
    return [
        (int(p.task), str(p.model_version))
        for p in backend.sdk.predictions.list(project=pid)
        if str(p.model_version or "").startswith("planner-")
    ]


def next_batch_view(backend: LabelStudioWorkbench, pid: int) -> list[int] | None:
    """The "Next batch" tab's tasks in order, or None when the project has no such tab."""
    views = [
        v
        for v in backend.sdk.views.list(project=pid)
        if (v.data or {}).get("title") == "Next batch"
    ]
    return backend.view_task_ids(pid, int(views[0].id)) if views else None


def label(backend: LabelStudioWorkbench, project: LiveProject, tasks: list[int]) -> None:
    """The simulated annotator labels ``tasks`` with their true digit."""
    for task in tasks:
        backend.annotate(task, choice(str(project.truth[task])))
