"""Decode processes: the DataLoader processes that read and decode a chunk's batches, kept
from one chunk to the next (:class:`Decoders`): starting them again for every chunk cost a
256-image chunk on a CPU a sixth of its time. Each keeps the memory a batch freed for the
next (:func:`keep_heap`). With no decode processes the batches are read on threads of this
process instead (:func:`feed`).
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from planner.errors import PlannerError
from workers.ahead import hinted
from workers.batches import Batch, Collated, Images, Item, as_is, collate, in_process

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (malloc.h)."""
KEPT_HEAP_BYTES = 256 * 2**20
"""Freed memory the scoring process and each decode process keep for the next batch rather
than return to the system (see :func:`keep_heap`)."""
IDLE_DECODERS_S = 60.0
"""How long decode processes kept between calls (:class:`Decoders`) wait for the next."""


class _Batches(Sampler[list[Item]]):
    """A DataLoader's batch sampler: the batches of the call now reading through it (set
    before each pass, so decode processes kept between calls get the next call's)."""

    def __init__(self, batches: list[list[Item]] | None = None) -> None:
        super().__init__()
        self.batches = batches or []

    def __iter__(self) -> Iterator[list[Item]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Decoders:
    """Decode processes kept from one :func:`workers.inference.iter_scores` call to the
    next, as a worker scores one chunk after another: starting them (forking, each process's
    first batch) cost a 256-image chunk on a CPU a sixth of its time (docs/benchmarks.md),
    and more with a GPU's many decode processes.

    One set at a time. A call with another model, image source, pixel cache or settings
    shuts the kept ones down and starts its own (a replica holds the model it was forked
    with); so does a call cut short or failing (a process may hold a half-read batch),
    one whose processes found the pixel cache broken (tried afresh next call), and
    ``close``. Processes left unused ``idle_s`` seconds are shut down, giving their memory
    back. A call made while another holds them (another thread) gets processes of its own.
    """

    def __init__(self, idle_s: float = IDLE_DECODERS_S) -> None:
        self.idle_s = idle_s
        self.started = 0
        """Sets of decode processes started so far (each a fork per process)."""
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._loader: DataLoader[Any] | None = None
        self._sampler = _Batches()
        self._timer: threading.Timer | None = None
        self._retire = False

    @contextmanager
    def lend(
        self, key: tuple[object, ...], make: Callable[[_Batches, bool], DataLoader[Any]]
    ) -> Iterator[tuple[DataLoader[Any], _Batches]]:
        """A loader and its batch sampler for ``key`` (``make(sampler, persistent)`` builds
        one), kept ones when their key is ``key``."""
        if not self._lock.acquire(blocking=False):  # in use by another call
            sampler = _Batches()
            yield make(sampler, False), sampler
            return
        try:
            if self._timer is not None:
                self._timer.cancel()
            if self._loader is None or self._key != key:
                self._shutdown()
                self._loader, self._key = make(self._sampler, True), key
                self.started += 1
            finished = False
            try:
                yield self._loader, self._sampler
                finished = not self._retire
            finally:
                self._sampler.batches = []
                if finished:
                    self._timer = threading.Timer(self.idle_s, self._idle)
                    self._timer.daemon = True
                    self._timer.start()
                else:
                    self._shutdown()
        finally:
            self._lock.release()

    def retire(self) -> None:
        """Shut the processes now lent down when the call returns them."""
        self._retire = True

    def close(self) -> None:
        """Shut the kept processes down; ones lent to a call now, when it returns them (a
        call suspended mid-chunk must not block its owner's cleanup)."""
        if not self._lock.acquire(blocking=False):
            self.retire()
            return
        try:
            if self._timer is not None:
                self._timer.cancel()
            self._shutdown()
        finally:
            self._lock.release()

    @property
    def alive(self) -> bool:
        """Whether decode processes are kept now."""
        return self._loader is not None

    def _idle(self) -> None:
        if self._lock.acquire(blocking=False):  # else lent again meanwhile
            try:
                self._shutdown()
            finally:
                self._lock.release()

    def _shutdown(self) -> None:
        loader, self._loader, self._key, self._retire = self._loader, None, None, False
        iterator = None if loader is None else getattr(loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()


@contextmanager
def lent(
    decoders: Decoders | None,
    key: tuple[object, ...],
    batches: list[list[Item]],
    dataset: Dataset[Any],
    workers: int,
    **options: Any,
) -> Iterator[DataLoader[Any]]:
    """A DataLoader of ``workers`` processes reading ``batches`` of ``dataset``: the ones
    ``decoders`` keeps, or ones of its own shut down once the last batch is out."""

    def make(sampler: _Batches, persistent: bool) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            persistent_workers=persistent,
            worker_init_fn=keep_heap,
            **options,
        )

    try:
        # each batch with the next its process is handed, to fetch that one's images early
        ahead = hinted(batches, workers)
        if decoders is None:
            yield make(_Batches(ahead), False)
            return
        with decoders.lend(key, make) as (loader, sampler):
            sampler.batches = ahead
            yield loader
    except PlannerError as exc:  # the chunk's error (a refused token): its own words
        raise _as_raised(exc) from exc


def _as_raised(exc: PlannerError) -> PlannerError:
    """A planner error raised in a decode process, with the message it was raised with: the
    DataLoader raises it here as a new one whose message is ``Caught ...`` and the process's
    traceback, ending ``module.Class: message``."""
    text = str(exc).rstrip("\n")
    head = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    last = text.rpartition("\n")[2]
    if not text.startswith("Caught ") or not last.startswith(head):
        return exc
    try:
        return type(exc)(last.removeprefix(head))
    except TypeError:  # a constructor of more arguments
        return exc


def keep_heap(_worker: int = 0) -> None:
    """Set in the scoring process and in each decode process (its ``worker_init_fn``): glibc's
    malloc keeps what a batch freed (up to ``KEPT_HEAP_BYTES``) for the next one, and serves
    blocks up to a quarter of that from it too, rather than mapping a batch's tensors and
    activations afresh and unmapping them after, every page faulted in again each batch (the
    first pass ran up to 1.30x faster for it, docs/benchmarks.md). No-op where the C library
    is not glibc."""
    heap_thresholds(KEPT_HEAP_BYTES // 4, KEPT_HEAP_BYTES)


def heap_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """glibc's malloc thresholds in this process (and the processes it forks from now on):
    blocks of ``mmap_bytes`` and more are mapped on their own, freed memory above
    ``trim_bytes`` at the top of the heap goes back to the system. False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, or no mallopt
        return False
    # an older glibc refuses an mmap threshold over 32 MB: then 32 MB
    if not mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_bytes)):
        mallopt(M_MMAP_THRESHOLD, ctypes.c_int(min(mmap_bytes, 32 * 2**20)))
    return bool(mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_bytes)))


@contextmanager
def feed(
    images: Images,
    batches: list[list[Item]],
    *,
    workers: int,
    target: torch.device,
    decoders: Decoders | None,
    key: tuple[object, ...],
) -> Iterator[Iterable[Batch]]:
    """``batches`` read and decoded to feed the forward pass of this process: in ``workers``
    decode processes, or with none on threads of this one."""
    if workers:
        options = {"collate_fn": as_is, "pin_memory": target.type == "cuda"}
        with lent(decoders, key, batches, Collated(images), workers, **options) as loader:
            yield loader
        return
    images.pool = ThreadPoolExecutor(in_process(images.fetchers), "planner-fetch")
    try:
        yield (collate(images.__getitems__(batch), images.cache) for batch in batches)
    finally:
        images.pool.shutdown(cancel_futures=True)
