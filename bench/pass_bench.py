"""A CPU's forward pass, images/s by the images a pass takes, on one and on two torch threads.

What ``workers.passes`` learns in each process, laid out whole for one machine: the model of
``bench/score_bench.py`` on pre-decoded tensors, as a replica runs it (the heap kept,
channels_last, the autocast dtype ``precision`` gives), every pass size timed in each round,
the rounds alternating their order; medians and ranges. Prints a Markdown table::

    python bench/pass_bench.py --model small --size 64 --sizes 4,8,16,32,64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.score_bench import _predict, cpu_model, prepared
from workers.decoders import keep_heap
from workers.devices import torch_threads


def rates(
    model: torch.nn.Module, images: torch.Tensor, sizes: list[int], rounds: int, precision: str
) -> dict[int, list[float]]:
    """Images/s of ``images`` in passes of each of ``sizes``, ``rounds`` times, after one
    untimed pass of each."""
    cpu = torch.device("cpu")
    out: dict[int, list[float]] = {size: [] for size in sizes}
    with torch.inference_mode():
        for size in sizes:
            _predict(model, images[:size], cpu, precision)
        for turn in range(rounds):
            for size in sizes if turn % 2 == 0 else sizes[::-1]:
                started = time.perf_counter()
                for first in range(0, len(images), size):
                    _predict(model, images[first : first + size], cpu, precision)
                out[size].append(len(images) / (time.perf_counter() - started))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=["small", "resnet50", "bootstrap"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sizes", default="4,8,16,32,64", help="pass sizes, comma-separated")
    parser.add_argument("--n", type=int, default=1024, help="images a round, each size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    keep_heap()
    sizes = [int(s) for s in args.sizes.split(",")]
    model = prepared(args.model, torch.device("cpu"))
    images = torch.randint(0, 256, (args.n, 3, args.size, args.size), dtype=torch.uint8)
    print(f"{args.model} at {args.size} px, {cpu_model()}, torch {torch.__version__}; "
          f"medians of {args.rounds} rounds (range), images/s. Command: `python "
          f"bench/pass_bench.py {' '.join(sys.argv[1:])}`\n")  # fmt: skip
    print("| threads | " + " | ".join(f"passes of {s}" for s in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for threads in (1, 2):
        with torch_threads(threads):
            measured = rates(model, images, sizes, args.rounds, args.precision)
        cells = [
            f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})" for v in measured.values()
        ]
        print(f"| {threads} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
