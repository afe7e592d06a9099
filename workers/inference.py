"""Batched scoring: read and decode images, forward under ``inference_mode``.

The forward pass runs with channels_last (the layout cuDNN's and oneDNN's convolutions prefer)
under the autocast dtype of ``precision``: with ``"auto"``, bf16 on a GPU (fp16 where bf16 is
missing) and on a CPU that multiplies bf16 natively (Intel AMX tiles, or AVX-512 BF16 as on AMD
Zen 4: 2-4 times float32's speed), float32 on other CPUs.

Images are read and decoded in DataLoader processes (``num_workers``; None: a CPU each but one
on a GPU, a CPU each on a CPU), each reading a batch's images on a few threads, so that a Label
Studio on another machine answers several at once rather than one round trip after another.
On a GPU they feed the forward pass of the scoring process. On a CPU with ``threads`` 0 and a
decode process for each CPU (the default), each decode process also runs the forward pass of
its own batches (the model forked into it, shared copy-on-write) on one torch thread, and
hands back only the scores: a replica of the model a CPU, each decoding one batch while
another runs forward, none waiting on the others. One thread a replica is what a small batch
uses well (a second CPU gave one forward pass on a batch of 16 only 1.2-1.8x on the machines
here), and a forward pass sharing the cores with separate decoders loses its threads to them
at every layer. Otherwise (``threads`` set, fewer decode processes than CPUs) the forward pass
runs in the scoring process, on ``threads`` or the CPUs the decoders leave, and they feed it.
A worker keeps its decode processes from one chunk to the next (:class:`Decoders`): starting
them again for every chunk cost a 256-image chunk on a CPU a sixth of its time.

An image that cannot be read or decoded becomes an ``unscorable`` entry with its reason; the
rest of the chunk is scored. What would fail every image alike (Label Studio refusing the
token) fails the chunk instead, with the message it was raised with in a decode process.
``iter_scores`` yields one batch at a time, so a caller can store each before the next is
computed.

MC dropout: with ``mc_passes`` T, every dropout layer (``nn.Dropout``, ``Dropout1d/2d/3d``,
``AlphaDropout``, ``FeatureAlphaDropout``, or their TorchScript counterparts) is switched to
training for T extra passes, and BALD (``planner.core.acquisition.bald``) is computed from the
``(T, n, C)`` samples here, so only one number per item leaves the worker. A ``torch.export``
program was traced in eval mode and has no dropout left to switch on; such a model, or one
without dropout layers, gets no BALD and a warning saying why.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import compress
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from planner.core.acquisition import bald
from planner.errors import PlannerError
from planner.settings import PRECISIONS
from workers.compiling import Compiler, unwrapped
from workers.images import ImageError, ImageSource, decode
from workers.models import ModelKind
from workers.outputs import logits_of, read_output
from workers.pixels import PixelCache, pixel_key

DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_DROPOUT_NAMES = frozenset(t.__name__ for t in DROPOUT_TYPES)
MAX_DECODE_WORKERS = 16
FETCHES_PER_PROCESS = 4
"""Images a decoding process reads at once (threads), for a server a round trip away."""
FETCHES_IN_PROCESS = 8
"""The same, with no decode processes (``num_workers`` 0)."""
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (malloc.h)."""
KEPT_HEAP_BYTES = 256 * 2**20
"""Freed memory the scoring process and each decode process keep for the next batch rather
than return to the system (see :func:`keep_heap`)."""
_T = TypeVar("_T")
IDLE_DECODERS_S = 60.0
"""How long decode processes kept between calls (:class:`Decoders`) wait for the next."""
NO_DECODE_PROCESSES = (
    "workers.num_workers = {} not used: a daemonic process (a Celery prefork child, or the "
    "daemon's own scoring) may not start decode processes, so images were decoded on threads "
    "of the scoring process"
)


