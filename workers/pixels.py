"""Decoded pixels of images already read, kept on the worker's disk for the next model version.

Every new model version (a bootstrap retrain, a file dropped in the watched folder) rescores the
whole unlabeled pool. Without this cache each rescoring fetches every image from Label Studio
again and decodes it again, though neither the image nor the model's input size changed. With
it, a rescoring reads ``(size, size, 3)`` uint8 pixels, a few microseconds an image, and spends
its time in the forward pass; Label Studio serves each image once.

The entries live in an LMDB environment in the folder (``lmdb``: one memory-mapped B-tree file,
safe across processes and threads, one writer at a time, readers never blocked), one entry per
image reference and input size, bounded: once ``max_bytes`` is reached the least recently
stored entries go first. A decode process stores a batch's pixels in 14 us of CPU an image,
16 us start to end, against 69 and 111 us in diskcache's SQLite index before: the first pass
of a pool pays it on every image (docs/benchmarks.md). Writes are not flushed to the disk,
so nothing waits on it; the files are dropped when the machine has booted since they were
written (a crash then may have torn them): a folder on a local disk, one machine's.

A local file's key carries its modification time and size, so a file replaced in place is
decoded again; an image behind a Label Studio or http(s) URL is taken to stay what it was
(Label Studio names each upload uniquely). Delete the folder to drop them all.

Only raw bytes are ever stored and read: nothing in the folder is unpickled, so a tampered
cache cannot make the worker run code. The cache is an optimisation: any error reading or
writing it (a full disk, a corrupt file, a folder deleted under a running worker) turns it off
for that run with a warning, and scoring goes on from the images themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import lmdb
import numpy as np
import numpy.typing as npt

from workers.images import ImageSource, reference_parts, uploaded
from workers.references import is_resolver

FORMAT = "p4"
"""Bumped whenever ``workers.decode.decode`` would give other pixels for the same image, or
the same image another key (p2: an MPO photo decoded at the DCT scale a JPEG is; p3: channels
last; p4: a key is the digest of its parts, see :func:`pixel_key`)."""
BROKEN_NOTE = "pixel cache"
"""How the note of a cache turned off begins (its folder follows)."""
CACHE_ERRORS = (OSError, lmdb.Error, ValueError)
MAP_HEADROOM = 64 * 2**20
"""What the memory map holds beyond twice ``max_bytes``: the B-tree's own pages, and pages
freed by one batch that the next reuses."""
_SEQ = struct.Struct(">Q")
"""An entry's store number, big-endian: the order table's keys sort by it."""
_BYTES, _NEXT = b"bytes", b"next"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
_LEFTOVERS = ("cache.db", "cache.db-wal", "cache.db-shm")
"""diskcache's index, which the folder held before: dropped on open with its files (the pixels
are stored again as the next pass reads them)."""
log = logging.getLogger("planner.workers")


class _Environments:
    """This process's open LMDB environments, one a folder, shared by the caches on it (LMDB
    refuses a second open of one in a process). One inherited from the parent by a fork is
    closed before the folder is opened again (``lmdb`` closes such a copy without touching the
    parent's)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[Path, tuple[int, lmdb.Environment, int]] = {}

    def forked(self) -> None:
        """In a child just forked: the lock anew (another thread may have held it)."""
        self.lock = threading.Lock()

    def acquire(self, folder: Path, map_size: int) -> lmdb.Environment:
        with self.lock:
            pid = os.getpid()
            known = self.open.get(folder)
            if known is not None and known[0] == pid:
                self.open[folder] = (pid, known[1], known[2] + 1)
                return known[1]
            if known is not None:  # the parent's, forked
                known[1].close()
            folder.mkdir(parents=True, exist_ok=True)
            _drop_leftovers(folder)
            boot = _boot_id()
            if boot is not None:
                _written_since(boot, folder)
            # unflushed where a reboot drops the files: a decode process then waits on no
            # flush (16 us an image stored, not 59)
            env = lmdb.open(
                str(folder), map_size=map_size, max_dbs=3, readahead=False,
                sync=boot is None, metasync=False,
            )  # fmt: skip
            env.reader_check()  # slots of readers killed since
            self.open[folder] = (pid, env, 1)
            return env

    def release(self, folder: Path, env: lmdb.Environment) -> None:
        with self.lock:
            known = self.open.get(folder)
            if known is None or known[1] is not env or known[0] != os.getpid():
                return
            if known[2] > 1:
                self.open[folder] = (known[0], env, known[2] - 1)
                return
            del self.open[folder]
            env.close()


_ENVIRONMENTS = _Environments()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ENVIRONMENTS.forked)


