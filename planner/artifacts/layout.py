"""The artifact folder's layout, shared by the writer and the reader.

    <folder>/
        v0001/  artifact.json  image_weights.npy  MANIFEST.json
        v0002/  ...
        LATEST               "v0002": the newest complete version, replaced atomically
        .lock                held while a version is written (one writer at a time)
        .tmp-*/              a version being written; never read, removed on failure

``MANIFEST.json`` holds the schema version and the SHA-256 of every other file of the version.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from planner.errors import PlannerError

DATA_FILE = "artifact.json"
WEIGHTS_FILE = "image_weights.npy"
MANIFEST_FILE = "MANIFEST.json"
LATEST_FILE = "LATEST"
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
VERSION_PATTERN = re.compile(r"^v(\d{4,})$")


class ArtifactError(PlannerError):
    """An artifact folder that cannot be written, or an artifact that cannot be trusted.

    Not an ``OSError`` subclass: callers get one error that says what to do, the OS error it
    came from is chained as ``__cause__``.
    """


def version_name(number: int) -> str:
    return f"v{number:04d}"


def _numbered(folder: Path) -> list[tuple[int, str]]:
    if not folder.is_dir():
        return []
    return sorted(
        (int(match.group(1)), entry.name)
        for entry in folder.iterdir()
        if (match := VERSION_PATTERN.match(entry.name)) and entry.is_dir()
    )


def versions(folder: Path) -> list[str]:
    """Complete version directories in ``folder``, oldest first."""
    return [name for _, name in _numbered(folder)]


def next_version(folder: Path) -> str:
    """The name after the newest version (``v0001`` in an empty folder)."""
    found = _numbered(folder)
    return version_name(found[-1][0] + 1 if found else 1)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
