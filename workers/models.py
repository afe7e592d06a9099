"""Scoring models, three ways, each with a version recorded on every score.

* a TorchScript file or a ``torch.export`` program (``.pt2``) mapping an image batch
  ``(N, 3, H, W)`` to logits, to ``(logits, embeddings)``, or to a detection output (see
  ``workers.outputs``);
* ``module:function`` returning an ``nn.Module``, plus a state dict loaded with
  ``weights_only=True`` (no arbitrary objects are ever unpickled);
* the built-in bootstrap network (``workers.bootstrap``), trained on the labelled images.

A file's kind is read from its content, not its name: TorchScript archives, exported programs
and ``torch.save`` state dicts are all zip files, told apart by the entries inside.

A watched model folder hands over new versions: its newest settled file is the current model.
A file modified in the last ``SETTLE_S`` seconds is still being copied and is passed over, as
is one whose content is no model (a half-copied zip has no central directory); copy into the
folder under a temporary name without a model suffix and rename it, and it is never seen half
written. A state dict in the folder is loaded into the ``module:function`` network.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import logging
import threading
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.export.pt2_archive.constants import (
    AOTINDUCTOR_DIR,
    CONSTANTS_DIR,
    CUSTOM_OBJ_FILENAME_PREFIX,
    OPAQUE_OBJ_FILENAME_PREFIX,
)

from planner.errors import ConfigError
from workers.config import MODEL_SUFFIXES

SETTLE_S = 5.0
"""A folder file younger than this may still be being written; it waits for the next run."""

ModelKind = Literal["module", "torchscript", "export"]
FileKind = Literal["torchscript", "export", "state_dict"]
log = logging.getLogger("planner.workers")


@dataclass(frozen=True)
class ScoringModel:
    """A module in eval mode, the version its scores are stored under, and what it was
    loaded from (an exported program cannot switch its dropout on for MC passes)."""

    module: nn.Module
    version: str
    kind: ModelKind = "module"


def file_digest(path: Path) -> str:
    return _digest([path])


def _digest(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def file_kind(path: Path) -> FileKind | None:
    """What ``path`` holds, read from its content; ``None`` for anything else (a half-copied
    file, a corrupt archive, some other format)."""
    try:
        if not zipfile.is_zipfile(path):
            with path.open("rb") as handle:
                # torch.save's legacy format is a plain pickle; weights_only decides the rest
                return "state_dict" if handle.read(1) == b"\x80" else None
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if any(name.rsplit("/", 1)[-1] == "archive_format" for name in names):
        return "export"
    if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    if any(name.rsplit("/", 1)[-1] == "data.pkl" for name in names):
        return "state_dict"
    return None


def read_state_dict(path: Path, what: str, fix: str) -> dict[str, Any]:
    """The tensors of a ``torch.save`` file, ``weights_only=True``: a pickled object of any
    other type (one that would run code on load) is refused, never constructed."""
    try:
        state: dict[str, Any] = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"{what} {path} is not a plain state dict ({type(exc).__name__}); {fix}"
        ) from None
    return state


def load_model(spec: str, *, weights: Path | None = None) -> ScoringModel:
    """A TorchScript / export file or a ``module:function`` entry point (see the module)."""
    path = Path(spec)
    if path.suffix in MODEL_SUFFIXES:
        return _load_file(path)
    name, sep, attr = spec.partition(":")
    if not sep:
        raise ConfigError(
            f"workers.model = {spec!r}: give a .pt/.ts/.pt2 file, 'module:function' or 'bootstrap'"
        )
    try:
        imported = importlib.import_module(name)
        factory = getattr(imported, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"workers.model = {spec!r}: cannot import it ({exc})") from None
    module = factory()
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{spec} returned a {type(module).__name__}, not a torch nn.Module")
    sources = _source_files(imported, factory)
    if not sources:
        log.warning("%s has no source file to hash; its version is its name alone", spec)
    if weights is not None:
        state = read_state_dict(
            weights, "workers.weights", "save it with torch.save(model.state_dict(), path)"
        )
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{weights} does not fit {spec}: {first}") from None
    # the code and the weights together make the model: a change of either is a new version
    files = [*sources, *([weights] if weights is not None else [])]
    version = f"{attr}-{_digest(files)}" if files else attr
    return ScoringModel(_eval(module), version)


def _source_files(module: object, factory: object) -> list[Path]:
    """The entry point's module file and the file defining the factory (once each)."""
    found: list[Path] = []
    for candidate in (getattr(module, "__file__", None), _source_of(factory)):
        if candidate and Path(candidate).is_file() and Path(candidate) not in found:
            found.append(Path(candidate))
    return found


