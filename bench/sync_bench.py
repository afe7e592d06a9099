"""Sync throughput against a real local Label Studio with a large project.

Starts its own Label Studio (the launcher), imports N tasks (default 100,000), annotates a share
of them, then measures in one run:
  * the naive full pass the SDK examples use: ``client.tasks.list(project=..., fields="all")``
    with its default page size, every task materialised;
  * the planner's first sync (full listing, resolution, splits, the store) of the same project;
  * an incremental sync after 500 new annotations, against the naive full listing.

    python bench/sync_bench.py --write docs/benchmarks.md        # 100,000 tasks
    python bench/sync_bench.py --tasks 5000                      # a quick look
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from select_bench import write_section

from integrations.label_studio import launcher
from integrations.label_studio.client import LabelStudioBackend
from planner.store import open_store
from planner.sync import sync_project

SECTION = "## Label Studio sync"
CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Pedestrian"/>
<Choice value="Wheelchair"/></Choices></View>"""
LABELS = ("Car", "Car", "Car", "Pedestrian", "Wheelchair")


def _choice(label: str) -> list[dict[str, object]]:
    return [
        {"from_name": "kind", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


def run(n_tasks: int, annotated: int, new_annotations: int, work: Path) -> dict[str, float]:
    state = launcher.start(work / "ls", document_root=work / "images", port=18555)
    try:
        with LabelStudioBackend(state.url, state.token, timeout_s=300) as backend:
            pid = backend.create_project("sync benchmark", CONFIG)
            started = time.perf_counter()
            for start in range(0, n_tasks, 10_000):
                chunk = range(start, min(n_tasks, start + 10_000))
                backend.import_tasks(pid, [{"data": {"image": f"/x/{i}.png"}} for i in chunk])
            import_s = time.perf_counter() - started
            ids = sorted(backend.task_ids(pid))
            for k, task in enumerate(ids[:annotated]):
                backend.annotate(task, _choice(LABELS[k % len(LABELS)]))
            sdk = backend._sdk

            started = time.perf_counter()
            naive = sum(1 for _ in sdk.tasks.list(project=pid, fields="all"))
            naive_s = time.perf_counter() - started

            with open_store(f"sqlite:///{work / 'planner.db'}") as store:
                started = time.perf_counter()
                first = sync_project(backend, store, pid, now=datetime.now(UTC))
                first_s = time.perf_counter() - started
                for k, task in enumerate(ids[annotated : annotated + new_annotations]):
                    backend.annotate(task, _choice(LABELS[k % len(LABELS)]))
                started = time.perf_counter()
                later = sync_project(backend, store, pid, now=datetime.now(UTC))
                incremental_s = time.perf_counter() - started
    finally:
        launcher.stop(work / "ls")
    return {
        "tasks": n_tasks,
        "naive_count": naive,
        "import_s": import_s,
        "naive_s": naive_s,
        "first_s": first_s,
        "first_seen": first.seen,
        "incremental_s": incremental_s,
        "incremental_seen": later.seen,
        "incremental_changed": later.new + later.changed,
    }


def section(r: dict[str, float], command: str) -> str:
    naive_rate = r["naive_count"] / r["naive_s"]
    first_rate = r["first_seen"] / r["first_s"]
    ratio = r["incremental_s"] / r["naive_s"]
    return "\n".join(
        [
            SECTION,
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.processor() or 'this machine'}, "
            f"Python {platform.python_version()}, Label Studio {launcher.VERSION} (SQLite) on "
            "the same 2-core machine as the planner, so every figure includes the server's work.",
            f"Command: `{command}`",
            "",
            f"A project of {int(r['tasks']):,} tasks (imported in {r['import_s']:.0f} s), "
            "one label per annotated task.",
            "",
            "| measure | time | tasks/s | ratio |",
            "|---|---|---|---|",
            f'| naive SDK pass `tasks.list(project, fields="all")` | {r["naive_s"]:.1f} s | '
            f"{naive_rate:,.0f} | 1.00 (baseline) |",
            f"| planner first sync (list, resolve, split, store) | {r['first_s']:.1f} s | "
            f"{first_rate:,.0f} | {first_rate / naive_rate:.2f}x the naive rate |",
            f"| incremental sync after {int(r['incremental_changed'])} new annotations "
            f"({int(r['incremental_seen'])} tasks read) | {r['incremental_s']:.2f} s | - | "
            f"{ratio:.4f} of the naive pass (target <= 0.05) |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--annotated", type=int, default=2_000)
    parser.add_argument("--new", type=int, default=500)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    launcher.install()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.tasks, args.annotated, args.new, Path(tmp))
    command = f"python bench/sync_bench.py --tasks {args.tasks}"
    if args.write:
        command += f" --write {args.write}"
    text = section(result, command)
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
