"""What a worker needs, as small frozen values built once per entry point."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from planner.errors import ConfigError
from planner.settings import COMPILE_MODES, PRECISIONS, WorkerLimitError, worker_time_limits

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".pt2")
"""File names ``workers.model`` and a model folder take as model files."""
SECRET_FIELDS = ("store_password", "label_studio_token")
OWN_FIELDS = (*SECRET_FIELDS, "pixel_cache_dir", "pixel_cache_mb", "bootstrap_dir")
"""``WorkerConfig`` fields a task message never carries: each worker has its own (the
sender's folders are paths on another machine, or in another container)."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Where to read images and write scores, which model, how to batch (one scoring job).

    ``broker_url`` None means the embedded default: chunks are scored in this process.
    ``model``: a TorchScript file, ``module:function`` (returns an ``nn.Module``) with
    ``weights`` (a state dict, loaded with ``weights_only=True``), or ``"bootstrap"``.
    ``bootstrap_dir``: where trained bootstrap networks are kept, so every worker sharing the
    folder scores with the same one (a Celery worker's own setting); ``retrain_min_new_labels``:
    labels that must arrive before the bootstrap network is trained again.
    """

    store_url: str
    classes: tuple[str, ...]
    model: str = "bootstrap"
    weights: Path | None = None
    model_dir: Path | None = None
    broker_url: str | None = None
    # secrets stay out of repr: a traceback with locals or a "%r" log would print them
    store_password: str | None = field(default=None, repr=False)
    label_studio_url: str | None = None
    label_studio_token: str | None = field(default=None, repr=False)
    image_root: Path | None = None
    upload_root: Path | None = None
    allowed_hosts: tuple[str, ...] = ()
    image_size: int = 32
    batch_size: int = 64
    chunk_size: int = 1024
    write_rows: int = 512
    num_workers: int | None = None
    fetches_at_once: int = 4
    mc_passes: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: str = "off"
    threads: int = 0
    queue: str = "score"
    bootstrap_dir: Path | None = None
    pixel_cache_dir: Path | None = None
    pixel_cache_mb: int = 0
    retrain_min_new_labels: int = 50
    max_retries: int = 5
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    time_limit_s: int = 3 * 3600
    visibility_timeout_s: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("the worker needs the project's classes; none were given")
        for name in ("image_size", "batch_size", "chunk_size", "write_rows", "fetches_at_once"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"workers.{name} = {getattr(self, name)}: must be positive")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"workers.num_workers = {self.num_workers}: must be 0 or more")
        for name in (
            "mc_passes",
            "retrain_min_new_labels",
            "max_retries",
            "threads",
            "pixel_cache_mb",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"workers.{name} = {getattr(self, name)}: must be 0 or more")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"workers.precision = {self.precision!r}: use one of {', '.join(PRECISIONS)}"
            )
        if self.compile not in COMPILE_MODES:
            raise ConfigError(
                f"workers.compile = {self.compile!r}: use one of {', '.join(COMPILE_MODES)}"
            )
        if self.mc_passes == 1:
            raise ConfigError("workers.mc_passes = 1 estimates nothing; use 0 (off) or 2 or more")
        try:
            self._limits()
        except WorkerLimitError as exc:
            raise ConfigError(str(exc)) from None

    def _limits(self) -> tuple[int, int, int]:
        return worker_time_limits(
            self.time_limit_s,
            None,
            self.visibility_timeout_s,
            retry_backoff_max_s=self.retry_backoff_max_s,
        )

    @property
    def stall_s(self) -> float:
        """How long a Celery pool may go without a chunk finishing before the sender gives
        up: a chunk whose worker died becomes visible again after the visibility timeout,
        then runs up to the hard limit, after a retry's longest backoff."""
        hard, _, visibility = self._limits()
        return float(visibility + hard) + self.retry_backoff_max_s

    def with_own(self, own: WorkerOwn) -> WorkerConfig:
        """This job with the worker's own secrets, pixel cache and bootstrap folder (a task
        message carries none of them).

        A secret goes only where the worker's own settings send it: a message naming another
        Label Studio or another store (whoever can write to the broker can write one) is
        refused rather than sent the token or the password.
        """
        if (
            own.label_studio_token
            and self.label_studio_url is not None
            and not same_origin(self.label_studio_url, own.label_studio_url)
        ):
            raise ConfigError(
                f"this chunk asks for images from Label Studio at {self.label_studio_url!r}, "
                f"but this worker's own label_studio.url is {own.label_studio_url!r} and its "
                "token goes only there; give the daemon and the workers the same "
                "label_studio.url"
            )
        if is_entry_point(self.model) and not entry_point_allowed(self.model, own.entry_points):
            raise ConfigError(
                f"this chunk names the model {self.model!r}, code this worker's own settings "
                "do not name (workers.model, workers.entry_points): it is not imported; add it "
                "to the worker's workers.entry_points, or give the daemon and the workers the "
                "same workers.model"
            )
        if own.store_password and not same_store(self.store_url, own.store_url):
            raise ConfigError(
                f"this chunk writes scores to the store {_without_password(self.store_url)!r}, "
                f"but this worker's own store.url is {_without_password(own.store_url)!r} and "
                "its password goes only there; give the daemon and the workers the same "
                "store.url"
            )
        return replace(
            self,
            store_password=own.store_password,
            # a chunk naming no Label Studio reads no image from one: no token to hold
            label_studio_token=own.label_studio_token if self.label_studio_url else None,
            pixel_cache_dir=own.pixel_cache_dir,
            pixel_cache_mb=own.pixel_cache_mb,
            bootstrap_dir=own.bootstrap_dir,
        )


@dataclass(frozen=True, slots=True)
class WorkerOwn:
    """What a worker reads from its own settings or environment, never from a task message:
    the secrets (task messages sit in Redis, readable by anyone who can read the broker), its
    pixel cache (a folder on its own disk; 0 MB = off) and its bootstrap folder (None: the
    bootstrap network is kept in memory only)."""

    store_password: str | None = field(default=None, repr=False)
    label_studio_token: str | None = field(default=None, repr=False)
    pixel_cache_dir: Path | None = None
    pixel_cache_mb: int = 0
    bootstrap_dir: Path | None = None
    label_studio_url: str | None = None
    """Where the token may be sent (the worker's own ``label_studio.url``)."""
    store_url: str | None = None
    """Where the password may be sent (the worker's own ``store.url``)."""
    entry_points: tuple[str, ...] = ()
    """The ``module:function`` models a chunk may name (``module:*``: any of the module's):
    the worker's own ``workers.model`` and ``workers.entry_points``. A task message could
    otherwise have the worker import and call any function installed on it."""


def chunk_items(items: Iterable[Sequence[Any]]) -> list[tuple[int, str]]:
    """``(task id, image reference)`` pairs as the scoring reads them: a null reference (a
    task without an image) stays empty, so reading says "no image reference" (``str`` made it
    a file called "None")."""
    return [
        (int(task_id), "" if reference is None else str(reference)) for task_id, reference in items
    ]


def is_entry_point(spec: str) -> bool:
    """Whether ``workers.model = spec`` names code to import (``module:function``), not a
    model file or the bootstrap network."""
    return spec != "bootstrap" and Path(spec).suffix not in MODEL_SUFFIXES and ":" in spec


def entry_point_allowed(spec: str, allowed: tuple[str, ...]) -> bool:
    module = spec.partition(":")[0]
    return spec in allowed or f"{module}:*" in allowed


def same_origin(url: str | None, own: str | None) -> bool:
    """Whether ``url`` is on ``own``'s server: scheme, host and port (a default port spelled
    out or not) and ``own``'s path prefix, if it has one (Label Studio under a sub-path)."""
    if url is None or own is None:
        return False
    try:
        a, b = urlsplit(url), urlsplit(own)
        ports = (a.port or _DEFAULT_PORTS.get(a.scheme), b.port or _DEFAULT_PORTS.get(b.scheme))
    except ValueError:
        return False
    return (
        a.scheme.lower() == b.scheme.lower()
        and (a.hostname or "") == (b.hostname or "")
        and ports[0] == ports[1]
        and (a.path.rstrip("/") + "/").startswith(b.path.rstrip("/") + "/")
    )


def same_store(url: str, own: str | None) -> bool:
    """Whether ``url`` names ``own``'s database, the password aside."""
    return own is not None and _without_password(url) == _without_password(own)


def _without_password(url: str | None) -> str:
    if url is None:
        return "(none)"
    try:
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except ArgumentError:
        return url


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """How the Celery app talks to Redis and treats a failing chunk (one worker process).

    ``soft_time_limit_s`` and ``visibility_timeout_s`` left ``None`` are derived from
    ``time_limit_s`` (see ``planner.settings.worker_time_limits``); the visibility timeout
    must exceed twice the hard limit plus ``retry_backoff_max_s``, or Redis hands a chunk a
    worker still holds to a second worker.
    """

    broker_url: str = DEFAULT_BROKER
    time_limit_s: int = 3 * 3600
    soft_time_limit_s: int | None = None
    visibility_timeout_s: int | None = None
    max_retries: int = 5
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    concurrency: int = 1

    def __post_init__(self) -> None:
        if not self.broker_url.startswith(("redis://", "rediss://", "memory://")):
            raise ConfigError(
                f"workers.broker_url = {self.broker_url!r}: give a redis://host:6379/0 URL"
            )
        try:
            _, soft, visibility = worker_time_limits(
                self.time_limit_s,
                self.soft_time_limit_s,
                self.visibility_timeout_s,
                retry_backoff_max_s=self.retry_backoff_max_s,
            )
        except WorkerLimitError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "soft_time_limit_s", soft)
        object.__setattr__(self, "visibility_timeout_s", visibility)
        if self.concurrency <= 0 or self.max_retries < 0:
            raise ConfigError("workers: concurrency must be positive, max_retries 0 or more")
        if self.retry_backoff_s <= 0 or self.retry_backoff_max_s <= 0:
            raise ConfigError("workers.retry_backoff_s and retry_backoff_max_s must be positive")

    @property
    def visibility_s(self) -> int:
        """The derived visibility timeout (never ``None`` after construction)."""
        return int(self.visibility_timeout_s or 0)

    @property
    def soft_limit_s(self) -> int:
        return int(self.soft_time_limit_s or 0)
