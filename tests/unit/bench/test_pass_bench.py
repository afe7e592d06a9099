"""The pass-size benchmark times every size each round and prints one row a thread count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from bench.pass_bench import rates

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "pass_bench.py"


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(x))
        return self.head(x.mean(dim=(2, 3)))


def test_each_size_is_timed_each_round_on_all_the_images() -> None:
    model = Counting()
    images = torch.zeros((16, 3, 4, 4), dtype=torch.uint8)
    measured = rates(model, images, [4, 8], 3, "float32")
    assert list(measured) == [4, 8]
    assert all(len(v) == 3 and min(v) > 0 for v in measured.values())
    assert model.seen == [4, 8] + ([4] * 4 + [8] * 2 + [8] * 2 + [4] * 4) + [4] * 4 + [8] * 2


def test_the_script_prints_a_row_for_one_and_two_threads() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "bootstrap", "--size", "16", "--sizes", "8,16",
         "--n", "32", "--rounds", "1"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    assert "| threads | passes of 8 | passes of 16 |" in out
    assert sum(line.startswith(("| 1 |", "| 2 |")) for line in out.splitlines()) == 2
