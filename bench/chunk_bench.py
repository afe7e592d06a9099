"""Scoring a pool as a worker does, by ``workers.chunk_size``: images/s against the smallest.

``bench/score_bench.py`` times ``score_items`` chunk by chunk; a worker does more for every
chunk: it looks up which of the chunk's tasks the model version has scored already, writes
its scores to the store (``workers.write_rows`` at a time, a transaction each) and, when the
chunk is done, starts the next, while its decode processes wait for their next batches. This bench
runs ``workers.dispatch.score_pool`` embedded (no broker: the chunks one after another in
this process, as the daemon scores a pool with no Redis configured, and as a Celery worker
runs its tasks), the store SQLite in a temporary folder (``--store-url``: another, such as
an empty PostgreSQL database), the images read from local files under ``workers.image_root``
(``--source http``: fetched with the API token from the Label Studio stand-in of
``score_bench``), each run a project of its own and an empty pixel cache of its own, the
model ``score_bench``'s (``--model``) as a ``module:function`` entry point, decode processes
and replicas as ``workers.num_workers`` and ``workers.threads`` say by default.

Every chunk size in ``--chunks`` is run ``--rounds`` times, interleaved, after one warm-up;
medians, and each size against the first in the same round::

    python bench/chunk_bench.py --model small --size 64 --n 4096 --chunks 256,1024,4096
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pages import put_marked
from bench.score_bench import TOKEN, build_model, cpu_model, make_images, stand_in
from planner.store.db import Store, ensure_project, open_store
from planner.store.models import Task
from workers.config import WorkerConfig
from workers.dispatch import score_pool
from workers.scoring import Resources

CLASSES = tuple(str(i) for i in range(10))
MODEL_ENV = "CHUNK_BENCH_MODEL"
"""The ``score_bench`` model the entry point builds (the worker imports it afresh)."""


def model() -> nn.Module:
    """The entry point the bench's workers load (``bench.chunk_bench:model``)."""
    torch.manual_seed(0)
    return build_model(os.environ.get(MODEL_ENV, "small"), len(CLASSES))


@dataclass
class Bench:
    """Fresh projects of the same images in ``store``, scored by ``base`` at a chunk size."""

    store: Store
    base: dict[str, Any]
    references: list[tuple[int, str]]
    folder: Path
    resources: Resources
    _ids: Iterator[int] = field(default_factory=lambda: count(int(time.time())))

    def project(self) -> int:
        """A new project holding every image as an unlabelled task."""
        with self.store.session() as session:
            pid = int(ensure_project(session, ls_project_id=next(self._ids)).id or 0)
            session.add_all(
                Task(project_id=pid, ls_task_id=task_id, image=reference)
                for task_id, reference in self.references
            )
            session.commit()
        return pid

    def rate(self, chunk: int) -> tuple[float, float]:
        """Images/s of a first pass over a new project in chunks of ``chunk``, and the
        scoring process's CPU an image (core-ms)."""
        pid = self.project()
        cfg = WorkerConfig(
            **self.base, chunk_size=chunk, pixel_cache_dir=self.folder / f"pixels-{pid}"
        )
        cpu = _cpu_s()
        started = time.perf_counter()
        result = score_pool(cfg, pid, self.references, resources=self.resources)
        seconds = time.perf_counter() - started
        spent = _cpu_s() - cpu
        n = len(self.references)
        if result.scored != n or result.failed:
            raise RuntimeError(f"scored {result.scored} of {n}: {result.warnings}")
        return n / seconds, spent * 1000 / n


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def bench(args: argparse.Namespace) -> Iterator[Bench]:
    """The images, the store, the stand-in where ``--source http``, kept resources."""
    os.environ[MODEL_ENV] = args.model
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        images = make_images(folder, args.n, args.size)
        references = [(i + 1, f"/data/local-files/?d={Path(p).name}") for i, p in images]
        where: dict[str, Any] = {"image_root": folder}
        if args.source == "http":
            served = stack.enter_context(stand_in("label_studio", folder=tmp, latency_s=0))
            where = {"label_studio_url": served.url, "label_studio_token": TOKEN}
        url = args.store_url or f"sqlite:///{folder / 'planner.db'}"
        store = stack.enter_context(open_store(url))
        base = {
            **where,
            "store_url": url,
            "classes": CLASSES,
            "model": "bench.chunk_bench:model",
            "image_size": args.size,
            "batch_size": args.batch,
            "pixel_cache_mb": args.pixel_cache_mb,
        }
        resources = Resources()
        stack.callback(resources.close)
        yield Bench(store, base, references, folder, resources)