def _boot_id() -> str | None:
    """This boot's id (Linux), None where the system gives none."""
    try:
        return Path(BOOT_ID).read_text().strip() or None
    except OSError:
        return None


def _written_since(boot: str, folder: Path) -> None:
    """Drop the environment's files when they were written under another boot: stored
    without a flush, a system crash or power cut may have left them torn (a clean shutdown
    is taken as one too: the next pass stores the pixels again). A process crash loses
    nothing: the system still writes what it had."""
    import fcntl  # noqa: PLC0415 - Unix only, and only Linux gives a boot id

    with (folder / "boot.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # one process checks at a time; the others then agree
        mark = folder / "boot"
        with suppress(FileNotFoundError):
            if mark.read_text() == boot:
                return
        for name in ("data.mdb", "lock.mdb"):
            (folder / name).unlink(missing_ok=True)
        fresh = folder / f"boot.{os.getpid()}"
        fresh.write_text(boot)
        fresh.replace(mark)


def _drop_leftovers(folder: Path) -> None:
    """diskcache's index and the entries it kept as files (``ab/cd/*.val``, images over 32 KB
    of pixels), where the folder holds them."""
    if not (folder / _LEFTOVERS[0]).is_file():
        return
    for name in _LEFTOVERS:
        (folder / name).unlink(missing_ok=True)
    for value in folder.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"):
        value.unlink()
    for inner in sorted(folder.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]"), reverse=True):
        with suppress(OSError):  # not empty: something else's
            inner.rmdir()
            inner.parent.rmdir()
    log.info("pixel cache %s: dropped the files of an earlier format", folder)


def _footprint(value: int, page: int) -> int:
    """The bytes an entry of ``value`` bytes takes in pages of ``page`` bytes: whole pages (its
    pixels spill over to pages of their own, a header in the first), so the bound counts
    pages, not bytes."""
    return -(-(value + 16) // page) * page


class PixelCache:
    """``(size, size, 3)`` uint8 pixels by key (see :func:`pixel_key`), at most ``max_bytes``.

    Picklable: a DataLoader worker gets the folder and the bound and opens its own
    environment (a forked one too). ``broken`` holds the first error met; from then on the
    cache answers every read with a miss and stores nothing.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.broken: str | None = None
        self._env: lmdb.Environment | None = None
        self._pid = 0
        self._tables: tuple[lmdb._Database, lmdb._Database, lmdb._Database] | None = None
        self._page = 4096

    def __reduce__(self) -> tuple[object, ...]:
        return (PixelCache, (self.directory, self.max_bytes))

    def _open(self) -> tuple[lmdb.Environment, tuple[lmdb._Database, ...]]:
        if self._env is None or self._tables is None or self._pid != os.getpid():
            folder = self.directory.absolute()
            env = _ENVIRONMENTS.acquire(folder, 2 * self.max_bytes + MAP_HEADROOM)
            self._env, self._pid = env, os.getpid()
            with env.begin(write=True) as txn:
                tables = (b"pixels", b"order", b"meta")
                opened = [env.open_db(name, txn=txn) for name in tables]
            self._tables = (opened[0], opened[1], opened[2])
            self._page = int(env.stat()["psize"])  # the system's page: 4 KB, 16 or 64 on some
        return self._env, self._tables

    def get(self, key: str, size: int) -> npt.NDArray[np.uint8] | None:
        """The pixels stored under ``key``, or None (a miss, a wrong-sized entry, a fault)."""
        if self.broken is not None:
            return None
        try:
            env, (pixels, _, _) = self._open()
            with env.begin(db=pixels, buffers=True) as txn:
                value = txn.get(key.encode())
                if value is None or len(value) != _SEQ.size + 3 * size * size:
                    return None
                # copied out while the transaction holds the page
                return (
                    np.frombuffer(value, np.uint8, offset=_SEQ.size).reshape(size, size, 3).copy()
                )
        except CACHE_ERRORS as exc:
            self._break(exc)
            return None

    def put_many(self, rows: Sequence[tuple[str, npt.NDArray[np.uint8]]]) -> None:
        """Store ``(key, pixels)`` rows in one transaction, the oldest entries dropped past the
        bound."""
        if self.broken is not None or not rows:
            return
        try:
            env, (pixels, order, meta) = self._open()
            with env.begin(write=True, buffers=True) as txn:
                total = _number(txn.get(_BYTES, db=meta))
                seq = _number(txn.get(_NEXT, db=meta))
                for key, array in rows:
                    name = key.encode()
                    old = txn.get(name, db=pixels)
                    if old is not None:  # replaced: its place in the order goes too
                        total -= _footprint(len(old), self._page)
                        txn.delete(bytes(old[: _SEQ.size]), db=order)
                    value = _SEQ.pack(seq) + np.ascontiguousarray(array, np.uint8).tobytes()
                    txn.put(name, value, db=pixels)
                    txn.put(_SEQ.pack(seq), name, db=order)
                    total += _footprint(len(value), self._page)
                    seq += 1
                total = _evicted(txn, (pixels, order), total, self.max_bytes, self._page)
                txn.put(_BYTES, _SEQ.pack(total), db=meta)
                txn.put(_NEXT, _SEQ.pack(seq), db=meta)
        except CACHE_ERRORS as exc:
            self._break(exc)

    def noted_in(self, warnings: Sequence[str]) -> bool:
        """Whether a copy of this cache (a decode process's) turned off, by its note."""
        return any(w.startswith(f"{BROKEN_NOTE} {self.directory} ") for w in warnings)

    def volume(self) -> int:
        """Bytes the entries take (whole pages), what ``max_bytes`` bounds."""
        env, (_, _, meta) = self._open()
        with env.begin(db=meta) as txn:
            return _number(txn.get(_BYTES))

    def disk_bytes(self) -> int:
        """Bytes of the folder's data file in use (the entries, the B-tree and free pages)."""
        env, _ = self._open()
        return (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])

    def close(self) -> None:
        if self._env is not None and self._pid == os.getpid():
            _ENVIRONMENTS.release(self.directory.absolute(), self._env)
        self._env = None
        self._tables = None

    def _break(self, exc: BaseException) -> None:
        self.broken = (
            f"{BROKEN_NOTE} {self.directory} turned off for this run ({type(exc).__name__}: "
            f"{exc}); images are fetched and decoded again. Check the folder's disk and "
            "permissions, or delete the folder to start it afresh"
        )
        log.warning("%s", self.broken)
        self.close()


def _number(value: bytes | memoryview | None) -> int:
    return 0 if value is None else int(_SEQ.unpack(bytes(value))[0])


def _evicted(
    txn: lmdb.Transaction,
    tables: tuple[lmdb._Database, lmdb._Database],
    total: int,
    most: int,
    page: int,
) -> int:
    """The least recently stored entries dropped until ``total`` bytes are within ``most``
    (``tables``: the pixels and their order)."""
    pixels, order = tables
    if total <= most:
        return total
    cursor = txn.cursor(db=order)
    cursor.first()
    while total > most and cursor.key():  # an empty key: past the last entry
        name = bytes(cursor.value())
        old = txn.get(name, db=pixels)
        if old is not None:
            total -= _footprint(len(old), page)
            txn.delete(name, db=pixels)
        cursor.delete()  # and on to the next
    return max(total, 0)


def pixel_key(source: ImageSource, reference: str, size: int) -> str | None:
    """The cache key of ``reference`` at input ``size``: the SHA-256 of what tells its pixels
    apart (hex, 64 bytes), since LMDB takes keys of at most 511 bytes and a presigned URL alone
    is longer. None when it has none (a local file that cannot be stat'ed, a reference
    ``read`` refuses: reading it will say why)."""
    parts = _key_parts(source, reference, size)
    if parts is None:
        return None
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _key_parts(source: ImageSource, reference: str, size: int) -> list[object] | None:
    """What :func:`pixel_key` digests (a list: no reference can pass for another's parts)."""
    parts = reference_parts(reference)
    scheme = None if parts is None else parts.scheme
    head: list[object] = [FORMAT, size]
    if scheme not in ("", "file", "http", "https"):
        return None
    if scheme in ("http", "https"):
        host = (parts.hostname or "").lower() if parts is not None else ""
        # off the allow-list now: no cached pixels either (read refuses it, saying why)
        allowed = host in source.allowed_names()
        return [*head, "url", reference] if allowed else None
    path = source.local_file(reference)
    if (
        path is None
        and parts is not None
        and (parts.path.startswith("/data/") or is_resolver(parts))
    ):
        # served by Label Studio: the same server and reference, the same image
        return [*head, "label-studio", source.label_studio_url, reference]
    if path is None:  # a local path with no image root: ``read`` refuses it
        return None
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    # the root is in the key: the same reference under another image root is another file
    upload = parts is not None and uploaded(parts) is not None
    root = source.upload_root if upload else source.image_root
    return [*head, "file", str(root), reference, stat.st_mtime_ns, stat.st_size]