@dataclass(frozen=True)
class Scores:
    """Rows for the scored ``task_ids``; ``mc``: ``(T, n, c)`` and ``bald: (n,)`` when
    MC-dropout passes ran; ``detection``: ``probs`` are per-class presence from boxes."""

    task_ids: list[int]
    probs: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32] | None
    unscorable: dict[int, str] = field(default_factory=dict)
    mc: npt.NDArray[np.float32] | None = None
    deferred: dict[int, str] = field(default_factory=dict)
    """Tasks whose image could not be fetched for now (timeout, 5xx): neither scored nor
    recorded as unscorable, so a retry or the next cycle tries them again."""
    bald: npt.NDArray[np.float64] | None = None
    warnings: tuple[str, ...] = ()
    detection: bool = False


_Row = tuple[int, torch.Tensor | None, str, bool]
_Item = tuple[int, str, str | None]
"""Task id, image reference, and the pixel cache's key for it, taken before the read (None:
not to be stored)."""
_Batch = tuple[list[int], torch.Tensor | None, dict[int, str], dict[int, str]]
"""Task ids, their ``(n, 3, h, w)`` uint8 pixels (channels_last in memory), unscorable and
deferred tasks' reasons."""


class _Images(Dataset[_Row]):
    """Images read and decoded, their pixels stored in ``cache``. Indexed by the items
    themselves (a DataLoader's batch sampler hands a decode process a batch of ``_Item``), so
    decode processes kept between calls read whatever the next call asks.

    In a decode process (one CPU its own), images that come over the network (Label Studio,
    an allow-listed host) are read and decoded on ``fetchers`` threads at once, each waiting
    on its server; local files one after another on the process's own thread, for a thread
    an image costs more CPU than reading and decoding a small one (152 us an image at 64 px
    against 61 here). Given ``pool`` (this process's threads, no decode processes), every
    image is read and decoded on its threads, which run on every CPU.
    """

    def __init__(
        self,
        source: ImageSource,
        size: int,
        cache: PixelCache | None = None,
        *,
        fetchers: int = 1,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.source = source
        self.size = size
        self.cache = cache
        self.fetchers = fetchers
        self.pool = pool
        self.local_on_pool = pool is not None

    def __reduce__(self) -> tuple[object, ...]:
        # to a DataLoader worker: everything but the pool, which is this process's; the
        # worker makes its own on first use, and it goes with the worker
        return (_rebuilt, (self.source, self.size, self.cache, self.fetchers))

    def _load(self, item: _Item) -> npt.NDArray[np.uint8] | ImageError:
        try:
            return decode(self.source.read(item[1]), self.size)
        except ImageError as exc:
            return exc

    def __getitem__(self, item: _Item) -> _Row:
        return self.__getitems__([item])[0]

    def _loaded(self, items: Sequence[_Item]) -> list[npt.NDArray[np.uint8] | ImageError]:
        """Each item's pixels or why not, in order (see the class on which go on threads)."""
        threaded = [self.local_on_pool or self.source.remote(item[1]) for item in items]
        if sum(threaded) < 2 or (self.pool is None and self.fetchers < 2):
            return [self._load(item) for item in items]
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.fetchers, "planner-fetch")
        # submitted at once: the local files are read here while the threads wait
        far = iter(self.pool.map(self._load, compress(items, threaded)))
        near = [None if on else self._load(item) for item, on in zip(items, threaded, strict=True)]
        return [next(far) if got is None else got for got in near]

    def __getitems__(self, items: Sequence[_Item]) -> list[_Row]:
        # a batch at a time (the DataLoader asks so when this exists): the cache's index is
        # written once for the batch, not once per image
        rows: list[_Row] = []
        fresh: list[tuple[str, npt.NDArray[np.uint8]]] = []
        for (task_id, _, key), array in zip(items, self._loaded(items), strict=True):
            if isinstance(array, ImageError):
                rows.append((task_id, None, str(array), array.transient))
                continue
            rows.append((task_id, torch.from_numpy(array), "", False))
            if key is not None:
                fresh.append((key, array))
        if self.cache is not None:
            self.cache.put_many(fresh)
        return rows


