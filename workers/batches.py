"""A chunk's images read and decoded into batches of pixels, in a decode process or in this one.

A batch is ``(n, 3, h, w)`` uint8 pixels, channels_last in memory (the layout the forward pass
runs in), with the reasons of the images that could not be read or decoded beside it: an
image's failure is its own, the rest of the batch is scored. Pixels a :class:`PixelCache`
holds are read from it; the others are read, decoded and stored in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import compress
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from workers.ahead import Fetcher
from workers.decode import decode
from workers.images import ImageError, ImageSource
from workers.pixels import PixelCache, pixel_key

FETCHES_PER_PROCESS = 4
"""Images a decoding process asks a server for at once, for one a round trip away (the
default of ``workers.fetches_at_once``)."""


def in_process(fetches: int) -> int:
    """Threads reading images with no decode processes (``num_workers`` 0): twice what a
    decode process keeps under way, as this one process reads for all."""
    return 2 * fetches


FETCHES_IN_PROCESS = in_process(FETCHES_PER_PROCESS)
"""The same, with no decode processes, by default."""
_T = TypeVar("_T")

Row = tuple[int, torch.Tensor | None, str, bool]
Item = tuple[int, str, str | None]
"""Task id, image reference, and the pixel cache's key for it, taken before the read (None:
not to be stored)."""


class Batch(NamedTuple):
    """A batch read: task ids, their ``(n, 3, h, w)`` uint8 pixels (channels_last in memory),
    unscorable and deferred tasks' reasons, and notes on its reading (the pixel cache turned
    off where it was read)."""

    ids: list[int]
    pixels: torch.Tensor | None
    unscorable: dict[int, str]
    deferred: dict[int, str]
    notes: tuple[str, ...] = ()


class Images(Dataset[Row]):
    """Images read and decoded, their pixels stored in ``cache``. Indexed by the items
    themselves (a DataLoader's batch sampler hands a decode process a batch of ``Item``), so
    decode processes kept between calls read whatever the next call asks.

    In a decode process (one CPU its own), images that come over the network (Label Studio,
    an allow-listed host) are fetched ``fetchers`` at once on one fetching thread of the
    process (libcurl's multi interface: threads each waiting on a request cost it 1.4 times
    the CPU an image), each decoded as it comes while the others are under way, and the
    images of the batch the process is handed next (a batch's ``ahead``, see
    :mod:`workers.ahead`) are asked for before this one is decoded and scored; local files are
    read one after another, for a thread an image costs more CPU than reading and decoding a
    small one (152 us an image at 64 px against 61 here). Given ``pool`` (this process's
    threads, no decode processes), images are read and decoded on its threads, which run on
    every CPU: the remote ones (every one with ``local_on_pool``) while this thread reads
    the local files.
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
        self._fetcher: Fetcher | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # to a DataLoader worker: everything but the pool, which is this process's; the
        # worker makes its own on first use, and it goes with the worker
        return (_rebuilt, (self.source, self.size, self.cache, self.fetchers))

    def _load(self, item: Item) -> npt.NDArray[np.uint8] | ImageError:
        try:
            return decode(self.source.read(item[1]), self.size)
        except ImageError as exc:
            return exc

    def __getitem__(self, item: Item) -> Row:
        return self.__getitems__([item])[0]

    def _loaded(self, items: Sequence[Item]) -> list[npt.NDArray[np.uint8] | ImageError]:
        """Each item's pixels or why not, in order (see the class on which go where)."""
        remote = [self.local_on_pool or self.source.remote(item[1]) for item in items]
        if sum(remote) < 2 or (self.pool is None and self.fetchers < 2):
            return [self._load(item) for item in items]
        if self.pool is not None:  # no decode processes: on this process's threads
            # submitted at once: the local files are read here while the threads wait
            far = iter(self.pool.map(self._load, compress(items, remote)))
            near = [
                None if on else self._load(item) for item, on in zip(items, remote, strict=True)
            ]
            return [next(far) if got is None else got for got in near]
        loaded: list[npt.NDArray[np.uint8] | ImageError | None] = [None] * len(items)
        fetcher = self._fetching()
        arriving = fetcher.take([item[1] for item in items])
        ahead = getattr(items, "ahead", ())
        if sum(map(self.source.remote, ahead)) >= 2:
            # asked for now: answered while this batch is decoded (and scored, in a replica)
            fetcher.ask(ahead)
        # each image decoded as it comes, while the transfers still under way go on
        for index, got in arriving:
            loaded[index] = got if isinstance(got, ImageError) else _decoded(got, self.size)
        return cast(list[npt.NDArray[np.uint8] | ImageError], loaded)

    def _fetching(self) -> Fetcher:
        """This process's fetching thread (a forked process starts its own)."""
        if self._fetcher is None or self._fetcher.pid != os.getpid():
            self._fetcher = Fetcher(self.source, self.fetchers)
        return self._fetcher

    def __getitems__(self, items: Sequence[Item]) -> list[Row]:
        # a batch at a time (the DataLoader asks so when this exists): the cache's index is
        # written once for the batch, not once per image
        rows: list[Row] = []
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


def _decoded(data: bytes, size: int) -> npt.NDArray[np.uint8] | ImageError:
    try:
        return decode(data, size)
    except ImageError as exc:
        return exc


def _rebuilt(source: ImageSource, size: int, cache: PixelCache | None, fetchers: int) -> Images:
    return Images(source, size, cache, fetchers=fetchers)


def cached(
    items: Sequence[tuple[int, str]],
    source: ImageSource,
    size: int,
    cache: PixelCache,
    *,
    batch_size: int,
    misses: list[Item],
) -> Iterator[Batch]:
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
            yield Batch(ids, channels_first(torch.from_numpy(np.stack(arrays))), {}, {})
            ids, arrays = [], []
    if ids:
        yield Batch(ids, channels_first(torch.from_numpy(np.stack(arrays))), {}, {})


def chunked(items: Sequence[_T], size: int) -> list[list[_T]]:
    """``items`` in lists of ``size`` (the last one shorter): a pool's chunks, a chunk's
    batches."""
    return [list(items[start : start + size]) for start in range(0, len(items), max(1, size))]


MIN_SHARE = 8
"""The fewest images a decode process is handed at once where a chunk's batches are split
among the processes (:func:`shares`)."""


def shares(items: Sequence[_T], batch_size: int, workers: int) -> list[list[_T]]:
    """``items`` (a chunk's images to read) as the decode processes are handed them: in
    batches of ``batch_size``, or where that would leave a process idle or with a batch more
    than another (a chunk of fewer batches than processes, 4 batches of 64 for a GPU's 15
    decode processes; 3 for 2), in ``workers`` times as many equal parts as it takes to hold
    ``batch_size`` each (none smaller than ``MIN_SHARE``), every process handed as many."""
    batches = chunked(items, batch_size)
    if workers < 2 or (len(batches) % workers == 0 and len(items) % batch_size == 0):
        return batches
    rounds = -(-len(items) // (workers * batch_size))
    parts = min(workers * rounds, max(1, len(items) // min(MIN_SHARE, batch_size)))
    if parts <= len(batches):
        return batches
    size, extra = divmod(len(items), parts)
    out: list[list[_T]] = []
    start = 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(list(items[start:end]))
        start = end
    return out


def rebatched(
    parts: Iterable[Batch], batch_size: int | Callable[[], int], device: torch.device
) -> Iterator[Batch]:
    """``parts`` (decode processes' shares of a chunk, in order) joined into batches of
    ``batch_size`` images for one forward pass (the last fewer; a callable: asked before
    each batch, once the one before is done with): pixels moved to ``device``
    part by part (from the pinned memory a part comes in, on a GPU) and joined there, each
    part's unscorable and deferred tasks and notes with the batch its images went to. A part
    that is a whole batch passes as it is."""
    held: list[torch.Tensor] = []
    ids: list[int] = []
    bad: dict[int, str] = {}
    retry: dict[int, str] = {}
    notes: dict[str, None] = {}
    size = batch_size if callable(batch_size) else lambda: batch_size
    want = size()
    for part in parts:
        if part.pixels is None and not held and not bad and not retry:
            yield part  # nothing of it to join
            continue
        bad.update(part.unscorable)
        retry.update(part.deferred)
        notes.update(dict.fromkeys(part.notes))
        if part.pixels is not None:
            held.append(part.pixels.to(device, non_blocking=True))
            ids.extend(part.ids)
        while len(ids) >= want:
            pixels = _joined(held)
            yield Batch(ids[:want], pixels[:want], bad, retry, tuple(notes))
            rest = pixels[want:]
            held, ids, bad, retry = ([rest] if len(rest) else []), ids[want:], {}, {}
            want = size()
    if ids or bad or retry:
        yield Batch(ids, _joined(held) if held else None, bad, retry, tuple(notes))


def cut(batch: Batch, most: int | Callable[[], int]) -> Iterator[Batch]:
    """``batch`` in batches of at most ``most`` images for forward passes of their own (a
    callable: asked before each, once the one before is done with), its unscorable and
    deferred tasks and notes with the first."""
    size = most if callable(most) else lambda: most
    if batch.pixels is None:
        yield batch
        return
    start, n = 0, len(batch.ids)
    while start < n:
        end = min(n, start + size())
        if start == 0 and end == n:
            yield batch
            return
        piece = Batch(batch.ids[start:end], batch.pixels[start:end], {}, {})
        yield batch._replace(ids=piece.ids, pixels=piece.pixels) if start == 0 else piece
        start = end


def cut_each(batches: Iterable[Batch], most: Callable[[], int]) -> Iterator[Batch]:
    """Each of ``batches`` in batches of at most ``most()`` images (see :func:`cut`)."""
    for batch in batches:
        yield from cut(batch, most)


def _joined(pixels: list[torch.Tensor]) -> torch.Tensor:
    """``(n, 3, h, w)`` channels_last batches as one (``cat`` keeps the layout they share)."""
    return pixels[0] if len(pixels) == 1 else torch.cat(pixels)


def read_pixels(
    items: Sequence[tuple[int, str]],
    source: ImageSource,
    size: int,
    cache: PixelCache | None = None,
    *,
    batch_size: int = 64,
    fetches: int = FETCHES_PER_PROCESS,
) -> Iterator[Batch]:
    """Batches of ``(task ids, (n, 3, size, size) uint8 pixels, unscorable, deferred)`` of
    ``items``, read in this process: the ones ``cache`` holds first, then the rest read
    ``in_process(fetches)`` at a time and stored in it (what
    :func:`workers.inference.iter_scores` does with no decode processes, for a caller that
    wants the pixels themselves)."""
    misses: list[Item] = [(task_id, reference, None) for task_id, reference in items]
    if cache is not None:
        misses = []
        yield from cached(items, source, size, cache, batch_size=batch_size, misses=misses)
    if not misses:
        return
    threads = in_process(fetches)
    with ThreadPoolExecutor(threads, "planner-fetch") as pool:
        images = Images(source, size, cache, fetchers=threads, pool=pool)
        for batch in chunked(misses, batch_size):
            yield collate(images.__getitems__(batch), cache)


def collate(rows: list[Row], cache: PixelCache | None = None) -> Batch:
    """``rows`` as one batch, noting ``cache``'s failure once it turned off in this process
    (a decode process's copy fails there alone)."""
    good = [(task_id, tensor) for task_id, tensor, _, _ in rows if tensor is not None]
    bad = {
        task_id: reason for task_id, tensor, reason, later in rows if tensor is None and not later
    }
    retry = {task_id: reason for task_id, tensor, reason, later in rows if tensor is None and later}
    batch = channels_first(torch.stack([tensor for _, tensor in good])) if good else None
    notes = () if cache is None or cache.broken is None else (cache.broken,)
    return Batch([task_id for task_id, _ in good], batch, bad, retry, notes)


class Collated(Dataset[Batch]):
    """``images`` read a batch at a time and collated where they are read (a DataLoader's
    ``collate_fn`` then passes each on as it is), the batch noting the pixel cache of that
    process once it turned off."""

    def __init__(self, images: Images) -> None:
        self.images = images

    def __getitem__(self, item: Item) -> Batch:
        return self.__getitems__([item])

    def __getitems__(self, items: Sequence[Item]) -> Batch:
        return collate(self.images.__getitems__(items), self.images.cache)


def as_is(batch: Any) -> Any:
    """A DataLoader's ``collate_fn`` for a dataset that returns its batches collated."""
    return batch


def channels_first(images: torch.Tensor) -> torch.Tensor:
    """``(n, h, w, 3)`` images as the ``(n, 3, h, w)`` batch a model takes, a view of the
    same memory: channels_last, the layout the forward pass runs in."""
    return images.permute(0, 3, 1, 2)
