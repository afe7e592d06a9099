"""How many images a forward pass on a CPU takes at once, learnt from the passes themselves.

On a CPU a network whose layers' outputs are large may run slower an image on large batches,
whose activations no longer fit the caches; or faster, its arithmetic the bottleneck and a
pass's fixed costs spread over more images. Which, depends on the CPU: with the heap kept as
the workers keep it and one torch thread, the AMX machine of docs/benchmarks.md (2 MB of L2 a
core) ran the small CNN at 64 px at 1,523 images/s on passes of 16 and 1,063 on the default
64, ResNet-50 at 224 px at 41.3 on 8 and 30.9 on 32; the EPYC (1 MB of L2, arithmetic a
third as fast) ran the same small CNN at 570 on 8, 585 on 16, 598 on 32 and 596 on 64, ResNet-50
at 22.2 on 8 and 22.7 on 32. A rule from the cache's size fitted one and cost the other. So
each process learns it: :func:`pass_sizes` keeps, for a model, input size, dtype, torch
thread count and ``workers.batch_size``, a :class:`PassSizes` that hands each forward pass a
cap on its images (a batch cut into passes asks before each), in turn every candidate (the
batch size, its half, quarter and eighth, none under ``MIN_PASS``), and is told how long the
pass took. A candidate's first pass is not counted (oneDNN's kernels for a new shape, pages
touched the first time), nor a pass of no more than half its cap (a batch's last images);
after ``TIMED_TURNS`` more each, the largest cap whose best pass ran within ``CLOSE`` of the
most images a second is kept for the process's life (the best pass, not the mean, as another
process taking the CPU only ever slows a pass; the largest near it, as nearer is noise): at
the default batch of 64, within the first 8 batches a process scores. The turns a replica
timed come back to the scoring process with its scores, and the size it kept once it has;
the scoring process adds up every replica's turns and keeps a size from them all (a single
replica's few passes amid the others' work are noisier), or else the first a replica kept,
and the replicas forked after that start from it. A replica retired before it settled, its
pool of images scored, still hands its turns on: ResNet-50 at batch 32 takes 7 batches to
learn, more than a replica scores of a chunk of 256. A GPU's passes are not cut.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterable

import torch
from torch import nn

MIN_PASS = 8
"""The fewest images a forward pass on a CPU is cut down to."""
CANDIDATES = 4
"""The caps tried: the batch size, its half, quarter and eighth (those of ``MIN_PASS`` or more)."""
TIMED_TURNS = 3
"""The turns each cap is timed on, after its first, before one is kept."""
CLOSE = 0.03
"""A smaller cap is kept only if its best pass ran more than this much faster than a larger
one's: nearer than that is the timing's noise, and the larger passes fewer."""

_sizes: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], PassSizes]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()
log = logging.getLogger("planner.workers")


def candidates(batch_size: int) -> list[int]:
    """The caps on a CPU's forward passes tried for ``batch_size``, largest first."""
    caps = [batch_size]
    while len(caps) < CANDIDATES and caps[-1] // 2 >= MIN_PASS:
        caps.append(caps[-1] // 2)
    return caps


class PassSizes:
    """The cap on one process's forward passes of one model on a CPU, learnt (see the
    module). ``start`` begins a turn (a pass) and gives its cap; ``timed`` times it.

    A copy forked into another process keeps what was timed before it (each cap's timed
    turns and best rate) and warms each cap up again there; ``report`` gives the turns timed
    in this process since it last reported, which ``merge`` adds to another's, so a decode
    process retired before it settled still hands on what it timed."""

    def __init__(self, batch_size: int, *, learn: bool = True) -> None:
        """Caps tried for ``batch_size``; with ``learn`` off, whole batches from the start."""
        self.candidates = candidates(batch_size) if learn else [batch_size]
        self.chosen: int | None = self.candidates[0] if len(self.candidates) == 1 else None
        self._timed = dict.fromkeys(self.candidates, 0)
        self._best = dict.fromkeys(self.candidates, 0.0)
        self._pid = os.getpid()
        self._warm: set[int] = set()  # caps whose first pass ran in process ``_pid``
        self._unreported: dict[int, tuple[int, float]] = {}
        self._turn: int | None = None
        self._images = 0
        self._seconds = 0.0
        self._lock = threading.Lock()

    def start(self) -> int:
        """The cap for the next pass, the turn before it closed."""
        with self._lock:
            if self.chosen is not None:
                return self.chosen
            self._here()
            self._close()
            if self.chosen is not None:
                return self.chosen
            # the cap timed fewest (its warm-up here a turn), the largest first among equals
            turn = min(self.candidates, key=lambda cap: self._timed[cap] + (cap in self._warm))
            self._turn, self._images, self._seconds = turn, 0, 0.0
            return turn

    def timed(self, images: int, seconds: float) -> None:
        """A forward pass of ``images`` took ``seconds`` in this turn."""
        with self._lock:
            if self._turn is not None:
                self._images += images
                self._seconds += seconds

    def settle(self, cap: int) -> None:
        """Keep ``cap`` from now on (learnt by another process on the same threads), where
        this has not settled on its own."""
        with self._lock:
            if self.chosen is None:
                self.chosen = cap

    def report(self) -> tuple[tuple[int, int, float], ...]:
        """``(cap, turns, best images/s)`` of the turns timed in this process since the last
        report (none where it settled elsewhere or learns nothing)."""
        with self._lock:
            self._here()
            told = tuple((cap, turns, best) for cap, (turns, best) in self._unreported.items())
            self._unreported.clear()
            return told

    def merge(self, timings: Iterable[tuple[int, int, float]], where: str = "") -> None:
        """Add turns another process timed on the same threads (its ``report``); kept once
        every cap has enough, as if timed here; ``where`` names them in the log."""
        with self._lock:
            if self.chosen is not None:
                return
            for cap, turns, best in timings:
                if cap in self._timed:
                    self._add(cap, turns, best)
            self._decide(where)

    def rates(self) -> dict[int, float]:
        """Each cap's best turn so far in images/s (0: not timed yet)."""
        with self._lock:
            return dict(self._best)

    def _here(self) -> None:
        """Forked since the last call: nothing warm in this process, nothing to report."""
        if self._pid != os.getpid():
            self._pid, self._warm, self._unreported, self._turn = os.getpid(), set(), {}, None

    def _close(self) -> None:
        turn, self._turn = self._turn, None
        if turn is None or self._images <= turn // 2 or self._seconds <= 0:
            return  # no pass, or a batch's last few images: not a turn
        if turn not in self._warm:  # a cap's first turn in a process is its warm-up
            self._warm.add(turn)
            return
        rate = self._images / self._seconds
        self._add(turn, 1, rate)
        turns, best = self._unreported.get(turn, (0, 0.0))
        self._unreported[turn] = (turns + 1, max(best, rate))
        self._decide()

    def _add(self, cap: int, turns: int, best: float) -> None:
        """``turns`` more timed of ``cap``, the best at ``best`` images/s."""
        self._timed[cap] += turns
        self._best[cap] = max(self._best[cap], best)

    def _decide(self, where: str = "") -> None:
        if min(self._timed.values()) < TIMED_TURNS:
            return
        fastest = max(self._best.values())
        # the largest within CLOSE of the fastest (candidates run largest first)
        self.chosen = next(
            cap for cap in self.candidates if self._best[cap] >= fastest * (1 - CLOSE)
        )
        timed = ", ".join(f"{cap}: {rate:,.0f}" for cap, rate in self._best.items())
        log.info(
            "forward passes on the CPU in process %d%s: %d images at most (best images/s "
            "by pass size: %s)", os.getpid(), where, self.chosen, timed,
        )  # fmt: skip


def pass_sizes(
    module: nn.Module,
    size: int,
    dtype: torch.dtype | None,
    batch_size: int,
    *,
    threads: int | None = None,
) -> PassSizes:
    """This process's :class:`PassSizes` for ``module`` at ``size`` px in ``dtype`` on
    ``threads`` torch threads (None: its current ones), batches of ``batch_size``."""
    key = (size, dtype, threads or torch.get_num_threads(), batch_size)
    with _lock:
        known = _sizes.setdefault(module, {})
        if key not in known:
            known[key] = PassSizes(batch_size)
        return known[key]
