"""Soak: many daemon cycles in accelerated time against a real local Label Studio.

Each cycle is the daemon's own job (:meth:`ProjectDaemon.cycle`: sync, score, select, push into
Label Studio); a simulated annotator then labels most of the pushed batch (a long-tailed class
draw, some skips) through the Label Studio API. The daemon's clock moves one hour per cycle,
so reconciliations, batch expiry, housekeeping (every 6 cycles) and the daily report (every 24,
in a child process as ``planner run`` writes it) all happen many times. Scoring is a
deterministic table (task id and cycle hashed to probabilities) written to the store as the
workers would: the soak measures the daemon process, and scoring runs in a child process in
the real daemon anyway.

Measured in this process, which is the daemon: resident memory (VmRSS), open file
descriptors, sockets, threads, every 10 cycles. Growth is reported against the figures after
the warm-up (the first 10% of the cycles), as a ratio and in MB per 100 cycles. At the end:
annotations lost (annotated in Label Studio, not labelled in the store after a final full
sync; must be 0) and duplicate pushes (a task with two planner predictions of one model
version, or ranked by two open batches; must be 0).

    python bench/soak.py --cycles 500 --write docs/reliability.md
    python bench/soak.py --cycles 12                     # a smoke run (CI runs one as a test)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlmodel import col, select

from integrations.label_studio import launcher
from integrations.label_studio.client import LabelStudioBackend
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.core.plan import PlanOptions
from planner.core.quotas import Quota
from planner.daemon.embedded import report_in_child
from planner.daemon.service import ProjectDaemon
from planner.outputs import ReportOptions
from planner.store import DatabaseLease, Store, open_store, write_scores
from planner.store.batches import current_batch, items_of
from planner.store.models import Batch, BatchItem, Project, Task
from planner.sync import SyncOptions

START, END = "<!-- soak:start -->", "<!-- soak:end -->"
CLASSES = ("car", "person", "bicycle", "wheelchair", "crack")
SHARES = np.array([0.62, 0.25, 0.08, 0.035, 0.015])
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="kind" toName="image">'
    + "".join(f'<Choice value="{c}"/>' for c in CLASSES)
    + "</Choices></View>"
)


@dataclass
class HashScorer:
    """Probabilities from a hash of (task id, call): stable, cheap, and different each model."""

    store: Store
    calls: int = 0

    def __call__(self, project_id: int, items: Sequence[tuple[int, str]]) -> str:
        self.calls += 1
        ids = [int(i) for i, _ in items]
        raw = np.array(
            [
                [
                    int(
                        hashlib.blake2b(
                            f"{i}:{self.calls}:{c}".encode(), digest_size=2
                        ).hexdigest(),
                        16,
                    )
                    for c in range(len(CLASSES))
                ]
                for i in ids
            ],
            dtype=np.float64,
        ).reshape(len(ids), len(CLASSES))
        probs = (raw + 1.0) / (raw + 1.0).sum(axis=1, keepdims=True)
        version = f"soak-{self.calls}"
        with self.store.session() as session:
            write_scores(
                session, project_id=project_id, model_version=version, task_ids=ids, probs=probs
            )
        return version


@dataclass
class Clock:
    """The daemon's clock: starts now, moves by ``step`` when told."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    step: timedelta = timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> None:
        self.now += self.step


def _proc(field_name: str) -> float:
    match = re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else float("nan")


def sample(cycle: int) -> dict[str, float]:
    fds = os.listdir("/proc/self/fd")
    sockets = sum(1 for fd in fds if _link(fd).startswith("socket:"))
    return {
        "cycle": cycle,
        "rss_mb": _proc("VmRSS") / 1024,
        "fds": len(fds),
        "sockets": sockets,
        "threads": _proc("Threads"),
    }


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # closed between the listing and the read
        return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _label_batch(
    store: Store, ls_project_id: int, work: LabelStudioWorkbench, rng: np.random.Generator
) -> tuple[int, int]:
    """Label most of the open batch; the (annotations, skips) posted."""
    with store.session() as session:
        row = session.exec(select(Project).where(Project.ls_project_id == ls_project_id)).one()
        batch = current_batch(session, int(row.id or 0))
        if batch is None:
            return 0, 0
        tasks = [i.ls_task_id for i in items_of(session, int(batch.id or 0))]
    done = skipped = 0
    for task in tasks:
        if rng.random() < 0.15:  # an annotator leaves a few for later
            continue
        if rng.random() < 0.05:
            work.annotate(task, [], cancelled=True)
            skipped += 1
            continue
        label = CLASSES[int(rng.choice(len(CLASSES), p=SHARES))]
        value = {"choices": [label]}
        work.annotate(
            task, [{"from_name": "kind", "to_name": "image", "type": "choices", "value": value}]
        )
        done += 1
    return done, skipped


