"""The scoring workers' section, and the chunk time limits it shares with the Celery app."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeInt, ValidationInfo, field_validator

from planner.settings.base import Section

Precision = Literal["auto", "float32", "bfloat16", "float16"]
PRECISIONS: tuple[Precision, ...] = ("auto", "float32", "bfloat16", "float16")
CompileMode = Literal["auto", "on", "off"]
COMPILE_MODES: tuple[CompileMode, ...] = ("auto", "on", "off")
BROKER_SCHEMES = ("redis://", "rediss://")
"""What ``workers.broker_url`` may start with: the Celery broker and the daemon's lease."""
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
_DEFAULT_BACKOFF_MAX_S = 300.0


class WorkerLimitError(ValueError):
    """Contradicting time limits; ``key`` is the setting to change, ``detail`` says why."""

    def __init__(self, key: str, value: int, detail: str) -> None:
        super().__init__(f"workers.{key} = {value}: {detail}")
        self.key = key
        self.detail = detail


def worker_time_limits(
    time_limit_s: int,
    soft_time_limit_s: int | None,
    visibility_timeout_s: int | None,
    *,
    retry_backoff_max_s: float,
) -> tuple[int, int, int]:
    """``(hard, soft, visibility)`` seconds of a scoring chunk, the unset ones derived.

    The soft limit defaults to 60 s (a tenth for short limits) before the hard one. Redis
    hands an unacknowledged chunk to a second worker once the broker's visibility timeout
    expires, while the first may still hold it; and a worker holds a chunk unacknowledged
    from the moment it receives it: through a retry's countdown (up to
    ``retry_backoff_max_s``), while another chunk runs in its process (up to the hard limit),
    then through its own run (the hard limit again). So the visibility timeout must exceed
    ``2 x hard + retry_backoff_max_s``; it defaults to that plus a tenth of the hard limit
    (at least 60 s). ``WorkerLimitError`` names the keys when they contradict each other.
    """
    if time_limit_s < 2:
        raise WorkerLimitError("time_limit_s", time_limit_s, "give at least 2 seconds")
    soft = soft_time_limit_s
    if soft is None:
        soft = time_limit_s - max(1, min(60, time_limit_s // 10))
    if not 0 < soft < time_limit_s:
        raise WorkerLimitError(
            "soft_time_limit_s",
            soft,
            f"must be positive and below workers.time_limit_s = {time_limit_s}",
        )
    held = 2 * time_limit_s + math.ceil(retry_backoff_max_s)
    visibility = visibility_timeout_s
    if visibility is None:
        visibility = held + max(60, time_limit_s // 10)
    if visibility <= held:
        raise WorkerLimitError(
            "visibility_timeout_s",
            visibility,
            f"must exceed {held} s, twice workers.time_limit_s = {time_limit_s} plus "
            f"workers.retry_backoff_max_s = {retry_backoff_max_s:g}: a worker holds a chunk "
            "that long unacknowledged (a retry's wait, another chunk's run, its own), and "
            "Redis would hand it to a second worker meanwhile",
        )
    return time_limit_s, soft, visibility


class WorkerSettings(Section):
    """Scoring workers: where jobs come from, which model, how to read images."""

    broker_url: str | None = Field(
        default=None,
        description="Redis URL of the Celery broker (redis:// or rediss://); unset or empty = "
        "score in-process.",
    )
    model: str = Field(
        default="bootstrap",
        description="A .pt/.ts/.pt2 file, 'module:function', or 'bootstrap'.",
    )
    weights: Path | None = Field(default=None, description="State dict for 'module:function'.")
    entry_points: list[str] = Field(
        default_factory=list,
        description="Other 'module:function' (or 'module:*') a worker may run for a chunk.",
    )
    model_dir: Path | None = Field(default=None, description="Watched folder of model files.")
    bootstrap_dir: Path | None = Field(
        default=None, description="Trained bootstrap networks; unset = <artifacts.dir>/bootstrap."
    )
    retrain_min_new_labels: int = Field(
        default=50, ge=0, description="New labels before the bootstrap network is retrained."
    )
    image_root: Path | None = Field(
        default=None,
        description="Local copy of the images, or Label Studio's local storage document root: "
        "/data/local-files/ images are read from it instead of through the server.",
    )
    upload_root: Path | None = Field(
        default=None,
        description="Label Studio's upload folder (<its data dir>/media/upload), mounted or "
        "copied: /data/upload/ images are read from it instead of through the server.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list, description="The only http(s) hosts images may come from."
    )
    image_size: int = Field(default=32, gt=0, le=4096, description="Model input size.")
    batch_size: int = Field(
        default=64,
        gt=0,
        description="Images per forward pass (at most where a CPU's decode processes run "
        "it: a chunk of fewer batches than processes is shared among them all, and each "
        "process learns from its first passes how many images a pass best takes).",
    )
    chunk_size: int = Field(
        default=1024,
        gt=0,
        description="Tasks per Celery job (each also a look-up of what is scored already and "
        "the decode processes waiting between jobs: smaller jobs spread a small pool over more "
        "workers, larger ones waste less between them).",
    )
    write_rows: int = Field(
        default=512,
        gt=0,
        description="Scores a chunk holds before writing them in one transaction (or after "
        "10 s, and before a failing chunk fails): 1 writes every batch as it comes.",
    )
    num_workers: NonNegativeInt | Literal["auto"] = Field(
        default="auto",
        description="DataLoader decode processes; auto = a CPU each on a CPU, a CPU each but one "
        "on a GPU (at most 16).",
    )
    fetches_at_once: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Images a decode process asks Label Studio (or an allowed host) for at "
        "once; a worker asks up to this times its decode processes.",
    )
    mc_passes: int = Field(default=0, ge=0, description="MC-dropout passes (BALD); 0 = off.")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")
    precision: Precision = Field(
        default="auto",
        description="Forward-pass dtype: auto (bf16 on a GPU or a bf16 CPU), float32, bfloat16, "
        "float16.",
    )
    compile: CompileMode = Field(
        default="off",
        description="torch.compile the forward pass: on = before a model's first batch; auto = "
        "once a worker process has been asked to score 65,536 images with it; off.",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="torch threads of a CPU forward pass in the scoring process; 0 = with a "
        "decode process a CPU, each runs the forward pass of its own batches on one thread, "
        "else the CPUs the decode processes leave.",
    )
    pixel_cache_dir: Path | None = Field(
        default=None,
        description="This worker's decoded-pixel cache; unset = <artifacts.dir>/pixel-cache.",
    )
    pixel_cache_mb: int = Field(
        default=2048, ge=0, description="Largest size of the pixel cache in MB; 0 = off."
    )
    max_retries: int = Field(default=5, ge=0, description="Retries of a failing chunk.")
    retry_backoff_s: float = Field(default=2.0, gt=0, description="First retry delay, doubled.")
    retry_backoff_max_s: float = Field(
        default=_DEFAULT_BACKOFF_MAX_S, gt=0, description="Longest retry delay."
    )
    time_limit_s: int = Field(default=3 * 3600, ge=2, description="Hard time limit of a chunk.")
    soft_time_limit_s: int | None = Field(
        default=None,
        validate_default=True,
        description="Soft limit; unset = hard - 60 s (- a tenth under 600 s).",
    )
    visibility_timeout_s: int | None = Field(
        default=None,
        validate_default=True,
        description="Redelivery delay of a chunk whose worker died; unset = 2 x hard limit + "
        "retry_backoff_max_s + 10 % of the hard limit (at least 60 s).",
    )

    @field_validator("broker_url")
    @classmethod
    def _redis_broker(cls, value: str | None) -> str | None:
        if value is None or not value.strip():  # PLANNER_WORKERS__BROKER_URL= unsets it
            return None
        if not value.startswith(BROKER_SCHEMES):
            raise ValueError(
                "write a Redis URL such as 'redis://127.0.0.1:6379/0' (rediss:// for TLS), "
                "or leave it unset to score in-process"
            )
        return value

    @field_validator("device")
    @classmethod
    def _torch_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(
                "write auto, cpu, cuda, cuda:N (N the GPU's index, e.g. cuda:0) or mps"
            )
        return value

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers_or_auto(cls, value: object) -> object:
        # one message for the union (else pydantic reports one line per member)
        if value == "auto":
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        raise ValueError(f"write auto or a whole number, 0 or more (got {value!r})")

    @field_validator("soft_time_limit_s", "visibility_timeout_s")
    @classmethod
    def _limits(cls, value: int | None, info: ValidationInfo) -> int | None:
        hard = info.data.get("time_limit_s")
        if hard is None:  # the hard limit itself was refused; that error says enough
            return value
        own = info.field_name == "soft_time_limit_s"
        soft = value if own else info.data.get("soft_time_limit_s")
        visibility = value if info.field_name == "visibility_timeout_s" else None
        # a refused retry_backoff_max_s has its own error; judge the limits by the default
        longest = info.data.get("retry_backoff_max_s", _DEFAULT_BACKOFF_MAX_S)
        try:
            _, soft, visibility = worker_time_limits(
                hard, soft, visibility, retry_backoff_max_s=longest
            )
        except WorkerLimitError as exc:
            raise ValueError(exc.detail if exc.key == info.field_name else str(exc)) from None
        return soft if own else visibility
