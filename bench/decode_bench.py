"""JPEG decoding: the workers' ``decode`` against Pillow's own path, CPU time an image.

A pool's first pass decodes every image, on the same cores as the forward pass on a CPU.
``workers.decode.decode`` hands a JPEG straight to libjpeg-turbo (``simplejpeg``);
before 2026-12-06 every image took Pillow's path (``workers.decode.decode_pillow``, which other
formats still take: the same pixels, tests/unit/workers/test_decode.py) and was then
transposed to channels first, which ``decode`` no longer does (a batch of its channels-last
images is the channels_last layout the forward pass runs in). Each
case is camera-like JPEG images (smooth gradients plus grain, the score bench's) of a source
size, decoded for a model input size (DCT-scaled first when twice as large), the thread's CPU
time an image (``time.thread_time``), medians of interleaved rounds after a warm-up, and the
ratio of the two within each round (median).

    python bench/decode_bench.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pages import put_marked
from bench.score_bench import cpu_model, make_images, ratio
from workers.decode import decode, decode_pillow


def before(data: bytes, size: int) -> npt.NDArray[np.uint8]:
    """``decode`` before 2026-12-06: Pillow, then the pixels transposed to channels first."""
    return np.ascontiguousarray(decode_pillow(data, size).transpose(2, 0, 1))


START, END = "<!-- decode_bench:start -->", "<!-- decode_bench:end -->"
CASES = ((64, 64), (224, 224), (640, 64), (1024, 224))
"""(source size, model input size)."""


def timed(run: Callable[[bytes, int], object], images: list[bytes], size: int) -> float:
    """CPU seconds of this thread an image to decode ``images`` for ``size``."""
    started = time.thread_time()
    for data in images:
        run(data, size)
    return (time.thread_time() - started) / len(images)


def measure(n: int, rounds: int) -> dict[tuple[int, int], dict[str, list[float]]]:
    runs: dict[str, Callable[[bytes, int], object]] = {"pillow": before, "workers": decode}
    measured: dict[tuple[int, int], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for source, size in CASES:
            made = make_images(Path(folder), n, source, seed=source)
            images = [Path(path).read_bytes() for _, path in made]
            same = np.array_equal(decode(images[0], size), decode_pillow(images[0], size))
            assert same, f"{source} px for {size}: the two paths gave other pixels"
            for run in runs.values():  # warm-up
                timed(run, images[: max(1, n // 10)], size)
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(rounds):
                for name, run in runs.items():
                    times[name].append(timed(run, images, size))
            measured[(source, size)] = times
    return measured


def section(
    measured: dict[tuple[int, int], dict[str, list[float]]], args: argparse.Namespace
) -> str:
    rows = []
    for (source, size), times in measured.items():
        pillow, ours = (statistics.median(times[k]) * 1e6 for k in ("pillow", "workers"))
        vs = ratio(times, "workers", "pillow")
        rows.append(
            f"| {source}x{source} for {size}x{size} | {pillow:.0f} us | {ours:.0f} us | {vs:.2f}x |"
        )
    command = f"python bench/decode_bench.py --n {args.n} --rounds {args.rounds}"
    table = "\n".join(rows)
    return f"""## JPEG decoding

Measured {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, {cpu_model()}.
{args.n:,} camera-like JPEG images (quality 90) of each source size decoded to RGB pixels of
the model's input size, the same pixels both ways; the thread's CPU time an image, medians of
{args.rounds} interleaved rounds after a warm-up, the ratio the median of each round's.
Command: `{command} --write docs/benchmarks.md`

| JPEG for the model's input | Pillow, channels first (before 2026-12-06) | `decode` (libjpeg-turbo via simplejpeg, channels last) | ratio of CPU |
|---|---|---|---|
{table}
"""  # noqa: E501 - Markdown table rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path, help="put this run into the Markdown file")
    args = parser.parse_args()
    text = section(measure(args.n, args.rounds), args)
    print(text)
    if args.write:
        put_marked(args.write, f"{START}\n{text.strip()}\n{END}", START, END)


if __name__ == "__main__":
    main()
