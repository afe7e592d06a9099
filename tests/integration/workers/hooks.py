"""Models the worker subprocesses of these tests load as ``module:function``.

Each stands in for a fault a real worker meets: a GPU running out of memory (not producible
on a CPU), a chunk overrunning its soft time limit, a worker killed in the middle of a chunk,
an input the model cannot take, one that kills the process.
``PLANNER_TEST_HOOK_DIR`` is where they leave their traces for the test to read.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn


def _folder() -> Path:
    return Path(os.environ["PLANNER_TEST_HOOK_DIR"])


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.head = nn.Linear(3, 10)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(10, 3, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


class Greedy(_Linear):
    """Runs out of (GPU) memory on batches above 4 images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


class Slow(_Linear):
    """Takes a minute on batches above 4 images: past any soft time limit of these tests."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 4:
            time.sleep(60)
        return super().forward(x)


class Poisoned(_Linear):
    """Fails on a batch holding a white image: an input this model cannot take."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).amin(dim=1) > 0.99).any()):
            raise RuntimeError("the model cannot take this image")
        return super().forward(x)


class Fatal(_Linear):
    """Kills its own process on a batch holding a white image (as the OOM killer or a crash
    in native code does), after noting the run in ``fatal.log``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).amin(dim=1) > 0.99).any()):
            with (_folder() / "fatal.log").open("a") as log:
                log.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


class Blocking(_Linear):
    """Blocks for good in forward pass number ``PLANNER_TEST_BLOCK_AT`` of the first process
    to get there (it writes ``blocked`` with its pid), until the test kills it; every
    completed forward pass is logged to ``forwards.log`` as ``pid images``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == int(os.environ.get("PLANNER_TEST_BLOCK_AT", "0")):
            try:
                with (_folder() / "blocked").open("x") as marker:
                    marker.write(str(os.getpid()))
            except FileExistsError:
                pass  # another process blocked already: this one runs through
            else:
                while True:
                    time.sleep(1)
        out = super().forward(x)
        with (_folder() / "forwards.log").open("a") as log:
            log.write(f"{os.getpid()} {len(x)}\n")
        return out


def greedy() -> nn.Module:
    return Greedy()


def slow() -> nn.Module:
    return Slow()


def poisoned() -> nn.Module:
    return Poisoned()


def fatal() -> nn.Module:
    return Fatal()


def blocking() -> nn.Module:
    return Blocking()
