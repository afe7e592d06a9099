"""The next batch's images fetched while a decode process works on this one.

A decode process reads its batch's images from a server (Label Studio, an allow-listed host),
then decodes them and, as a replica of the model on a CPU, runs the forward pass: while its
requests are out, its CPU waits. The DataLoader hands batches to its processes in turn (batch
``j`` to process ``j % workers``, the order torch's DataLoader keeps with ``in_order``), so
each batch can carry the one its process is handed next (:func:`hinted`), and the process
asks the server for those images before it works on this batch (:class:`Fetcher`), their
answers waiting in the sockets' buffers while it decodes and runs the forward pass. A hint
that proves wrong (the DataLoader handed out batches otherwise) costs the fetch, never a
result: a batch is only taken from the fetch that asked for exactly its images.

One thread a process does all its fetching, so its libcurl multi handle is never used from
two threads at once; the images are decoded on the process's own thread as they come.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from queue import SimpleQueue

from workers.images import ImageError, ImageSource

Arrival = tuple[int, bytes | ImageError]
"""A reference's index in its batch and its image's bytes, or why not."""
_Queue = SimpleQueue[Arrival | BaseException | None]
"""What a batch's fetch hands the decoding thread: arrivals, what it raised, None at its end."""


class Ahead(list[tuple[int, str, str | None]]):
    """A batch of items (see ``workers.batches.Item``) and ``ahead``: the references of the
    batch its decode process is handed next (empty for its last)."""

    ahead: tuple[str, ...] = ()


def hinted(
    batches: Sequence[list[tuple[int, str, str | None]]], workers: int
) -> list[list[tuple[int, str, str | None]]]:
    """``batches`` as a DataLoader of ``workers`` processes hands them out, each with the
    references of the batch handed next to the same process (``workers`` batches on)."""
    out: list[list[tuple[int, str, str | None]]] = []
    for j, batch in enumerate(batches):
        hinted_batch = Ahead(batch)
        if workers and j + workers < len(batches):
            hinted_batch.ahead = tuple(item[1] for item in batches[j + workers])
        out.append(hinted_batch)
    return out


class Fetcher:
    """This process's fetching thread for ``source``: one batch's references at a time,
    ``at_once`` requests under way, what arrives queued for the thread that decodes."""

    def __init__(self, source: ImageSource, at_once: int) -> None:
        self.source = source
        self.at_once = at_once
        self.pid = os.getpid()
        self._thread = ThreadPoolExecutor(1, "planner-ahead")
        self._pending: tuple[tuple[str, ...], _Queue] | None = None
        self.started = 0
        """Batches asked for so far (a test counts the ones a hint saved)."""

    def ask(self, references: Sequence[str]) -> None:
        """Ask for ``references``' images now, after the batch under way; a batch asked for
        earlier and not taken is dropped (its answers read to the end on the thread)."""
        self._pending = (tuple(references), self._start(references))

    def take(self, references: Sequence[str]) -> Iterator[Arrival]:
        """Each of ``references``' index and its image's bytes (or ``ImageError``) in the order
        they come: the batch asked for ahead when it is this one, else asked for now (before
        anything asked after this call). What ``read_many`` raises for the batch (a refused
        token) is raised by the iterator."""
        key = tuple(references)
        pending, self._pending = self._pending, None
        queue = pending[1] if pending is not None and pending[0] == key else self._start(key)
        return _drained(queue)

    def _start(self, references: Sequence[str]) -> _Queue:
        queue: _Queue = SimpleQueue()
        self.started += 1
        self._thread.submit(self._fetch, list(references), queue)
        return queue

    def _fetch(self, references: list[str], queue: _Queue) -> None:
        try:
            with closing(self.source.read_many(references, at_once=self.at_once)) as arriving:
                for got in arriving:
                    queue.put(got)
        except BaseException as exc:  # raised where the batch is read
            queue.put(exc)
        finally:
            queue.put(None)

    def close(self) -> None:
        """Stop taking batches; the one under way finishes on the thread."""
        self._pending = None
        self._thread.shutdown(wait=False, cancel_futures=True)


def _drained(queue: _Queue) -> Iterator[Arrival]:
    while (got := queue.get()) is not None:
        if isinstance(got, BaseException):
            raise got
        yield got