class _Scored(Dataset[Scores]):
    """``images`` scored where they are decoded: a decode process reads and decodes a batch,
    runs ``score`` on it (the model forked into the process) and hands back its ``Scores``,
    a pixel cache that failed in that process noted among their warnings."""

    def __init__(self, images: _Images, score: Callable[[Iterable[_Batch]], Iterator[Scores]]):
        self.images = images
        self.score = score

    def __getitem__(self, item: _Item) -> Scores:
        return self.__getitems__([item])

    def __getitems__(self, items: Sequence[_Item]) -> Scores:
        # run to its end, so the forward pass's inference mode is left, not held suspended
        [scores] = list(self.score([_collate(self.images.__getitems__(items))]))
        cache = self.images.cache
        if cache is not None and cache.broken is not None and cache.broken not in scores.warnings:
            scores = replace(scores, warnings=(*scores.warnings, cache.broken))
        return scores

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("scoring in decode processes needs them forked: the model is not sent")


class _Batches(Sampler[list[_Item]]):
    """A DataLoader's batch sampler: the batches of the call now reading through it (set
    before each pass, so decode processes kept between calls get the next call's)."""

    def __init__(self, batches: list[list[_Item]] | None = None) -> None:
        super().__init__()
        self.batches = batches or []

    def __iter__(self) -> Iterator[list[_Item]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Decoders:
    """Decode processes kept from one :func:`iter_scores` call to the next, as a worker
    scores one chunk after another: starting them (forking, each process's first batch)
    cost a 256-image chunk on a CPU a sixth of its time (docs/benchmarks.md), and more with
    a GPU's many decode processes.

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
def _lent(
    decoders: Decoders | None,
    key: tuple[object, ...],
    batches: list[list[_Item]],
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
        if decoders is None:
            yield make(_Batches(batches), False)
            return
        with decoders.lend(key, make) as (loader, sampler):
            sampler.batches = batches
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


def _noted(
    loader: Iterable[Scores],
    notes: tuple[str, ...],
    cache: PixelCache | None,
    decoders: Decoders | None,
) -> Iterator[Scores]:
    """The replicas' ``Scores`` with this call's ``notes``; kept replicas whose pixel cache
    turned off are retired (the next call's get a working one)."""
    for scores in loader:
        if decoders is not None and cache is not None and cache.noted_in(scores.warnings):
            decoders.retire()
        yield replace(scores, warnings=tuple(dict.fromkeys((*notes, *scores.warnings))))


def _as_is(scores: Any) -> Scores:
    """The collate step of scored batches: ``_Scored`` already made the batch's ``Scores``
    (typed ``Any``: the DataLoader declares a collate function of a list of samples)."""
    return cast(Scores, scores)


def replicas(cpu: bool, threads: int, num_workers: int) -> bool:
    """Whether the decode processes run the forward pass too (see the module): on a CPU,
    ``threads`` 0 and a decode process for every CPU, forked with the model in them (not
    possible on macOS or Windows). Each replica runs on one torch thread: a process forked
    from one whose OpenMP threads have run must not start its own (GNU OpenMP deadlocks)."""
    fork = "fork" in multiprocessing.get_all_start_methods()
    return cpu and not threads and fork and num_workers >= usable_cpus()


def keep_heap(_worker: int = 0) -> None:
    """Set in the scoring process and in each decode process (its ``worker_init_fn``): glibc's
    malloc keeps what a batch freed (up to ``KEPT_HEAP_BYTES``) for the next one, and serves
    blocks up to a quarter of that from it too, rather than mapping a batch's tensors and
    activations afresh and unmapping them after, every page faulted in again each batch (the
    first pass ran 1.21-1.40x faster for it, docs/benchmarks.md). No-op where the C library
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


def _rebuilt(source: ImageSource, size: int, cache: PixelCache | None, fetchers: int) -> _Images:
    return _Images(source, size, cache, fetchers=fetchers)


def _cached(
    items: Sequence[tuple[int, str]],
    source: ImageSource,
    size: int,
    cache: PixelCache,
    *,
    batch_size: int,
    misses: list[_Item],
) -> Iterator[_Batch]:
    """Batches of the items whose pixels ``cache`` holds; the others are appended to
    ``misses``, in order, each with the key its pixels are to be stored under."""
    ids: list[int] = []
    arrays: list[npt.NDArray[np.uint8]] = []
    for task_id, reference in items:
        key = pixel_key(source, reference, size)
        pixels = None if key is None else cache.get(key, size)
        if pixels is None:
            misses.append((task_id, reference, key))
            continue
        ids.append(task_id)
        arrays.append(pixels)
        if len(ids) == batch_size:
            yield ids, _channels_first(torch.from_numpy(np.stack(arrays))), {}, {}
            ids, arrays = [], []
    if ids:
        yield ids, _channels_first(torch.from_numpy(np.stack(arrays))), {}, {}


def chunked(items: Sequence[_T], size: int) -> list[list[_T]]:
    """``items`` in lists of ``size`` (the last one shorter): a pool's chunks, a chunk's
    batches."""
    return [list(items[start : start + size]) for start in range(0, len(items), max(1, size))]


def read_pixels(
    items: Sequence[tuple[int, str]],
    source: ImageSource,
    size: int,
    cache: PixelCache | None = None,
    *,
    batch_size: int = 64,
) -> Iterator[_Batch]:
    """Batches of ``(task ids, (n, 3, size, size) uint8 pixels, unscorable, deferred)`` of
    ``items``, read in this process: the ones ``cache`` holds first, then the rest read
    ``FETCHES_IN_PROCESS`` at a time and stored in it (what :func:`iter_scores` does with no
    decode processes, for a caller that wants the pixels themselves)."""
    misses: list[_Item] = [(task_id, reference, None) for task_id, reference in items]
    if cache is not None:
        misses = []
        yield from _cached(items, source, size, cache, batch_size=batch_size, misses=misses)
    if not misses:
        return
    with ThreadPoolExecutor(FETCHES_IN_PROCESS, "planner-fetch") as pool:
        images = _Images(source, size, cache, fetchers=FETCHES_IN_PROCESS, pool=pool)
        for batch in chunked(misses, batch_size):
            yield _collate(images.__getitems__(batch))


def _collate(rows: list[_Row]) -> _Batch:
    good = [(task_id, tensor) for task_id, tensor, _, _ in rows if tensor is not None]
    bad = {
        task_id: reason for task_id, tensor, reason, later in rows if tensor is None and not later
    }
    retry = {task_id: reason for task_id, tensor, reason, later in rows if tensor is None and later}
    batch = _channels_first(torch.stack([tensor for _, tensor in good])) if good else None
    return [task_id for task_id, _ in good], batch, bad, retry


def _channels_first(images: torch.Tensor) -> torch.Tensor:
    """``(n, h, w, 3)`` images as the ``(n, 3, h, w)`` batch a model takes, a view of the
    same memory: channels_last, the layout the forward pass runs in."""
    return images.permute(0, 3, 1, 2)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container's limit narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def allow_decode_processes() -> None:
    """Let this process start decode processes though it was started as a daemon (a Celery
    prefork child, the daemon's scoring child), which ``multiprocessing`` forbids because a
    daemon's children would outlive it: a DataLoader process watches its parent and ends
    when it ends. Left as it is where the flag cannot be changed (then images are decoded on
    threads, see ``decode_workers``)."""
    process = multiprocessing.current_process()
    if process.daemon:
        with suppress(AssertionError):  # "process has already started": not ours to change
            process.daemon = False


def decode_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader decode processes: ``num_workers``, or with None one for each CPU on a CPU
    (the forward pass shares them, see the module) and one for each CPU but one on a GPU
    (that one drives it); at most ``MAX_DECODE_WORKERS``. None in a daemonic process (a
    Celery prefork child, the daemon's scoring child), which may not start any: there the
    scoring process reads and decodes on threads."""
    if multiprocessing.current_process().daemon:
        return 0
    if num_workers is not None:
        return num_workers
    spare = usable_cpus() - (device.type != "cpu")
    return max(0, min(MAX_DECODE_WORKERS, spare))


def forward_threads(threads: int, num_workers: int) -> int:
    """torch's intra-op threads for a CPU pass: ``threads``, or with 0 the usable CPUs less
    one for each decoding worker (at least 1)."""
    return threads if threads > 0 else max(1, usable_cpus() - num_workers)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: Intel AMX tiles or AVX-512 BF16 (without
    either, oneDNN emulates bf16, slower than float32)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of the forward pass on ``device``; None runs it in float32.

    ``"auto"``: bf16 on a GPU that has it, else fp16; bf16 on a CPU with AMX or AVX-512 BF16;
    float32 on any other CPU (bf16 without hardware support is emulated, slower than float32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return None if precision == "float32" else getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def dropout_layers(module: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``module``, eager or TorchScript (by their original class)."""
    return [
        m
        for m in module.modules()
        if isinstance(m, DROPOUT_TYPES) or getattr(m, "original_name", None) in _DROPOUT_NAMES
    ]


def mc_problem(module: nn.Module, kind: ModelKind = "module") -> str | None:
    """Why MC-dropout passes are impossible for ``module``, or None when they work."""
    if kind == "export":
        return (
            "workers.mc_passes ignored: a torch.export (.pt2) program is traced in eval mode, "
            "its dropout is gone, so MC-dropout passes are impossible and no BALD is stored; "
            "ship a TorchScript file or a module:function model for BALD"
        )
    if not dropout_layers(module):
        frozen = " (a frozen TorchScript file inlines them)" if kind == "torchscript" else ""
        return (
            f"workers.mc_passes ignored: the model has no dropout layers{frozen}, so "
            "MC-dropout passes would all agree and no BALD is stored"
        )
    return None


def score_items(
    module: nn.Module, items: Sequence[tuple[int, str]], source: ImageSource, **options: Any
) -> Scores:
    """Score ``items`` (task id, image reference) with ``module``, all batches together;
    ``options`` as for :func:`iter_scores`."""
    return merge(list(iter_scores(module, items, source, **options)))


def iter_scores(
    module: nn.Module,
    items: Sequence[tuple[int, str]],
    source: ImageSource,
    *,
    kind: ModelKind = "module",
    image_size: int = 32,
    batch_size: int = 64,
    num_workers: int | None = None,
    mc_passes: int = 0,
    device: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    cache: PixelCache | None = None,
    decoders: Decoders | None = None,
    compile_mode: str = "off",
    compiler: Compiler | None = None,
) -> Generator[Scores, None, None]:
    """One ``Scores`` per batch of ``items`` (bad images of the batch included). The
    source's kept-alive connections of this process are closed when the last batch is out.

    With a ``cache``, the items whose pixels it holds are scored first, read in this process
    with every CPU free for the forward pass; the rest are then fetched and decoded (see the
    module on where), and their pixels stored for the next model version. With ``decoders``
    the decode processes are kept for the next call (see :class:`Decoders`); without, they
    are started for this call and shut down at its end. ``compiler`` decides with
    ``compile_mode`` whether the forward pass runs compiled (see :mod:`workers.compiling`);
    without one, this call's items alone count.
    """
    keep_heap()
    target = pick_device(device)
    dtype = autocast_dtype(target, precision)
    module = module.to(target).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    problem = mc_problem(module, kind) if mc_passes else None
    notes = (problem,) if problem else ()
    passes = 0 if problem else mc_passes
    compiler = compiler or Compiler()
    compiled = compiler.forward(module, kind, len(items), compile_mode)
    run = partial(
        _batches, module, target=target, dtype=dtype, passes=passes, compiled=compiled,
        compiler=compiler,
    )  # fmt: skip
    cpu = target.type == "cpu"
    workers = decode_workers(num_workers, target)
    if num_workers and not workers:
        notes = (*notes, NO_DECODE_PROCESSES.format(num_workers))
    try:
        misses: list[_Item] = [(task_id, reference, None) for task_id, reference in items]
        if cache is not None:
            misses = []
            hits = _cached(items, source, image_size, cache, batch_size=batch_size, misses=misses)
            with torch_threads(threads or usable_cpus()) if cpu else nullcontext():
                yield from run(hits, notes=notes)
            if cache.broken is not None:
                notes = (*notes, cache.broken)
        if not misses:
            return
        images = _Images(source, image_size, cache, fetchers=FETCHES_PER_PROCESS)
        batches = chunked(misses, batch_size)
        if replicas(cpu, threads, workers):  # each decode process scores its own batches
            if compiled is not None:  # compiled here, once, for the replicas' one thread
                compiled = _warmed(module, compiled, compiler, dtype=dtype, size=image_size)
                run = partial(run, compiled=compiled)
                if compiled is None:
                    notes = (*notes, compiler.failed[module])
            key: tuple[object, ...] = ("replicas", module, passes, dtype, source, image_size)
            key += (cache, workers, compiled)
            scored = _Scored(images, partial(run, notes=()))
            options = {"collate_fn": _as_is, "multiprocessing_context": "fork"}
            with _lent(decoders, key, batches, scored, workers, **options) as loader:
                yield from _noted(loader, notes, cache, decoders)
            return
        key = ("feed", target, source, image_size, cache, workers)
        feeding = _fed(images, batches, workers=workers, target=target, decoders=decoders, key=key)
        forward = torch_threads(forward_threads(threads, workers)) if cpu else nullcontext()
        with feeding as fed, forward:
            yield from run(fed, notes=notes)
    finally:
        source.close()


@contextmanager
def _fed(
    images: _Images,
    batches: list[list[_Item]],
    *,
    workers: int,
    target: torch.device,
    decoders: Decoders | None,
    key: tuple[object, ...],
) -> Iterator[Iterable[_Batch]]:
    """``batches`` read and decoded to feed the forward pass of this process: in ``workers``
    decode processes, or with none on threads of this one."""
    if workers:
        options = {"collate_fn": _collate, "pin_memory": target.type == "cuda"}
        with _lent(decoders, key, batches, images, workers, **options) as loader:
            yield loader
        return
    images.pool = ThreadPoolExecutor(FETCHES_IN_PROCESS, "planner-fetch")
    try:
        yield (_collate(images.__getitems__(batch)) for batch in batches)
    finally:
        images.pool.shutdown(cancel_futures=True)


def _warmed(
    module: nn.Module,
    compiled: nn.Module,
    compiler: Compiler,
    *,
    dtype: torch.dtype | None,
    size: int,
) -> nn.Module | None:
    """``compiled`` after a first batch on one torch thread, as the CPU replicas run it
    (torch compiles for a thread count): forked into them compiled, not compiled again in
    each; None when it could not be compiled (here, or on the cached items before)."""
    blank = _channels_first(torch.zeros((2, size, size, 3), dtype=torch.uint8))
    with torch_threads(1):
        for _ in _batches(
            module,
            [([0, 1], blank, {}, {})],
            target=torch.device("cpu"),
            dtype=dtype,
            passes=0,
            notes=(),
            compiled=compiled,
            compiler=compiler,
        ):
            pass
    return None if module in compiler.failed else compiled


def _forward(
    module: nn.Module, compiled: nn.Module | None, x: torch.Tensor, compiler: Compiler
) -> tuple[object, str | None]:
    """``module``'s output for ``x``, from ``compiled`` where given (a batch of one runs
    eagerly, see :mod:`workers.compiling`), and the warning when it failed to compile."""
    if compiled is None or len(x) < 2 or module in compiler.failed:
        return module(x), None
    try:
        return compiled(x), None
    except Exception as exc:
        # imported here: a second of start-up for every process that imports this module
        from torch._dynamo.exc import TorchDynamoException  # noqa: PLC0415

        cause = unwrapped(exc)
        if cause is not exc:  # a time limit, a signal, memory: handled as uncompiled
            raise cause from exc
        if not isinstance(exc, TorchDynamoException):  # the model's own error as it ran
            raise
        out = module(x)  # a fault of the model itself that tracing hit raises here
        return out, compiler.fail(module, exc)


def _batches(
    module: nn.Module,
    loader: Iterable[_Batch],
    *,
    target: torch.device,
    dtype: torch.dtype | None,
    passes: int,
    notes: tuple[str, ...],
    compiled: nn.Module | None,
    compiler: Compiler,
) -> Iterator[Scores]:
    with torch.inference_mode():
        for batch_ids, batch, bad, retry in loader:
            if batch is None:
                yield _empty(bad, retry, notes)
                continue
            x = batch.to(target, non_blocking=True).float().div_(255.0)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(target.type, dtype=dtype, enabled=dtype is not None):
                raw, failed = _forward(module, compiled, x, compiler)
                if failed is not None:
                    compiled, notes = None, (*notes, failed)
                out = read_output(raw, len(batch_ids), reduced=dtype is not None)
                samples = _mc_passes(module, x, passes) if passes and not out.detection else None
            batch_notes = notes
            if passes and out.detection:
                batch_notes = (*notes, "MC-dropout passes are not run for detection outputs")
            mc = None if samples is None else samples.cpu().numpy()
            yield Scores(
                task_ids=list(batch_ids),
                probs=out.probs.numpy(),
                embeddings=None if out.embeddings is None else out.embeddings.numpy(),
                unscorable=bad,
                mc=mc,
                deferred=retry,
                bald=None if mc is None else bald(mc),
                warnings=batch_notes,
                detection=out.detection,
            )


def _empty(bad: dict[int, str], retry: dict[int, str], notes: tuple[str, ...]) -> Scores:
    return Scores([], np.zeros((0, 0), np.float32), None, bad, None, retry, warnings=notes)


def merge(parts: Sequence[Scores]) -> Scores:
    """The batches of one run as one ``Scores``."""
    scored = [p for p in parts if p.task_ids]
    n_classes = scored[0].probs.shape[1] if scored else 0

    def joined(name: str) -> npt.NDArray[np.float32] | None:
        arrays = [getattr(p, name) for p in scored]
        if not arrays or any(a is None for a in arrays):
            return None
        out: npt.NDArray[np.float32] = np.concatenate(arrays, axis=1 if name == "mc" else 0)
        return out

    notes = dict.fromkeys(note for p in parts for note in p.warnings)
    bald_values = joined("bald")
    return Scores(
        task_ids=[i for p in scored for i in p.task_ids],
        probs=np.concatenate([p.probs for p in scored])
        if scored
        else np.zeros((0, n_classes), np.float32),
        embeddings=joined("embeddings"),
        unscorable={k: v for p in parts for k, v in p.unscorable.items()},
        mc=joined("mc"),
        deferred={k: v for p in parts for k, v in p.deferred.items()},
        bald=None if bald_values is None else bald_values.astype(np.float64),
        warnings=tuple(notes),
        detection=any(p.detection for p in scored),
    )


def _mc_passes(module: nn.Module, x: torch.Tensor, passes: int) -> torch.Tensor:
    """``(T, n, c)`` softmax outputs with only the dropout layers switched to training."""
    dropouts = dropout_layers(module)
    for layer in dropouts:
        layer.train()
    try:
        return torch.stack(
            [torch.softmax(logits_of(module(x)).float(), dim=1) for _ in range(passes)]
        )
    finally:
        for layer in dropouts:
            layer.eval()
