"""The forward pass compiled with ``torch.compile``, where a worker asks for it.

Inductor fuses a network's element-wise layers into its convolutions and generates its own
kernels. On the CPUs here it gained less than its reputation: with the scoring process's
heap kept (``workers.decoders.keep_heap``), which already spares the eager pass most of its
allocations, a bf16 forward pass ran 1.09x (a small CNN at 64 px) to 1.33x (the bootstrap
network at 32 px) the eager speed, the full pipeline at most 1.10x (docs/benchmarks.md), and
compiling costs seconds to a minute a model and process (less where inductor's on-disk
cache, shared by a machine's processes, holds the network). So ``workers.compile``:

* ``off`` (the default) runs the forward pass eagerly;
* ``on`` compiles a model before its first batch;
* ``auto`` compiles a model once this process has been asked to score ``COMPILE_AFTER``
  images with it: the first chunks of a large pool run eagerly, the rest compiled, and a
  small project never waits on a compiler.

TorchScript models are never compiled (``torch.compile`` does not take them). The batch
dimension is compiled dynamic, so a chunk's shorter last batch runs the same kernels; a batch
of one image runs eagerly (a dimension of size 1 would need a compilation of its own). On a
CPU with replicas (``workers.inference``) the model is compiled in the scoring process for
one torch thread, as they run it, before they are forked: compiled once, not in each. A model
that fails to compile (no C++ compiler for inductor's CPU kernels, an operation it cannot
trace) is scored eagerly from then on, the reason in the chunk's warnings; a chunk's time
limit, a signal or a lack of memory that strikes while it compiles or runs is raised as it
would be uncompiled (a chunk past its soft limit is retried at half the batch), and so is an
error of the model itself.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from billiard.exceptions import SoftTimeLimitExceeded, Terminated, TimeLimitExceeded
from torch import nn

from planner.settings import COMPILE_MODES
from workers.models import ModelKind

COMPILE_AFTER = 65_536
"""Images a process is asked to score with a model before ``auto`` compiles it: a pool where
the seconds a compilation takes are won back at the gains measured here."""
log = logging.getLogger("planner.workers")
_NOT_THE_COMPILER = (
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    Terminated,
    KeyboardInterrupt,
    torch.OutOfMemoryError,
)
"""Raised while compiling, but not the compiler's fault: a chunk's time limit, a signal, or
memory that a smaller batch may find (each is handled where it would be uncompiled)."""


def _wrapped(exc: BaseException) -> BaseException | None:
    """What ``exc`` says it wraps: a compiler's inner exception, or its cause."""
    return getattr(exc, "inner_exception", None) or exc.__cause__


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps, or was raised while handling, down to the first."""
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        seen.append(link)
        link = _wrapped(link) or link.__context__
    return seen


def unwrapped(exc: BaseException) -> BaseException:
    """The time limit, signal or out-of-memory error that ``exc`` wraps (torch wraps what
    strikes while it compiles), else ``exc``: what the caller handles as uncompiled."""
    return next((link for link in _chain(exc) if isinstance(link, _NOT_THE_COMPILER)), exc)


def compile_failed(exc: BaseException) -> str:
    """The warning for a model that could not be compiled (``exc``: what torch raised; a
    compiler's own failure comes wrapped, its cause is the reason)."""
    cause = _wrapped(exc) or exc
    first = next(iter(str(cause).strip().splitlines()), "")
    return (
        f"torch.compile failed ({type(cause).__name__}: {first[:200]}); scoring eagerly. "
        "Inductor's CPU kernels need a C++ compiler (gcc) and the Python headers; set "
        "workers.compile = off to skip trying"
    )


@dataclass
class Compiler:
    """What one process compiled, and how many images it was asked to score with each model
    (``auto``); kept with the worker's models (``workers.scoring.Resources``).

    ``compile`` is ``torch.compile`` (a test puts a failing one in its place)."""

    compile: Callable[..., nn.Module] = field(
        default=lambda module: cast(nn.Module, torch.compile(module, dynamic=True))
    )
    _asked: weakref.WeakKeyDictionary[nn.Module, int] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    _compiled: weakref.WeakKeyDictionary[nn.Module, nn.Module] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    failed: weakref.WeakKeyDictionary[nn.Module, str] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    """The models that could not be compiled, each with the warning that says why."""

    def forward(
        self, module: nn.Module, kind: ModelKind, items: int, mode: str = "off"
    ) -> nn.Module | None:
        """The compiled forward pass to score ``items`` more images of ``module`` with, or
        None to score them eagerly (see the module for ``mode``)."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r}: one of {', '.join(COMPILE_MODES)}")
        asked = self._asked.get(module, 0) + items
        self._asked[module] = asked
        if mode == "off" or kind == "torchscript" or module in self.failed:
            return None
        if mode == "auto" and asked < COMPILE_AFTER:
            return None
        if module not in self._compiled:
            log.info("compiling the forward pass of %s", type(module).__name__)
            self._compiled[module] = self.compile(module)
        return self._compiled[module]

    def forget(self, module: nn.Module) -> None:
        """Drop what was compiled of ``module``: a compiled module holds its model, so its
        entry alone would keep a model no longer scored with alive (a weak key its own value
        refers to is never let go)."""
        for entries in (self._compiled, self._asked, self.failed):
            entries.pop(module, None)

    def fail(self, module: nn.Module, exc: BaseException) -> str:
        """Score ``module`` eagerly from now on; the warning saying why."""
        note = compile_failed(exc)
        self.failed[module] = note
        self._compiled.pop(module, None)
        log.warning("%s", note)
        return note
