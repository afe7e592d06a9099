"""Batched scoring: read and decode images, forward under ``inference_mode``.

The forward pass runs with channels_last (the layout cuDNN's and oneDNN's convolutions prefer)
under the autocast dtype of ``precision`` (see :mod:`workers.devices`).

Images are read and decoded in DataLoader processes (``num_workers``; None: a CPU each but one
on a GPU, a CPU each on a CPU), each fetching a batch's images several at once on its own
thread (:meth:`ImageSource.read_many`), so that a Label Studio on another machine answers them
together rather than one round trip after another, and asking for the images of its next batch
before it works on this one (:mod:`workers.ahead`), so that they come while it does.
On a GPU they feed the forward pass of the scoring process. On a CPU with ``threads`` 0 and a
decode process for each CPU (the default), each decode process also runs the forward pass of
its own batches (the model forked into it, shared copy-on-write) on one torch thread, and
hands back only the scores: a replica of the model a CPU, each decoding one batch while
another runs forward, none waiting on the others. One thread a replica is what a small batch
uses well (a second CPU gave one forward pass on a batch of 16 only 1.2-1.8x on the machines
here), and a forward pass sharing the cores with separate decoders loses its threads to them
at every layer. Otherwise (``threads`` set, fewer decode processes than CPUs) the forward pass
runs in the scoring process, on ``threads`` or the CPUs the decoders leave, and they feed it.
The decode processes are handed a chunk in equal shares, as many each
(:func:`workers.batches.shares`): handed its batches, a chunk of fewer batches than processes
(the default 4 of 64 for a GPU's 15) left the rest idle, and 3 batches for 2 processes one
with twice the other's; where the processes feed one forward pass, their shares are joined
into batches of ``batch_size`` again (:func:`workers.batches.rebatched`), so a replica's pass
may be smaller than ``batch_size``, a GPU's never (2.0x the first pass of a chunk of one
batch on two CPUs, docs/benchmarks.md). On a CPU each process learns from its own forward
passes how many images a pass best takes, at most ``batch_size`` (:mod:`workers.passes`; on
the AMX machine passes of 16 ran the small CNN's first pass at the default batch of 64 1.15x). A
worker keeps its decode processes from one chunk to the next
(:class:`workers.decoders.Decoders`): starting them again for every chunk cost a 256-image
chunk on a CPU a sixth of its time.

An image that cannot be read or decoded becomes an ``unscorable`` entry with its reason; the
rest of the chunk is scored. What would fail every image alike (Label Studio refusing the
token) fails the chunk instead, with the message it was raised with in a decode process.
``iter_scores`` yields one batch at a time, so a caller can store each before the next is
computed.

With ``mc_passes`` T, T extra passes run with the dropout layers switched to training (see
:mod:`workers.dropout`), and BALD (``planner.core.acquisition.bald``) is computed from the
``(T, n, C)`` samples here, so only one number per item leaves the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import Dataset

from planner.core.acquisition import bald
from planner.quarantine import MODEL_OUTPUT_NOT_FINITE
from workers.batches import (
    FETCHES_PER_PROCESS,
    Batch,
    Images,
    Item,
    as_is,
    cached,
    channels_first,
    collate,
    cut,
    cut_each,
    rebatched,
    shares,
)
from workers.compiling import Compiler, unwrapped
from workers.decoders import Decoders, feed, keep_heap, lent
from workers.devices import (
    autocast_dtype,
    decode_workers,
    forward_threads,
    pick_device,
    replicas,
    torch_threads,
)
from workers.dropout import NO_SPREAD, mc_problem, mc_samples
from workers.images import ImageSource
from workers.models import ModelKind
from workers.outputs import Output, finite_rows, read_output
from workers.passes import PassSizes, pass_sizes
from workers.pixels import PixelCache

"""The reason an image is unscorable whose probabilities, embeddings or MC samples are not
all finite."""
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
    pass_size: int | None = None
    """The images a forward pass takes that the decode process which scored these learnt
    (:mod:`workers.passes`), once it has: the scoring process keeps it for the next."""
    pass_timings: tuple[tuple[int, int, float], ...] = ()
    """Before it has, the turns it timed since its last batch (``PassSizes.report``),
    which the scoring process adds up for the decode processes forked next."""


class _Scored(Dataset[Scores]):
    """``images`` scored where they are decoded: a decode process reads and decodes a batch,
    runs ``score`` on it (the model forked into the process) in passes of the size the
    process learns (``sizes``, looked up there: :mod:`workers.passes`) and hands back its
    ``Scores``, a pixel cache that failed in that process noted among their warnings."""

    def __init__(
        self,
        images: Images,
        score: Callable[..., Iterator[Scores]],
        sizes: Callable[[], PassSizes],
    ) -> None:
        self.images = images
        self.score = score
        self.sizes = sizes

    def __getitem__(self, item: Item) -> Scores:
        return self.__getitems__([item])

    def __getitems__(self, items: Sequence[Item]) -> Scores:
        # the batch notes the pixel cache once it failed here; the scores carry its notes
        batch = collate(self.images.__getitems__(items), self.images.cache)
        sizes = self.sizes()  # this process's, on its one thread
        # run to its end, so the forward pass's inference mode is left, not held suspended
        scores = merge(list(self.score(cut(batch, sizes.start), sizes=sizes)))
        return replace(scores, pass_size=sizes.chosen, pass_timings=sizes.report())

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("scoring in decode processes needs them forked: the model is not sent")


def _noted(
    loader: Iterable[Scores],
    notes: tuple[str, ...],
    cache: PixelCache | None,
    decoders: Decoders | None,
    learnt: Callable[..., PassSizes] | None = None,
) -> Iterator[Scores]:
    """The ``Scores`` of batches read in decode processes with this call's ``notes``; kept
    decode processes whose pixel cache turned off are retired (the next call's get a working
    one). The passes the replicas timed are added up in ``learnt()`` (on its one thread),
    which keeps a size from them all, or else the first a replica kept; the replicas forked
    next start from it."""
    for scores in loader:
        if learnt is not None and (scores.pass_size is not None or scores.pass_timings):
            sizes = learnt(threads=1)
            # every process's turns weighed together first: one replica's pick is its few
            # passes amid the others' work, whose noise put 8 over 16 in docs/benchmarks.md
            sizes.merge(scores.pass_timings, " from its decode processes' passes")
            if scores.pass_size is not None:
                sizes.settle(scores.pass_size)
            if sizes.chosen is not None:
                learnt = None  # kept: nothing more to hear this call
        if decoders is not None and cache is not None and cache.noted_in(scores.warnings):
            decoders.retire()
        yield replace(scores, warnings=tuple(dict.fromkeys((*notes, *scores.warnings))))


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
    fetches: int = FETCHES_PER_PROCESS,
) -> Generator[Scores, None, None]:
    """One ``Scores`` per batch of ``items`` (bad images of the batch included). The
    source's kept-alive connections of this process are closed when the last batch is out.

    With a ``cache``, the items whose pixels it holds are scored first, read in this process
    with every CPU free for the forward pass; the rest are then fetched and decoded (see the
    module on where), and their pixels stored for the next model version. With ``decoders``
    the decode processes are kept for the next call (see :class:`Decoders`); without, they
    are started for this call and shut down at its end. ``compiler`` decides with
    ``compile_mode`` whether the forward pass runs compiled (see :mod:`workers.compiling`);
    without one, this call's items alone count. ``fetches``: the images a decode process
    asks a server for at once (``workers.fetches_at_once``; twice that on this process's
    threads with no decode processes).
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
    # a CPU's forward passes take as many images as this process learns to be best
    learnt = partial(pass_sizes, module, image_size, dtype, batch_size)
    workers = decode_workers(num_workers, target)
    if num_workers and not workers:
        notes = (*notes, NO_DECODE_PROCESSES.format(num_workers))
    try:
        misses: list[Item] = [(task_id, reference, None) for task_id, reference in items]
        if cache is not None:
            misses = []
            hits = cached(items, source, image_size, cache, batch_size=batch_size, misses=misses)
            yield from _hits(run, hits, notes, learnt if cpu else None, threads)
            if cache.broken is not None:
                notes = (*notes, cache.broken)
        if not misses:
            return
        images = Images(source, image_size, cache, fetchers=fetches)
        # every decode process handed as many images, however few batches the chunk holds
        batches = shares(misses, batch_size, workers)
        if replicas(cpu, threads, workers):  # each decode process scores its own batches
            if compiled is not None:  # compiled here, once, for the replicas' one thread
                compiled = _warmed(module, compiled, compiler, dtype=dtype, size=image_size)
                run = partial(run, compiled=compiled)
                if compiled is None:
                    notes = (*notes, compiler.failed[module])
            key: tuple[object, ...] = ("replicas", module, passes, dtype, source, image_size)
            key += (cache, workers, compiled, fetches, batch_size, pass_sizes)
            scored = _Scored(images, partial(run, notes=()), learnt)
            options = {"collate_fn": as_is, "multiprocessing_context": "fork"}
            with lent(decoders, key, batches, scored, workers, **options) as loader:
                yield from _noted(loader, notes, cache, decoders, learnt)
            return
        key = ("feed", target, source, image_size, cache, workers, fetches)
        feeding = feed(images, batches, workers=workers, target=target, decoders=decoders, key=key)
        forward = torch_threads(forward_threads(threads, workers)) if cpu else nullcontext()
        with feeding as fed, forward:
            # decode processes whose pixel cache turned off are retired, as replicas are
            # joined straight into passes of the learnt size (on a GPU, batch_size): not into
            # whole batches copied together only to be cut again
            sizes = learnt() if cpu else None
            joined = rebatched(fed, sizes.start if sizes else batch_size, target)
            yield from _noted(run(joined, notes=notes, sizes=sizes), (), cache, decoders)
    finally:
        source.close()


