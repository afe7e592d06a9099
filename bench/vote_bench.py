"""Benchmark of the labelled neighbours' vote: what it adds to the daemon's planning call.

    python bench/vote_bench.py                         # measure, print the table
    python bench/vote_bench.py --write docs/benchmarks.md
    python bench/vote_bench.py --quick                 # a small smoke run (seconds)

The pool is ``bench/select_bench.py``'s (1,000,000 candidates, 20 long-tailed classes, 128-d
float32 embeddings, random shortfalls) with the embeddings of ``STYLES``; ``--labelled`` of
its excluded rows (default 20,000, the daemon's ``LABELLED_TO_SCORE``) are labelled with
their likeliest class. Each round runs
two fresh child processes, one after the other: ``plan_batch`` without the vote
(``vote_neighbours=0``, the baseline) and with it (the default), same pool, same batch.
Wall time is ``time.perf_counter`` around the call; memory is the child's peak resident set
(``getrusage(RUSAGE_SELF).ru_maxrss``) minus its resident set just before the call. Figures
are medians over ``--rounds``; ratios are taken within each round, then their median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.select_bench import GIB, make_pool, rss_bytes, write_section  # noqa: E402
from planner.core.plan import PlanOptions, plan_batch  # noqa: E402
from planner.core.quotas import Quota  # noqa: E402
from planner.core.table import CountTable  # noqa: E402

NOISE = 0.05
STYLES = 24
"""The pool's embeddings: ``select_bench``'s class centroids, ``STYLES`` directions of
within-class variation and ``NOISE`` of isotropic noise, a spectrum like a trained model's
(at select_bench's noise of 1.0 it is mostly noise and no vote is taken)."""
MARKERS = (
    "<!-- vote_bench:start -->",
    "<!-- vote_bench:end -->",
    "<!-- vote_bench:notes (by hand, kept by the next run) -->",
)


def child(n: int, b: int, labelled: int, vote: bool) -> dict[str, Any]:
    """One planning call on a fresh pool; wall time, memory and the vote's note."""
    pool = make_pool(n, b, noise=NOISE)
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((STYLES, pool["embeddings"].shape[1])).astype(np.float32)
    for start in range(0, n, 100_000):  # within-class variation in a few directions
        part = pool["embeddings"][start : start + 100_000]
        part += 0.25 * rng.standard_normal((part.shape[0], STYLES), dtype=np.float32) @ basis
    probs = pool["probs"].astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = pool["exclude"][:labelled]
    c = probs.shape[1]
    names = tuple(f"class{j}" for j in range(c))
    likeliest = probs[rows].argmax(axis=1)
    labels = {int(r): [names[int(j)]] for r, j in zip(rows, likeliest, strict=True)}
    counts = np.bincount(likeliest, minlength=c).astype(np.int64)[None, :]
    table = CountTable(names, ("train",), counts, counts.copy(), np.zeros_like(counts))
    quotas = [
        Quota(names[j], target=int(counts[0, j] + s))
        for j, s in enumerate(pool["shortfall"])
        if s > 0
    ]
    options = PlanOptions(batch_size=b) if vote else PlanOptions(batch_size=b, vote_neighbours=0)
    before = rss_bytes()
    start = time.perf_counter()
    plan = plan_batch(
        table,
        quotas,
        pool["ids"],
        probs,
        options=options,
        rng=0,
        embeddings=pool["embeddings"],
        exclude=pool["exclude"],
        labels=labels,
    )
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "wall_s": wall,
        "extra_bytes": max(0, peak - before),
        "picks": len(plan.batch.picks),
        "rare_class": plan.batch.count("rare_class"),
        "notes": [note for note in plan.batch.notes if "vote" in note],
    }


def spawn(n: int, b: int, labelled: int, vote: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "on" if vote else "off"]
    cmd += ["--n", str(n), "--b", str(b), "--labelled", str(labelled)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)  # noqa: S603
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(n: int, b: int, labelled: int, rounds: int) -> dict[str, Any]:
    runs = [(spawn(n, b, labelled, False), spawn(n, b, labelled, True)) for _ in range(rounds)]
    return {"n": n, "b": b, "labelled": labelled, "rounds": rounds, "runs": runs}


def render(result: dict[str, Any], command: str) -> str:
    runs = result["runs"]
    off = statistics.median(r[0]["wall_s"] for r in runs)
    on = statistics.median(r[1]["wall_s"] for r in runs)
    ratio = statistics.median(r[1]["wall_s"] / r[0]["wall_s"] for r in runs)
    mem_off = statistics.median(r[0]["extra_bytes"] for r in runs)
    mem_on = statistics.median(r[1]["extra_bytes"] for r in runs)
    mem_ratio = statistics.median(r[1]["extra_bytes"] / max(r[0]["extra_bytes"], 1) for r in runs)
    last = runs[-1][1]
    load = os.getloadavg()[0]
    when = dt.datetime.now(dt.UTC).date().isoformat()
    return "\n".join(
        [
            "## The labelled neighbours' vote",
            "",
            f"Measured {when} on {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy {np.__version__}; 1-minute load average {load:.1f} at the end.",
            f"Command: `{command}`",
            "",
            f"`plan_batch` picks {result['b']:,} of {result['n']:,} candidates of "
            f"`bench/select_bench.py`'s pool (embeddings: class centroids, {STYLES} "
            f"directions of within-class variation, noise {NOISE}), "
            f"{result['labelled']:,} of them labelled, without the vote (baseline) and with the "
            f"vote of the {PlanOptions(batch_size=1).vote_neighbours} nearest labelled images "
            f"(the default); medians of {result['rounds']} rounds, each "
            "call in a fresh child process.",
            "",
            "| measure | value | ratio to the baseline of this run |",
            "|---|---|---|",
            f"| `plan_batch` without the vote, baseline | {off:.2f} s | 1.00 |",
            f"| `plan_batch` with the vote | {on:.2f} s | {ratio:.2f}x |",
            f"| peak above interpreter + inputs, without the vote, baseline | "
            f"{mem_off / GIB:.2f} GiB | 1.00 |",
            f"| peak above interpreter + inputs, with the vote | {mem_on / GIB:.2f} GiB | "
            f"{mem_ratio:.2f}x |",
            f"| picks with the vote (rare_class of them) | {last['picks']:,} "
            f"({last['rare_class']:,}) | |",
            "",
            "The batch's note: " + ("; ".join(last["notes"]) or "none") + ".",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--write", type=Path, help="write the section into this Markdown file")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--b", type=int, default=1_000)
    parser.add_argument("--labelled", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.n, args.b, args.labelled, args.child == "on")), flush=True)
        return
    if args.quick:
        args.n, args.b, args.labelled, args.rounds = 20_000, 100, 500, 1
    result = measure(args.n, args.b, args.labelled, args.rounds)
    command = "python bench/vote_bench.py" + (" --quick" if args.quick else "")
    if args.write:
        command += f" --write {args.write}"
        write_section(args.write, render(result, command), MARKERS)
        print(f"wrote {args.write}")
    else:
        print(render(result, command))


if __name__ == "__main__":
    main()
