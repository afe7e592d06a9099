"""Reads an artifact version back, trusting nothing: schema version and checksums are verified."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from planner.artifacts.content import SCHEMA_VERSION
from planner.artifacts.layout import (
    DATA_FILE,
    LATEST_FILE,
    MANIFEST_FILE,
    VERSION_PATTERN,
    WEIGHTS_FILE,
    ArtifactError,
    sha256,
    versions,
)


@dataclass(frozen=True, slots=True)
class LoadedArtifact:
    """A verified artifact version: its JSON ``data`` and per-image weights ``(N,)``."""

    version: str
    path: Path
    data: Mapping[str, Any]
    image_weights: npt.NDArray[np.float64]

    @property
    def classes(self) -> tuple[str, ...]:
        """The class order every per-class list of the artifact follows."""
        return tuple(self.data["classes"])


def latest_version(folder: str | os.PathLike[str]) -> str:
    """The version ``LATEST`` names; an error naming the fix when there is none."""
    root = Path(folder)
    try:
        name = (root / LATEST_FILE).read_text().strip()
    except FileNotFoundError:
        raise ArtifactError(
            f"no artifacts in {root} (no {LATEST_FILE} file); run `planner emit` first"
        ) from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {root / LATEST_FILE}: {exc.strerror or exc}") from exc
    if not VERSION_PATTERN.match(name):
        raise ArtifactError(f"{root / LATEST_FILE} names {name!r}, not a version like v0001")
    return name


def list_versions(folder: str | os.PathLike[str]) -> list[str]:
    """Every complete version in ``folder``, oldest first."""
    return versions(Path(folder))


def read_artifact(folder: str | os.PathLike[str], version: str | None = None) -> LoadedArtifact:
    """Loads ``version`` (default: the latest) after checking its schema and checksums."""
    root = Path(folder)
    name = latest_version(root) if version is None else version
    if not VERSION_PATTERN.match(name):
        raise ArtifactError(f"{name!r} is not a version name like v0001")
    path = root / name
    manifest = _manifest(path)
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {DATA_FILE, WEIGHTS_FILE}:
        raise ArtifactError(f"{path / MANIFEST_FILE} does not list {DATA_FILE} and {WEIGHTS_FILE}")
    for file_name, entry in files.items():
        try:
            actual = sha256(path / file_name)
        except OSError as exc:
            raise ArtifactError(
                f"artifact {name} in {root} lacks {file_name} ({exc.strerror or exc}); "
                "emit a new version"
            ) from exc
        if actual != entry.get("sha256"):
            raise ArtifactError(
                f"checksum mismatch for {path / file_name}: the file changed after it was "
                "written (corrupted or edited); emit a new version"
            )
    data = json.loads((path / DATA_FILE).read_bytes())
    weights = np.load(io.BytesIO((path / WEIGHTS_FILE).read_bytes()), allow_pickle=False)
    return LoadedArtifact(
        version=name, path=path, data=data, image_weights=weights.astype(np.float64)
    )


def _manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        raise ArtifactError(
            f"{path} has no {MANIFEST_FILE}: not a complete artifact version"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path / MANIFEST_FILE}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path / MANIFEST_FILE} is not a JSON object")
    found = manifest.get("schema_version")
    if found != SCHEMA_VERSION:
        newer = isinstance(found, int) and found > SCHEMA_VERSION
        fix = "upgrade the planner package in the training job" if newer else "emit it again"
        raise ArtifactError(
            f"artifact {path.name} has schema version {found!r}; this planner reads version "
            f"{SCHEMA_VERSION}: {fix}"
        )
    return manifest
