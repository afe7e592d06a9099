"""Image fetching: CPU an image of the workers' Label Studio client against earlier ones.

A pool's first pass fetches every image from Label Studio, and on a CPU the client's own work
shares the cores with decoding and the forward pass. Measured in one run, interleaved rounds:
``ImageSource.read`` (libcurl through pycurl, kept-alive connections, the API token; what the
DataLoader decode processes call) against a ``urllib3.PoolManager`` reading the body as the
workers did before libcurl (the baseline) and an ``httpx.Client`` (the workers' client
before urllib3), all with kept-alive connections, sending the same request and reading the
same JPEG images from the score bench's Label Studio stand-in (a process of its own) on
127.0.0.1. Reported: the fetching thread's CPU time an image (``time.thread_time``) and the
wall time an image, medians of the rounds, and the ratio of CPU times within each round
(median).

Then several at once, as a decode process reads a batch: ``ImageSource.read_many`` (libcurl's
multi interface, ``FETCHES_PER_PROCESS`` transfers under way on one thread) against the same
number of threads each calling ``ImageSource.read`` (the decode processes' way before it, the
baseline), batch by batch; the process's CPU time (every thread's, ``time.process_time``) and
the wall time an image.

    python bench/fetch_bench.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pages import put_marked
from bench.score_bench import TOKEN, Urllib3Source, cpu_model, make_images, stand_in
from workers.batches import FETCHES_PER_PROCESS, chunked
from workers.images import ImageSource

BATCH = 64
"""Images a batch, as the decode processes are handed them."""

START, END = "<!-- fetch_bench:start -->", "<!-- fetch_bench:end -->"


def timed(fetch: Callable[[str], bytes], references: list[str]) -> tuple[float, float]:
    """CPU seconds of this thread and wall seconds, an image, to fetch ``references``."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for reference in references:
        if not fetch(reference):
            raise RuntimeError(f"{reference}: empty answer")
    n = len(references)
    return (time.thread_time() - cpu) / n, (time.perf_counter() - wall) / n


def timed_batches(
    fetch: Callable[[list[str]], list[bytes]], references: list[str]
) -> tuple[float, float]:
    """CPU seconds of this process (every thread) and wall seconds, an image, to fetch
    ``references`` a batch at a time."""
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in chunked(references, BATCH):
        if not all(fetch(batch)):
            raise RuntimeError("an empty answer")
    n = len(references)
    return (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n


def measure_together(n: int, size: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """The batch readers' CPU and wall an image, ``rounds`` interleaved rounds."""
    with tempfile.TemporaryDirectory() as folder:
        make_images(Path(folder), n, size)
        references = [f"/data/local-files/?d={i:06d}.jpg" for i in range(n)]
        with stand_in("label_studio", folder=folder, latency_s=0.0) as served:
            source = ImageSource(label_studio_url=served.url, label_studio_token=TOKEN)
            pool = ThreadPoolExecutor(FETCHES_PER_PROCESS, "planner-fetch")

            def on_threads(batch: list[str]) -> list[bytes]:
                return list(pool.map(source.read, batch))

            def at_once(batch: list[str]) -> list[bytes]:
                got = dict(source.read_many(batch, at_once=FETCHES_PER_PROCESS))
                return [b if isinstance(b, bytes) else b"" for _, b in sorted(got.items())]

            runs = {"threads": on_threads, "multi": at_once}
            measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
            for fetch in runs.values():
                timed_batches(fetch, references[: 2 * BATCH])
            for _ in range(rounds):
                for name, fetch in runs.items():
                    measured[name].append(timed_batches(fetch, references))
            pool.shutdown()
            source.close()
    return measured


def measure(n: int, size: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    with tempfile.TemporaryDirectory() as folder:
        make_images(Path(folder), n, size)
        references = [f"/data/local-files/?d={i:06d}.jpg" for i in range(n)]
        with stand_in("label_studio", folder=folder, latency_s=0.0) as served:
            url = served.url
            source = ImageSource(label_studio_url=url, label_studio_token=TOKEN)
            before = Urllib3Source(label_studio_url=url, label_studio_token=TOKEN)
            headers = {"Authorization": f"Token {TOKEN}"}
            with httpx.Client(timeout=30) as client:

                def with_httpx(reference: str) -> bytes:
                    response = client.get(url + reference, headers=headers)
                    response.raise_for_status()
                    return response.content

                runs = {"urllib3": before.read, "httpx": with_httpx, "workers": source.read}
                measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
                for fetch in runs.values():  # warm-up: connections opened, code loaded
                    timed(fetch, references[:50])
                for _ in range(rounds):
                    for name, fetch in runs.items():
                        measured[name].append(timed(fetch, references))
            source.close()
    return measured


def section(measured: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> str:
    def median(name: str, which: int) -> float:
        return statistics.median(pair[which] for pair in measured[name]) * 1e6

    def ratio(name: str, baseline: str = "urllib3") -> float:
        return statistics.median(
            ours[0] / theirs[0]
            for ours, theirs in zip(measured[name], measured[baseline], strict=True)
        )

    def cells(name: str) -> str:
        return f"{median(name, 0):.0f} us | {median(name, 1):.0f} us"

    command = f"python bench/fetch_bench.py --n {args.n} --size {args.size} --rounds {args.rounds}"
    return f"""## Image fetching

Measured {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, {cpu_model()}.
{args.n:,} JPEG images of {args.size}x{args.size} fetched one after another over one kept-alive
connection from a Label Studio stand-in (its own process) on 127.0.0.1 with the API token;
the fetching thread's CPU time and the wall time an image, medians of {args.rounds}
interleaved rounds after a warm-up. Command: `{command} --write docs/benchmarks.md`

| client | CPU an image | wall an image | ratio of CPU |
|---|---|---|---|
| `urllib3.PoolManager`, kept alive (the workers' client before libcurl) | {cells("urllib3")} | 1.00 (baseline) |
| `httpx.Client`, kept alive (the workers' client before urllib3) | {cells("httpx")} | {ratio("httpx"):.2f}x |
| `ImageSource.read` (libcurl through pycurl, kept alive) | {cells("workers")} | {ratio("workers"):.2f}x |

The same images a batch of {BATCH} at a time, {FETCHES_PER_PROCESS} under way at once as a decode
process reads them; the process's CPU time (every thread's) and the wall time an image.

| reader | CPU an image | wall an image | ratio of CPU |
|---|---|---|---|
| {FETCHES_PER_PROCESS} threads each calling `ImageSource.read` (the decode processes' way before `read_many`) | {cells("threads")} | 1.00 (baseline) |
| `ImageSource.read_many` (libcurl's multi interface, one thread) | {cells("multi")} | {ratio("multi", "threads"):.2f}x |
"""  # noqa: E501 - Markdown table rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path, help="put this run into the Markdown file")
    args = parser.parse_args()
    measured = measure(args.n, args.size, args.rounds)
    measured |= measure_together(args.n, args.size, args.rounds)
    text = section(measured, args)
    print(text)
    if args.write:
        put_marked(args.write, f"{START}\n{text.strip()}\n{END}", START, END)


if __name__ == "__main__":
    main()
