"""Decoded pixels of images already read, kept on the worker's disk for the next model version.

Every new model version (a bootstrap retrain, a file dropped in the watched folder) rescores the
whole unlabeled pool. Without this cache each rescoring fetches every image from Label Studio
again and decodes it again, though neither the image nor the model's input size changed. With
it, a rescoring reads ``(size, size, 3)`` uint8 pixels, a few microseconds an image, and spends
its time in the forward pass; Label Studio serves each image once.

The entries live in a ``diskcache`` folder (SQLite index, process- and thread-safe, bounded:
the least recently stored entries go first once ``max_bytes`` is reached), one entry per image
reference and input size. A local file's key carries its modification time and size, so a file
replaced in place is decoded again; an image behind a Label Studio or http(s) URL is taken to
stay what it was (Label Studio names each upload uniquely). Delete the folder to drop them all.

Only raw bytes are ever stored, and an entry the cache would have to unpickle is refused: a
tampered index cannot make the worker run code. The cache is an optimisation: any error
reading or writing it (a full disk, a corrupt index, a folder deleted under a running worker)
turns it off for that run with a warning, and scoring goes on from the images themselves.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import diskcache
import numpy as np
import numpy.typing as npt

from workers.images import ImageSource

FORMAT = "p3"
"""Bumped whenever ``workers.images.decode`` would give other pixels for the same image (p2: an
MPO photo decoded at the DCT scale a JPEG is; p3: channels last)."""
BROKEN_NOTE = "pixel cache"
"""How the note of a cache turned off begins (its folder follows)."""
CACHE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout, ValueError)
log = logging.getLogger("planner.workers")


class _RawOnly(diskcache.Disk):  # type: ignore[misc]
    """A disk that never unpickles: an entry stored any other way than raw bytes is an error."""

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise ValueError("the pixel cache holds a pickled entry; it only ever stores bytes")
        return super().fetch(mode, filename, value, read)


class PixelCache:
    """``(size, size, 3)`` uint8 pixels by key (see :func:`pixel_key`), at most ``max_bytes``.

    Picklable: a DataLoader worker gets the folder and the bound and opens its own connection.
    ``broken`` holds the first error met; from then on the cache answers every read with a
    miss and stores nothing.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.broken: str | None = None
        self._cache: diskcache.Cache | None = None

    def __reduce__(self) -> tuple[object, ...]:
        return (PixelCache, (self.directory, self.max_bytes))

    def _open(self) -> diskcache.Cache:
        if self._cache is None:
            self._cache = diskcache.Cache(
                str(self.directory),
                size_limit=self.max_bytes,
                eviction_policy="least-recently-stored",  # a read writes nothing
                disk=_RawOnly,
            )
        return self._cache

    def get(self, key: str, size: int) -> npt.NDArray[np.uint8] | None:
        """The pixels stored under ``key``, or None (a miss, a wrong-sized entry, a fault)."""
        if self.broken is not None:
            return None
        try:
            data = self._open().get(key)
        except CACHE_ERRORS as exc:
            self._break(exc)
            return None
        if not isinstance(data, bytes) or len(data) != 3 * size * size:
            return None
        return np.frombuffer(data, dtype=np.uint8).reshape(size, size, 3)

    def put_many(self, rows: Sequence[tuple[str, npt.NDArray[np.uint8]]]) -> None:
        """Store ``(key, pixels)`` rows in one transaction (one index write, not one a row)."""
        if self.broken is not None or not rows:
            return
        try:
            cache = self._open()
            with cache.transact():
                for key, pixels in rows:
                    cache.set(key, np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
        except CACHE_ERRORS as exc:
            self._break(exc)

    def noted_in(self, warnings: Sequence[str]) -> bool:
        """Whether a copy of this cache (a decode process's) turned off, by its note."""
        return any(w.startswith(f"{BROKEN_NOTE} {self.directory} ") for w in warnings)

    def volume(self) -> int:
        """Bytes the folder holds now (index and entries)."""
        return int(self._open().volume())

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def _break(self, exc: BaseException) -> None:
        self.broken = (
            f"{BROKEN_NOTE} {self.directory} turned off for this run ({type(exc).__name__}: "
            f"{exc}); images are fetched and decoded again. Check the folder's disk and "
            "permissions, or delete the folder to start it afresh"
        )
        log.warning("%s", self.broken)
        self.close()


def pixel_key(source: ImageSource, reference: str, size: int) -> str | None:
    """The cache key of ``reference`` at input ``size``; None when it has none (a local file
    that cannot be stat'ed: reading it will say why)."""
    if not isinstance(reference, str) or not reference:
        return None
    parts = urlsplit(reference)
    head = f"{FORMAT}|{size}"
    if parts.scheme not in ("", "file", "http", "https"):
        return None  # ``read`` refuses it
    if parts.scheme in ("http", "https"):
        return f"{head}|{reference}"
    path = _local_path(source, parts.path, parts.query)
    if path is None:  # served by Label Studio: the same server and reference, the same image
        return f"{head}|{source.label_studio_url}|{reference}"
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    # the root is in the key: the same reference under another image root is another file
    return f"{head}|{source.image_root}|{reference}|{stat.st_mtime_ns}|{stat.st_size}"


def _local_path(source: ImageSource, path: str, query: str) -> str | None:
    """The file ``ImageSource.read`` would read for a reference, without resolving links (a
    key only; ``read`` still refuses a path outside the image root)."""
    if path.startswith("/data/local-files"):
        relative = (parse_qs(query).get("d") or [""])[0]
        if source.image_root is None or not relative:
            return None
        return os.path.join(source.image_root, relative)
    if path.startswith("/data/"):
        return None
    return path