def _hits(
    run: Callable[..., Iterator[Scores]],
    hits: Iterable[Batch],
    notes: tuple[str, ...],
    learnt: Callable[[], PassSizes] | None,
    threads: int,
) -> Iterator[Scores]:
    """The cached ``hits`` scored in this process: on a CPU (``learnt``) on every CPU it has,
    in passes of the size learnt for those threads; on a GPU in whole batches."""
    if learnt is None:
        yield from run(hits, notes=notes)
        return
    with torch_threads(forward_threads(threads, 0)):
        sizes = learnt()
        yield from run(cut_each(hits, sizes.start), notes=notes, sizes=sizes)


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
    blank = channels_first(torch.zeros((2, size, size, 3), dtype=torch.uint8))
    with torch_threads(1):
        for _ in _batches(
            module,
            [Batch([0, 1], blank, {}, {})],
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
    loader: Iterable[Batch],
    *,
    target: torch.device,
    dtype: torch.dtype | None,
    passes: int,
    notes: tuple[str, ...],
    compiled: nn.Module | None,
    compiler: Compiler,
    sizes: PassSizes | None = None,
) -> Iterator[Scores]:
    """``Scores`` of each of ``loader``'s batches in one forward pass, each pass timed for
    ``sizes`` (a CPU's: :mod:`workers.passes`)."""
    with torch.inference_mode():
        for batch_ids, batch, bad, retry, read_notes in loader:
            if read_notes:  # the pixel cache turned off where the batch was read
                notes = tuple(dict.fromkeys((*notes, *read_notes)))
            if batch is None:
                yield _empty(bad, retry, notes)
                continue
            started = time.perf_counter()
            x = batch.to(target, non_blocking=True).float().div_(255.0)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(target.type, dtype=dtype, enabled=dtype is not None):
                raw, failed = _forward(module, compiled, x, compiler)
                if failed is not None:
                    compiled, notes = None, (*notes, failed)
                out = read_output(raw, len(batch_ids), reduced=dtype is not None)
                samples = mc_samples(module, x, passes) if passes and not out.detection else None
            batch_notes = notes
            if passes and out.detection:
                batch_notes = (*notes, "MC-dropout passes are not run for detection outputs")
            elif passes and samples is None:
                batch_notes = (*notes, NO_SPREAD)
            mc = None if samples is None else samples.cpu().numpy()
            if sizes is not None:  # a CPU's: done when its output is
                sizes.timed(len(batch_ids), time.perf_counter() - started)
            yield _finite(batch_ids, out, mc, bad=bad, retry=retry, notes=batch_notes)


def _finite(
    batch_ids: list[int],
    out: Output,
    mc: npt.NDArray[np.float32] | None,
    *,
    bad: dict[int, str],
    retry: dict[int, str],
    notes: tuple[str, ...],
) -> Scores:
    """The batch's ``Scores``, its images whose output holds NaN or inf unscorable (before
    BALD, which would refuse them and fail the chunk)."""
    probs = out.probs.numpy()
    embeddings = None if out.embeddings is None else out.embeddings.numpy()
    keep = finite_rows(probs, embeddings, mc)
    if not keep.all():
        failed = [t for t, ok in zip(batch_ids, keep, strict=True) if not ok]
        bad = {**bad, **dict.fromkeys(failed, MODEL_OUTPUT_NOT_FINITE)}
        batch_ids = [t for t, ok in zip(batch_ids, keep, strict=True) if ok]
        probs = probs[keep]
        embeddings = None if embeddings is None else embeddings[keep]
        mc = None if mc is None else mc[:, keep]
    return Scores(
        task_ids=list(batch_ids),
        probs=probs,
        embeddings=embeddings,
        unscorable=bad,
        mc=mc,
        deferred=retry,
        bald=None if mc is None else bald(mc),
        warnings=notes,
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