def _source_of(factory: object) -> str | None:
    try:
        return inspect.getsourcefile(factory)  # type: ignore[arg-type]
    except TypeError:
        return None


def _load_file(path: Path) -> ScoringModel:
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist; check workers.model")
    kind = file_kind(path)
    version = f"{path.stem}-{file_digest(path)}"
    try:
        if kind == "export":
            # an exported program is already in inference form and refuses .eval()
            return ScoringModel(_load_export(path), version, "export")
        if kind == "torchscript":
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript; teams still ship such files, so we read them
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            return ScoringModel(_eval(module), version, "torchscript")
    except ConfigError:
        raise
    except Exception as exc:
        # both loaders resolve only torch's own types: a pickled callable is refused here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"model file {path} cannot be loaded as a {kind} program ({first}); export the "
            "model again with torch.export.save or torch.jit.save"
        ) from None
    if kind == "state_dict":
        raise ConfigError(
            f"{path} holds a state dict, not a whole model: set workers.model = "
            "'module:function' (the network) and workers.weights to this file"
        )
    raise ConfigError(
        f"{path} is no TorchScript, torch.export or state dict file (half copied or corrupt?)"
    )


_UNSAFE_EXPORT_PARTS = (
    (f"/{AOTINDUCTOR_DIR}", "AOTInductor native code, which would run as it loads"),
    (f"/{CONSTANTS_DIR}{OPAQUE_OBJ_FILENAME_PREFIX}", "a pickled Python object"),
    (f"/{CONSTANTS_DIR}{CUSTOM_OBJ_FILENAME_PREFIX}", "a TorchBind object"),
)
_TENSORS_ONLY = threading.Lock()


def _load_export(path: Path) -> nn.Module:
    """The module of a ``torch.export`` archive holding a program and tensors, nothing more.

    ``torch.export.load`` trusts its file: it unpickles pickled weights and constants with
    ``weights_only=False``, falls back to that for the sample inputs every archive carries,
    ``pickle.loads`` opaque objects and loads AOTInductor's shared libraries. An archive with
    any of the last three entries is refused unread, and while it loads, ``torch.load`` reads
    tensors only (``weights_only=True`` whatever the caller asks: every ``torch.load`` of this
    package asks that anyway), so a pickle that would run code fails to load instead.
    """
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            inner = "/" + name.split("/", 1)[-1]  # past the archive's own top folder
            for part, what in _UNSAFE_EXPORT_PARTS:
                if inner.startswith(part):
                    raise ConfigError(
                        f"model file {path} holds {what} ({name}); export the model again "
                        "with torch.export.save from a plain nn.Module"
                    )
    load = torch.load
    with _TENSORS_ONLY:
        torch.load = functools.partial(_tensors_only, load)
        try:
            return torch.export.load(str(path)).module()
        finally:
            torch.load = load


def _tensors_only(load: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs["weights_only"] = True
    return load(*args, **kwargs)


@dataclass(frozen=True, slots=True)
class FolderChoice:
    """The model a watched folder makes current, and the files it passed over and why."""

    spec: str
    weights: Path | None
    skipped: tuple[str, ...] = ()


def choose_model(
    folder: Path | None,
    spec: str,
    weights: Path | None,
    *,
    now_s: float,
    settle_s: float = SETTLE_S,
) -> FolderChoice:
    """The newest settled model file of ``folder`` (else ``spec`` / ``weights``).

    ``now_s``: the clock, in ``time.time()`` seconds. A state dict becomes the weights of a
    ``module:function`` ``spec``; for any other ``spec`` it is passed over with a reason.
    """
    if folder is None or not folder.is_dir():
        return FolderChoice(spec, weights)
    files = [p for p in folder.iterdir() if p.suffix in MODEL_SUFFIXES and p.is_file()]
    skipped: list[str] = []
    for path in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True):
        age = now_s - path.stat().st_mtime
        if age < settle_s:
            log.info("%s changed %.1f s ago; still being written? used once settled", path, age)
            continue
        kind = file_kind(path)
        if kind is None:
            skipped.append(f"{path.name}: no TorchScript, torch.export or state dict content")
        elif kind == "state_dict" and ":" not in spec:
            skipped.append(
                f"{path.name}: a state dict needs workers.model = 'module:function', not {spec!r}"
            )
        elif kind == "state_dict":
            return FolderChoice(spec, path, tuple(skipped))
        else:
            return FolderChoice(str(path), None, tuple(skipped))
    return FolderChoice(spec, weights, tuple(skipped))


def _eval(module: nn.Module) -> nn.Module:
    module.eval()
    return module
