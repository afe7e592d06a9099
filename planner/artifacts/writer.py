"""Writes an artifact version so that no reader ever sees part of one.

A version is written into a hidden temporary directory in the artifact folder (same
filesystem, so the rename below is atomic), every file fsynced, the directory renamed to
``vNNNN`` and fsynced into its parent, and only then ``LATEST`` replaced by an atomic rename.
A failure at any step leaves ``LATEST`` on the previous complete version and removes the
temporary directory. An exclusive ``flock`` on ``.lock`` serialises writers (daemon and
``planner emit`` at once) so versions are numbered without gaps or races.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.artifacts.content import SCHEMA_VERSION, Artifact
from planner.artifacts.layout import (
    DATA_FILE,
    LATEST_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    TMP_PREFIX,
    WEIGHTS_FILE,
    ArtifactError,
    next_version,
    sha256,
)

VERSION_MODE = 0o755
FILE_MODE = 0o644
"""A version's folder and ``LATEST`` as the files in a version are (``open`` with the usual
umask): the training job, often another user, reads them."""


@dataclass(frozen=True, slots=True)
class WrittenArtifact:
    """The version just written, its directory and the SHA-256 of its ``MANIFEST.json`` (which
    holds the checksum of every other file, so this one hash pins the whole version)."""

    version: str
    path: Path
    checksum: str


def write_artifact(folder: str | os.PathLike[str], artifact: Artifact) -> WrittenArtifact:
    """Writes ``artifact`` as the next version in ``folder`` and points ``LATEST`` at it."""
    root = Path(folder)
    _prepare(root)
    payload = _json(artifact)
    try:
        with _locked(root):
            return _publish(root, artifact, payload)
    except OSError as exc:
        raise ArtifactError(
            f"writing an artifact into {root} failed ({exc.strerror or exc}); the previous "
            f"version stays the latest. {fix_for_write(exc, 'the artifact folder')} and emit "
            "again"
        ) from exc


def _publish(root: Path, artifact: Artifact, payload: bytes) -> WrittenArtifact:
    """Write the version, name it, point ``LATEST`` at it; on any failure nothing of it is
    left: a version folder ``LATEST`` never named would look newest to a job listing them."""
    _drop_leftovers(root)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
    unannounced: Path | None = None
    try:
        # readable by the training job's user, as the files in it are (mkdtemp makes 0700)
        os.chmod(tmp, VERSION_MODE)
        _write_version(tmp, artifact, payload)
        checksum = sha256(tmp / MANIFEST_FILE)
        name = next_version(root)
        os.rename(tmp, root / name)
        unannounced = root / name
        _fsync_dir(root)
        replace_file(root / LATEST_FILE, f"{name}\n".encode())
        unannounced = None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if unannounced is not None:
            shutil.rmtree(unannounced, ignore_errors=True)
    return WrittenArtifact(version=name, path=root / name, checksum=checksum)


def _drop_leftovers(root: Path) -> None:
    """Remove what a writer killed outright (SIGKILL, power lost) left: under the lock no
    other writer is at work, so every temporary entry is such a leftover."""
    for entry in root.glob(f"{TMP_PREFIX}*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _json(artifact: Artifact) -> bytes:
    try:
        return json.dumps(artifact.data, indent=1, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"the artifact holds a value JSON cannot carry ({exc}); give ids and numbers as "
            "plain ints, floats and strings"
        ) from None


def fix_for_write(exc: OSError, folder: str) -> str:
    """What the person running the planner does about a failed write into ``folder`` (its
    name in the sentence: "the artifact folder"); the daily report's writer says it so too."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"Free disk space (or raise the disk quota) in {folder}"
    if exc.errno == errno.EFBIG:
        return "Raise the file size limit of the daemon's process (ulimit -f, LimitFSIZE=)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"Make {folder} writable (permissions, or remount it read-write)"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"Point {folder} at a folder (a file stands where a folder of its path must be)"
    return "Free disk space or fix permissions"


def _prepare(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(
            f"cannot create the artifact folder {root}: {exc.strerror or exc}; "
            "choose a writable folder for artifacts"
        ) from exc
    # os.access answers for the real user; root passes it anyway and fails on write below.
    if not os.access(root, os.W_OK | os.X_OK):
        raise ArtifactError(
            f"the artifact folder {root} is not writable by this user; "
            "fix its permissions (or remount it read-write) or choose another folder"
        )


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ArtifactError(
            f"cannot open the lock file in {root}: {exc.strerror or exc}; "
            "fix the folder's permissions"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _write_version(tmp: Path, artifact: Artifact, payload: bytes) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(artifact.image_weights, dtype=np.float64))
    _write_file(tmp / DATA_FILE, payload)
    _write_file(tmp / WEIGHTS_FILE, buffer.getvalue())
    files = {
        name: {"sha256": sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        for name in (DATA_FILE, WEIGHTS_FILE)
    }
    manifest = {"schema_version": SCHEMA_VERSION, "files": files}
    _write_file(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    _fsync_dir(tmp)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replace_file(path: Path, data: bytes) -> None:
    """Replaces ``path`` atomically (readable by all, fsynced with its folder): readers see the
    old content or the new, never a mix. The daily report's files are written so too."""
    handle, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        os.fchmod(handle, FILE_MODE)  # mkstemp makes 0600: the job reads it as another user
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(name):
            os.unlink(name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
