"""Resident memory of an idle `planner run` daemon, against a bare Python interpreter.

Starts its own Label Studio (the launcher), a project of digit images with a part labelled,
then `planner run` with the embedded scorer. Once the daemon has synced, scored (in its child
process) and pushed a batch, it is left idle for a while and its resident set size (VmRSS) is
sampled; the same run measures a bare ``python -c 'sleep'`` as the baseline, and an interpreter
that imports what in-process scoring would load (torch and the workers) for comparison.

    python bench/daemon_memory.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pages import put_marked
from integrations.label_studio import launcher
from integrations.label_studio.workbench import LabelStudioWorkbench

START, END = "<!-- daemon_memory:start -->", "<!-- daemon_memory:end -->"
TARGET_MB = 150.0
PLANNER = str(Path(sys.executable).parent / "planner")
CONFIG = "".join(f'<Choice value="{d}"/>' for d in range(10))
LABEL_CONFIG = f"""<View><Image name="image" value="$image"/>
<Choices name="digit" toName="image">{CONFIG}</Choices></View>"""


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def idle_interpreter(code: str, settle_s: float = 3.0) -> float:
    """VmRSS of ``python -c code`` that then sleeps, after ``settle_s``."""
    argv = [sys.executable, "-c", f"{code}\nimport time; time.sleep(120)"]
    proc = subprocess.Popen(argv)  # noqa: S603 - our interpreter, our code
    try:
        time.sleep(settle_s)
        return rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _project(work: Path, state: launcher.ServerState, tasks: int, labelled: int) -> int:
    images = Path(state.document_root) / "bench-digits"
    images.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    for i in range(tasks):
        pixels = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32)).save(images / f"{i:04d}.png")
    with LabelStudioWorkbench(state.url, state.token) as backend:
        pid = backend.create_project("daemon memory", LABEL_CONFIG)
        data = [
            {"data": {"image": f"/data/local-files/?d=bench-digits/{i:04d}.png"}}
            for i in range(tasks)
        ]
        ids = backend.import_tasks(pid, data)
        for k in range(labelled):
            result = {"choices": [str(digits.target[k])]}
            backend.annotate(
                ids[k],
                [{"from_name": "digit", "to_name": "image", "type": "choices", "value": result}],
            )
    return pid


def _active_batch(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db) as connection:
            rows = connection.execute("SELECT 1 FROM batch WHERE state = 'active'").fetchall()
    except sqlite3.Error:
        return False
    return bool(rows)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(work: Path, tasks: int, labelled: int, idle_s: float) -> dict[str, float]:
    state = launcher.start(work / "ls", document_root=work / "images", port=_free_port())
    try:
        pid = _project(work, state, tasks, labelled)
        db = work / "planner.db"
        config = work / "planner.toml"
        config.write_text(
            f'[label_studio]\nurl = "{state.url}"\nproject_id = {pid}\n'
            f'[store]\nurl = "sqlite:///{db}"\n[planning]\nbatch_size = 20\n'
            f'[quotas.7]\ntarget = 60\n[workers]\nimage_root = "{state.document_root}"\n'
            f"num_workers = 0\n[schedule]\nsync_interval = 5\n[dashboard]\nmetrics_port = 0\n"
            f'reports_dir = "{work / "reports"}"\n[artifacts]\ndir = "{work / "artifacts"}"\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
        env["PLANNER_LABEL_STUDIO__TOKEN"] = state.token
        log = (work / "daemon.log").open("wb")
        daemon = subprocess.Popen(  # noqa: S603 - the planner next to this interpreter
            [PLANNER, "run", "-c", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            started = time.monotonic()
            while not _active_batch(db):
                if daemon.poll() is not None or time.monotonic() - started > 600:
                    raise SystemExit(f"the daemon pushed no batch; see {work / 'daemon.log'}")
                time.sleep(1)
            first_batch_s = time.monotonic() - started
            while children(daemon.pid):  # the scoring child has exited
                time.sleep(0.5)
            time.sleep(5)
            samples = []
            deadline = time.monotonic() + idle_s
            while time.monotonic() < deadline:
                samples.append(rss_mb(daemon.pid))
                time.sleep(1)
            peak = rss_mb(daemon.pid, "VmHWM")
            leftover = len(children(daemon.pid))
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
            log.close()
    finally:
        launcher.stop(work / "ls")
    return {
        "baseline_mb": idle_interpreter("pass"),
        "in_process_mb": idle_interpreter(
            "import planner.daemon.run, integrations.label_studio.client, workers.dispatch, torch"
        ),
        "idle_mb": statistics.median(samples),
        "idle_max_mb": max(samples),
        "peak_mb": peak,
        "first_batch_s": first_batch_s,
        "children": float(leftover),
        "samples": float(len(samples)),
    }


def section(result: dict[str, float], tasks: int, labelled: int) -> str:
    base = result["baseline_mb"]
    rows = [
        ("bare `python -c 'sleep'` (baseline)", base),
        ("idle daemon, median", result["idle_mb"]),
        ("idle daemon, highest sample", result["idle_max_mb"]),
        ("daemon peak (VmHWM, whole run)", result["peak_mb"]),
        ("an interpreter holding what in-process scoring loads (torch, workers)",
         result["in_process_mb"]),
    ]  # fmt: skip
    table = "\n".join(f"| {name} | {mb:.1f} MB | {mb / base:.2f} |" for name, mb in rows)
    verdict = "met" if result["idle_max_mb"] < TARGET_MB else "NOT met"
    return f"""{START}
## Daemon memory

Measured {datetime.now(UTC):%Y-%m-%d} on this machine, Python {platform.python_version()}.
Command: `python bench/daemon_memory.py --write docs/benchmarks.md`

`planner run` on a Label Studio project of {tasks} digit images ({labelled} labelled), embedded
scoring (bootstrap model) in its child process, SQLite store. Resident set size (VmRSS) of the
daemon process once it had pushed its first batch ({result["first_batch_s"]:.0f} s after start)
and its scoring child had exited, sampled {result["samples"]:.0f} times while idle; the other
rows are measured in the same run.

| process | RSS | ratio to bare Python |
|---|---|---|
{table}

Target: idle daemon well under {TARGET_MB:.0f} MB: {verdict}. Child processes left after the
cycle: {result["children"]:.0f}.
{END}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="write the section into this Markdown file")
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--labelled", type=int, default=120)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle sampling")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="daemon-memory-") as work:
        result = measure(Path(work), args.tasks, args.labelled, args.idle)
    text = section(result, args.tasks, args.labelled)
    print(text)
    if args.write:
        put_marked(args.write, text, START, END)


if __name__ == "__main__":
    main()