@dataclass
class Result:
    cycles: int
    tasks: int
    seconds: float
    cycle_seconds: float
    """Of ``seconds``, in the daemon's cycles (the rest: the annotator, reports, housekeeping)."""
    annotations: int
    skips: int
    pushed: int
    lost: int
    duplicate_predictions: int
    double_ranked: int
    samples: list[dict[str, float]]
    outcomes: dict[str, int]

    def growth(self) -> dict[str, float]:
        warm = self.samples[max(1, len(self.samples) // 10)]
        last = self.samples[-1]
        span = max(1.0, last["cycle"] - warm["cycle"])
        return {
            "rss_warm_mb": warm["rss_mb"],
            "rss_end_mb": last["rss_mb"],
            "rss_ratio": last["rss_mb"] / warm["rss_mb"],
            "rss_mb_per_100_cycles": (last["rss_mb"] - warm["rss_mb"]) * 100 / span,
            "fds_warm": warm["fds"],
            "fds_end": last["fds"],
            "fds_max": max(s["fds"] for s in self.samples),
            "sockets_warm": warm["sockets"],
            "sockets_end": last["sockets"],
            "threads_warm": warm["threads"],
            "threads_end": last["threads"],
        }


def soak(
    url: str,
    token: str,
    work_dir: Path,
    cycles: int,
    *,
    batch: int = 10,
    seed: int = 0,
    trace_memory: int = 0,
) -> Result:
    """Run the soak against the Label Studio at ``url``; see the module docstring."""
    rng = np.random.default_rng(seed)
    tasks = cycles * batch + 200
    with LabelStudioWorkbench(url, token) as work:
        pid = work.create_project(f"soak {datetime.now(UTC):%H%M%S}", LABEL_CONFIG)
        data = [{"data": {"image": f"/data/local-files/?d=soak/{i:05d}.png"}} for i in range(tasks)]
        for start in range(0, tasks, 1000):
            work.import_tasks(pid, data[start : start + 1000])
        clock = Clock()
        store_url = f"sqlite:///{work_dir / 'planner.db'}"
        store = open_store(store_url)
        backend = LabelStudioBackend(url, token)
        quotas = [Quota(c, target=10**6) for c in CLASSES[2:]]  # never met: the soak runs on
        options = ReportOptions(work_dir / "reports", tuple(quotas), ("train", "val", "test"))
        daemon = ProjectDaemon(
            backend=backend,
            store=store,
            ls_project_id=pid,
            quotas=quotas,
            scorer=HashScorer(store),
            lease=DatabaseLease(store.engine, f"project-{pid}", holder="soak"),
            plan_options=PlanOptions(batch_size=batch, diversity=False),
            sync_options=SyncOptions(
                reconcile_every=timedelta(hours=6), batch_ttl=timedelta(days=2)
            ),
            reports=options,
            report_writer=lambda pid, opts, now: report_in_child(store_url, None, pid, opts, now),
            clock=clock,
        )
        annotations = skips = pushed = 0
        cycle_s = 0.0
        outcomes: Counter[str] = Counter()
        samples = [sample(0)]
        baseline: tracemalloc.Snapshot | None = None
        started = time.perf_counter()
        for cycle in range(1, cycles + 1):
            tick = time.perf_counter()
            outcome = daemon.cycle()
            cycle_s += time.perf_counter() - tick
            outcomes[outcome.why.split(":")[0]] += 1
            pushed += outcome.pushed is not None
            done, skipped = _label_batch(store, pid, work, rng)
            annotations, skips = annotations + done, skips + skipped
            if cycle % 6 == 0:
                daemon.housekeeping()
            if cycle % 24 == 0:
                daemon.report()
            clock.tick()
            if trace_memory and cycle == max(1, cycles // 10):
                tracemalloc.start(trace_memory)
                baseline = tracemalloc.take_snapshot()
            if cycle % 10 == 0 or cycle == cycles:
                samples.append(sample(cycle))
                last = samples[-1]
                print(
                    f"cycle {cycle}: {last['rss_mb']:.1f} MB, {last['fds']:.0f} fds, "
                    f"{last['sockets']:.0f} sockets, {outcome.why}",
                    flush=True,
                )
        seconds = time.perf_counter() - started
        if baseline is not None:
            _print_growth(baseline, tracemalloc.take_snapshot())
            tracemalloc.stop()
        clock.now += timedelta(days=1)  # the final sync reconciles everything
        labelled, duplicates, double = _final_counts(daemon, store, work, pid)
        backend.close()
        store.dispose()
    return Result(
        cycles=cycles,
        tasks=tasks,
        seconds=seconds,
        cycle_seconds=cycle_s,
        annotations=annotations,
        skips=skips,
        pushed=pushed,
        lost=annotations - labelled,
        duplicate_predictions=duplicates,
        double_ranked=double,
        samples=samples,
        outcomes=dict(outcomes),
    )


def _final_counts(
    daemon: ProjectDaemon, store: Store, work: LabelStudioWorkbench, ls_project_id: int
) -> tuple[int, int, int]:
    """After a full reconciling sync: (tasks labelled, duplicate predictions, double-ranked)."""
    daemon.sync(reconcile=True)
    with store.session() as session:
        labelled = len(session.exec(select(Task).where(Task.state == "labelled")).all())
    per_version = Counter((t, v) for t, v, _ in work.list_predictions(ls_project_id))
    duplicates = sum(n - 1 for n in per_version.values() if n > 1)
    return labelled, duplicates, _double_ranked(store, ls_project_id)


def _print_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> None:
    """The Python allocations that grew most between the two snapshots, with their callers."""
    noise = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(noise).compare_to(before.filter_traces(noise), "traceback")
    print(f"python heap growth after warm-up: {sum(d.size_diff for d in diff) / 2**20:+.2f} MB")
    for stat in diff[:15]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB in {stat.count_diff:+d} blocks")
        for line in stat.traceback.format():
            print("    " + line)


def _double_ranked(store: Store, ls_project_id: int) -> int:
    """Tasks that are items of two batches still open (pushed or active)."""
    with store.session() as session:
        project = session.exec(select(Project).where(Project.ls_project_id == ls_project_id)).one()
        rows = session.exec(
            select(BatchItem.ls_task_id)
            .join(Batch, col(Batch.id) == col(BatchItem.batch_id))
            .where(Batch.project_id == project.id, Batch.state.in_(("pushed", "active")))  # type: ignore[attr-defined]
        ).all()
    return sum(n - 1 for n in Counter(rows).values() if n > 1)


def section(result: Result, command: str) -> str:
    g = result.growth()
    return "\n".join(
        [
            START,
            f"Command: `{command}` ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPU cores, "
            f"{result.seconds:.0f} s for {result.cycles} cycles, {result.cycle_seconds:.0f} s of "
            f"them in the daemon's cycles, {result.tasks} tasks).",
            "",
            "| figure | after warm-up | at the end | growth |",
            "|---|---|---|---|",
            f"| daemon RSS | {g['rss_warm_mb']:.1f} MB | {g['rss_end_mb']:.1f} MB | "
            f"{g['rss_ratio']:.3f}x ({g['rss_mb_per_100_cycles']:+.2f} MB / 100 cycles) |",
            f"| open file descriptors | {g['fds_warm']:.0f} | {g['fds_end']:.0f} | "
            f"max {g['fds_max']:.0f} |",
            f"| sockets | {g['sockets_warm']:.0f} | {g['sockets_end']:.0f} | |",
            f"| threads | {g['threads_warm']:.0f} | {g['threads_end']:.0f} | |",
            "",
            f"Batches pushed: {result.pushed}; annotations posted: {result.annotations} "
            f"(+{result.skips} skips); **annotations lost: {result.lost}**; **duplicate "
            f"predictions: {result.duplicate_predictions}**; tasks in two open batches: "
            f"{result.double_ranked}. Cycle outcomes: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(result.outcomes.items()))
            + ".",
            END,
        ]
    )


def write_section(path: Path, text: str) -> None:
    page = path.read_text() if path.exists() else "# Reliability\n"
    if START in page and END in page:
        head, rest = page.split(START, 1)
        page = head + text + rest.split(END, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n## Soak\n\n" + text + "\n"
    path.write_text(page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/soak.py")
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--url", help="a running Label Studio (default: start one)")
    parser.add_argument("--token", help="its API token (with --url)")
    parser.add_argument("--write", type=Path, help="Markdown file for the soak section")
    parser.add_argument("--json", type=Path, help="also write every sample as JSON")
    parser.add_argument(
        "--trace-memory",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace Python allocations after the warm-up; print what grew (slows the run)",
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the Label Studio this run started is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="planner-soak-") as tmp:
        work_dir = Path(tmp)
        state = None
        if args.url is None:
            state = launcher.start(
                work_dir / "ls", document_root=work_dir / "images", port=_free_port()
            )
            url, token = state.url, state.token
        else:
            url, token = args.url, args.token or os.environ.get("PLANNER_LABEL_STUDIO__TOKEN", "")
        try:
            result = soak(
                url,
                token,
                work_dir,
                args.cycles,
                batch=args.batch,
                trace_memory=args.trace_memory,
            )
        finally:
            if state is not None:
                launcher.stop(work_dir / "ls")
    print(
        json.dumps(
            {k: v for k, v in asdict(result).items() if k != "samples"} | result.growth(), indent=1
        )
    )
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=1))
    if args.write is not None:
        command = "python bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(args.write, section(result, command.strip()))
    return 0 if result.lost == 0 and result.duplicate_predictions == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