def measure(args: argparse.Namespace) -> dict[int, list[tuple[float, float]]]:
    """Each chunk size once to warm up, then ``--rounds`` rounds, the order rotated."""
    chunks = [int(c) for c in args.chunks.split(",")]
    out: dict[int, list[tuple[float, float]]] = {c: [] for c in chunks}
    with bench(args) as b:
        for chunk in chunks:
            b.rate(chunk)
        for r in range(args.rounds):
            for chunk in chunks[r % len(chunks) :] + chunks[: r % len(chunks)]:
                out[chunk].append(b.rate(chunk))
                print(f"round {r + 1}: chunks of {chunk}: {out[chunk][-1][0]:,.0f} images/s")
    return out


def table(args: argparse.Namespace, measured: dict[int, list[tuple[float, float]]]) -> str:
    """The Markdown block of a run: header line, then a row a chunk size."""
    first = next(iter(measured))
    where = (
        "fetched over HTTP with the API token from the Label Studio stand-in on 127.0.0.1"
        if args.source == "http"
        else "read from local files under `workers.image_root`"
    )
    store = (
        f"{_dialect(args)} (`{args.store_url}`)"
        if args.store_url
        else "SQLite in a temporary folder"
    )
    command = " ".join(["python", "bench/chunk_bench.py", *sys.argv[1:]])
    lines = [
        f"<!-- chunk_bench:block {key(args)} -->",
        f"Measured {datetime.now(UTC):%Y-%m-%d}, Python {sys.version.split()[0]}, "
        f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}. "
        f"{args.model} at {args.size}x{args.size}, batch {args.batch}, {args.n:,} JPEG images "
        f"{where}, scored by `score_pool` embedded (each chunk's lookup of what is scored "
        f"already, its scores written to the store, {store}, `workers.write_rows` at a time), "
        f"a new project and an empty pixel cache each run, the decode processes and resources kept "
        f"as the daemon keeps them; medians of {args.rounds} interleaved rounds after a "
        f"warm-up, ratios the median of each round's ratio. Command: `{command}`",
        "",
        "| `workers.chunk_size` | images/s (range) | against chunks of "
        f"{first} | the scoring process's CPU, core-ms an image |",
        "|---|---|---|---|",
    ]
    for chunk, runs in measured.items():
        rates = [r for r, _ in runs]
        against = statistics.median(
            r / base for r, (base, _) in zip(rates, measured[first], strict=True)
        )
        lines.append(
            f"| {chunk:,} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
            f" | {against:.2f}x | {statistics.median(c for _, c in runs):.3f} |"
        )
    lines.append("<!-- chunk_bench:/block -->")
    return "\n".join(lines)


def _dialect(args: argparse.Namespace) -> str:
    """The database of ``--store-url`` (``postgresql`` of ``postgresql+psycopg://...``)."""
    return str(args.store_url.split(":")[0].split("+")[0])


def key(args: argparse.Namespace) -> str:
    """The block's name: the model, its input size, the images' source, a store not SQLite's."""
    store = [_dialect(args)] if args.store_url else []
    return "|".join([args.model, str(args.size), args.source, *store])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=["small", "bootstrap", "resnet50"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunks", default="256,1024,4096", help="chunk sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", choices=["files", "http"], default="files")
    parser.add_argument(
        "--store-url", default=None, help="the store (default: SQLite in a temporary folder)"
    )
    parser.add_argument("--pixel-cache-mb", type=int, default=2048)
    parser.add_argument("--write", type=Path, help="put the block into this Markdown page")
    args = parser.parse_args(argv)
    block = table(args, measure(args))
    print(block)
    if args.write:
        start = f"<!-- chunk_bench:block {key(args)} -->"
        put_marked(args.write, block, start, "<!-- chunk_bench:/block -->")


if __name__ == "__main__":
    main()
