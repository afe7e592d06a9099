"""Run the effectiveness benchmark: ``python -m bench.effectiveness [--seeds 5] [--write ...]``.

    .venv/bin/python -m bench.effectiveness --seeds 5 --write docs/effectiveness.md
    .venv/bin/python -m bench.effectiveness --quick          # one set, one seed (seconds)
    .venv/bin/python -m bench.effectiveness --sets digits-10 --strategies planner random
    .venv/bin/python -m bench.effectiveness --strategies planner \
        --planner-options '{"vote_neighbours": 5}'     # a variant of the planner's options

Runs (data set, seed) jobs on ``--workers`` processes, prints the tables, and with ``--write``
replaces the results section of that Markdown file and writes the curves to ``docs/img/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.effectiveness import datasets, report
from bench.effectiveness.simulate import Run, Settings, run
from bench.effectiveness.strategies import STRATEGIES
from planner.core.plan import PlanOptions
from planner.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- results -->"
SETS = {
    "digits-10": lambda seed: datasets.digits(10, seed=seed),
    "digits-50": lambda seed: datasets.digits(50, seed=seed),
    "digits-100": lambda seed: datasets.digits(100, seed=seed),
    "shapes": lambda seed: datasets.shapes(seed=seed),
}
QUICK = Settings(batch_size=20, initial=20, cap=300, budgets=(100,), curve_every=40)
QUICK_STRATEGIES = ("random", "entropy", "planner")


def _job(args: tuple[str, int, tuple[str, ...], Settings]) -> tuple[str, list[Run]]:
    name, seed, strategies, settings = args
    data = SETS[name](seed)
    return name, [run(data, s, seed=seed, settings=settings) for s in strategies]


def benchmark(
    sets: list[str], seeds: int, strategies: tuple[str, ...], settings: Settings, workers: int
) -> dict[str, list[Run]]:
    """All runs, grouped by data set."""
    jobs = [(name, seed, strategies, settings) for name in sets for seed in range(seeds)]
    out: dict[str, list[Run]] = {name: [] for name in sets}
    if workers <= 1:
        results = map(_job, jobs)
        for name, runs in results:
            out[name] += runs
        return out
    with ProcessPoolExecutor(workers) as pool:
        for name, runs in pool.map(_job, jobs):
            out[name] += runs
    return out


def results(
    runs: dict[str, list[Run]], settings: Settings, img: Path | None
) -> tuple[str, dict[str, Any]]:
    """The Markdown tables and a JSON-able summary; plots under ``img`` when given."""
    parts, data = [], {}
    for name, group in runs.items():
        summary = report.summarise(group, cap=settings.cap, budgets=settings.budgets)
        parts.append(report.table(name, summary, settings.budgets, settings.cap))
        data[name] = {"summary": summary, "targets": report.targets(summary, settings.budgets)}
        if img is not None:
            report.plot(name, group, img / f"effectiveness-{name}.png", xmax=settings.cap)
            parts.append(f"![{name}](img/effectiveness-{name}.png)\n")
    return "\n".join(parts), data


def planner_options(text: str) -> tuple[tuple[str, Any], ...]:
    """``--planner-options``: a JSON object of ``PlanOptions`` fields, checked here."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('write a JSON object, e.g. {"vote_neighbours": 5}')
    fixed = {"batch_size", "diversity", "multilabel"}  # the benchmark sets these
    if fixed & value.keys():
        raise argparse.ArgumentTypeError(f"{sorted(fixed & value.keys())} are set by the run")
    try:
        PlanOptions(batch_size=1, **value)
    except TypeError as exc:
        raise argparse.ArgumentTypeError(f"not a PlanOptions field: {exc}") from exc
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return tuple(sorted(value.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.effectiveness")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one set, one seed, 3 strategies")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--retrain-every", type=int, default=1)
    parser.add_argument(
        "--strategies",
        nargs="*",
        default=list(STRATEGIES),
        choices=list(STRATEGIES),
        help="run only these strategies (default: all)",
    )
    parser.add_argument(
        "--planner-options",
        type=planner_options,
        default=(),
        help="JSON object of PlanOptions fields for the planner strategies",
    )
    parser.add_argument("--write", type=Path, help="Markdown file whose results to replace")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.quick:
        settings, sets, seeds, strategies = QUICK, ["digits-10"], 1, QUICK_STRATEGIES
    else:
        settings = Settings(retrain_every=args.retrain_every, planner_options=args.planner_options)
        sets, seeds, strategies = args.sets, args.seeds, tuple(args.strategies)
    start = time.perf_counter()
    runs = benchmark(sets, seeds, strategies, settings, args.workers)
    img = None if args.write is None else args.write.parent / "img"
    text, summary = results(runs, settings, img)
    took = time.perf_counter() - start
    print(text)
    print(f"{len(sets)} set(s) x {seeds} seed(s) x {len(strategies)} strategies in {took:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.write is not None:
        page = args.write.read_text() if args.write.exists() else MARK + "\n"
        head = page.split(MARK)[0]
        stamp = f"_{seeds} seed(s), {took:.0f} s on {os.cpu_count()} CPU core(s)._\n\n"
        args.write.write_text(head + MARK + "\n\n" + stamp + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
