"""The planner's configuration: a TOML file plus ``PLANNER_*`` environment overrides.

Built once per entry point with :func:`load_settings` and passed down; the core never sees it.
Secrets (API tokens, passwords) are read only from the environment or from a file path named in
the config, never from the TOML file itself, and they never appear in ``repr``, ``str`` or
:meth:`Settings.public_dict`.

Environment overrides use ``PLANNER_`` and ``__`` between levels, e.g.
``PLANNER_PLANNING__BATCH_SIZE=200`` or ``PLANNER_LABEL_STUDIO__TOKEN=...``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from planner.config_sources import (
    ENV_PREFIX,
    Sources,
    bad_json_variables,
    error_lines,
    read_config,
    setting_variables,
    unknown_variables,
)
from planner.core.table import CountKind
from planner.core.weights import WeightScheme
from planner.errors import ConfigError

log = logging.getLogger(__name__)
CONFIG_ENV = "PLANNER_CONFIG"
"""Environment variable naming the TOML file when ``--config`` is not given."""

SECRET_KEYS = (
    "label_studio.token",
    "store.password",
    "dashboard.token",
    "dashboard.webhook_secret",
)
"""Dotted keys that may hold a secret: refused in the TOML file."""
_SECRET_NAMES = frozenset(dotted.partition(".")[2] for dotted in SECRET_KEYS)

Positive = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(value: SecretStr | None, path: Path | None, key: str) -> SecretStr | None:
    if value is not None:
        return value
    if path is None:
        return None
    try:
        text = path.expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(
            f"cannot read {key}_file {str(path)!r} ({exc.strerror}); point it at a readable file"
        ) from None
    if not text:
        raise ValueError(f"{key}_file {str(path)!r} is empty; write the {key} into it")
    return SecretStr(text)


def field_errors(model: str, problems: list[tuple[str, object, str]]) -> ValidationError:
    """A section validator's ``(key, value, message)`` problems, each keyed by its own key.

    A ``ValueError`` raised by a model validator is reported against the whole section with
    the section's input as its value, and that input holds the section's secrets.
    """
    return ValidationError.from_exception_data(
        model,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{reason}", {"reason": message}),
                loc=(key,),
                input=value,
            )
            for key, value, message in problems
        ],
    )


def _resolve_secrets(section: BaseModel, *keys: str) -> None:
    """Each of ``keys`` from the environment's value or read from its ``<key>_file``."""
    problems: list[tuple[str, object, str]] = []
    for key in keys:
        path = getattr(section, f"{key}_file")
        try:
            object.__setattr__(section, key, _read_secret(getattr(section, key), path, key))
        except ValueError as exc:
            problems.append((f"{key}_file", str(path), str(exc)))
    if problems:
        raise field_errors(type(section).__name__, problems)


class LabelStudioSettings(_Section):
    """Where the Label Studio project lives and how to authenticate."""

    url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:8080"), description="Base URL of the server."
    )
    project_id: int | None = Field(default=None, gt=0, description="The watched project.")
    token: SecretStr | None = Field(
        default=None, description="Legacy token or personal access token (env only)."
    )
    token_file: Path | None = Field(default=None, description="File holding the token.")
    timeout_s: Positive = Field(default=30.0, description="HTTP timeout per request.")

    @model_validator(mode="after")
    def _resolve_token(self) -> LabelStudioSettings:
        _resolve_secrets(self, "token")
        return self


class StoreSettings(_Section):
    """The planner's own database."""

    url: str = Field(
        default="sqlite:///var/planner.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db.",
    )
    password: SecretStr | None = Field(default=None, description="Database password (env only).")
    password_file: Path | None = Field(default=None, description="File holding the password.")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+")):
            raise ValueError("must start with sqlite:// or postgresql:// (or postgresql+driver://)")
        if urlsplit(value).password:
            raise ValueError(
                "must not carry a password; set PLANNER_STORE__PASSWORD or store.password_file"
            )
        return value

    @model_validator(mode="after")
    def _resolve_password(self) -> StoreSettings:
        _resolve_secrets(self, "password")
        return self


class QuotaSettings(_Section):
    """The target for one class."""

    target: int | None = Field(default=None, ge=0, description="Total target (all splits).")
    splits: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Per-split targets, e.g. {train = 400, val = 50}."
    )
    min_per_cycle: int = Field(default=0, ge=0, description="Aim per annotation batch.")
    criticality: Positive = Field(default=1.0, description="Weight of this class's deficit.")

    @model_validator(mode="after")
    def _consistent(self) -> QuotaSettings:
        if self.target is None and not self.splits:
            raise ValueError("give a target or per-split targets (splits = {train = ...})")
        if self.target is not None and sum(self.splits.values()) > self.target:
            message = (
                f"per-split targets sum to {sum(self.splits.values())}, above target "
                f"{self.target}; raise target or lower the split targets"
            )
            raise field_errors("QuotaSettings", [("splits", self.splits, message)])
        return self


class PlanningSettings(_Section):
    """How batches, weights and plans are made."""

    count_kind: CountKind = Field(default="images", description="What quotas count.")
    batch_size: int = Field(default=100, gt=0, le=10_000, description="Tasks per batch.")
    exploration_share: float = Field(default=0.10, ge=0, le=1, description="Random picks.")
    hard_negative_share: float = Field(default=0.05, ge=0, le=1, description="Look-alikes.")
    diversity: bool = Field(default=True, description="Avoid near-duplicates in a batch.")
    balance_lambda: float = Field(default=3.0, ge=0, description="Deficit vs uncertainty.")
    discovery_share: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="Novelty picks while a short class has under 8 labelled images.",
    )
    discovery_whiten: Literal["auto"] | bool = Field(
        default="auto",
        description="Novelty after PCA whitening: auto = unless the embeddings are mostly noise.",
    )
    discovery_short_weight: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="Novelty x (1 + this x the chance an image holds a short class).",
    )
    shortfall_factor: float = Field(
        default=2.0, ge=1, le=10, description="The objective's target: this x the deficit."
    )
    vote_neighbours: int = Field(
        default=5, ge=0, le=100, description="Labelled neighbours that vote (0: no vote)."
    )
    vote_distance_power: float = Field(
        default=3.0, ge=0, le=10, description="A neighbour's vote weighs distance ** -this."
    )
    met_uncertainty: bool = Field(
        default=True,
        description="Once every quota is met, rank by the most uncertain one-vs-rest decision.",
    )
    met_rarity_power: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="Then, for presence, weigh classes by (most labelled / theirs) ** this.",
    )
    split_ratios: dict[str, Positive] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
        description="Target split proportions, summing to 1.",
    )
    hierarchy: dict[str, str] = Field(
        default_factory=dict, description="Child class -> parent class."
    )
    merge_min_count: int = Field(default=0, ge=0, description="Merge children below this.")
    strata_fields: list[str] = Field(
        default_factory=list, description="Task data fields to stratify by (time, camera...)."
    )
    weight_scheme: WeightScheme = Field(default="balanced", description="Emitted weights.")
    max_oversample: float = Field(default=5.0, ge=1, description="Oversampling cap.")
    seed: int = Field(default=0, ge=0, description="Seed of every random choice.")

    @field_validator("discovery_whiten", mode="before")
    @classmethod
    def _whiten_mode(cls, value: object) -> object:
        # one message for the union (else pydantic reports one line per member)
        if value == "auto" or isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"write auto, true or false (got {value!r})")

    @field_validator("split_ratios")
    @classmethod
    def _sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("name at least one split, e.g. {train = 0.8, val = 0.1, test = 0.1}")
        if "total" in value:
            raise ValueError(
                "'total' names the sum over the splits in counts; call the split otherwise"
            )
        total = sum(value.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"ratios sum to {total:g}; they must sum to 1")
        return value


class StopSettings(_Section):
    """When the planner stops asking for labels and emits weights."""

    when_quotas_met: bool = Field(default=True, description="Stop once every quota is met.")
    budget_annotations: int | None = Field(default=None, gt=0, description="Label budget.")
    budget_days: Positive | None = Field(default=None, description="Calendar budget.")
    yield_window: int = Field(default=3, gt=0, description="Batches for the yield rule.")
    min_yield: float = Field(default=0.02, ge=0, le=1, description="Rare hits per item.")
    kappa_threshold: float = Field(default=0.99, gt=0, le=1, description="Stable predictions.")
    kappa_window: int = Field(default=3, gt=0, description="Successive pairs above it.")


class ScheduleSettings(_Section):
    """When the daemon acts."""

    sync_interval: timedelta = Field(
        default=timedelta(minutes=5), description="Sync period (ISO 8601 or seconds)."
    )
    cycle_interval: timedelta = Field(
        default=timedelta(hours=1), description="Longest wait between two cycles."
    )
    cycle_when_done: float = Field(
        default=0.8, gt=0, le=1, description="Start a cycle once this share of the batch is done."
    )
    housekeeping_interval: timedelta = Field(
        default=timedelta(hours=6),
        description="Reconcile deletions, expire stale batches, drop superseded models' scores.",
    )
    misfire_grace: timedelta = Field(
        default=timedelta(hours=1), description="How late a missed job may still run."
    )
    batch_ttl: timedelta = Field(
        default=timedelta(days=7), description="Housekeeping expires batches pushed this long ago."
    )
    timezone: str = Field(default="UTC", description="IANA time zone of the daily report.")
    report_at: str = Field(default="07:00", description="Daily report time, HH:MM.")
    retry_backoff_max: timedelta = Field(
        default=timedelta(minutes=5),
        description="Longest wait between two tries while Label Studio fails (doubling from 5 s).",
    )

    @field_validator(
        "sync_interval",
        "cycle_interval",
        "housekeeping_interval",
        "misfire_grace",
        "batch_ttl",
        "retry_backoff_max",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration, e.g. 300 or 'PT5M'")
        return value

    @field_validator("misfire_grace")
    @classmethod
    def _whole_seconds(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):  # the scheduler counts it in whole seconds
            raise ValueError("must be at least 1 second, e.g. 3600 or 'PT1H'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as 'Europe/Berlin' or 'UTC'") from None
        return value

    @field_validator("report_at")
    @classmethod
    def _clock(cls, value: str) -> str:
        hours, sep, minutes = value.partition(":")
        if not (sep and hours.isdigit() and minutes.isdigit()) or not (
            0 <= int(hours) < 24 and 0 <= int(minutes) < 60
        ):
            raise ValueError("must be a 24-hour time HH:MM, e.g. '07:30'")
        return value


class ArtifactSettings(_Section):
    """Where emitted weights and plans go."""

    dir: Path = Field(default=Path("var/artifacts"), description="Artifact folder.")


class DashboardSettings(_Section):
    """The read-only dashboard, the webhook receiver and where daily reports are kept."""

    host: str = Field(
        default="127.0.0.1", description="Listen address; beyond loopback needs a token."
    )
    port: int = Field(default=8765, gt=0, lt=65536, description="Listen port.")
    metrics_port: int = Field(
        default=8766, ge=0, lt=65536, description="The daemon's own /metrics port (0: off)."
    )
    token: SecretStr | None = Field(default=None, description="Dashboard token (env only).")
    token_file: Path | None = Field(default=None, description="File holding the token.")
    webhook_secret: SecretStr | None = Field(
        default=None, description="Shared secret of the Label Studio webhook (env only)."
    )
    webhook_secret_file: Path | None = Field(default=None, description="File holding it.")
    webhook_url: AnyHttpUrl | None = Field(
        default=None,
        description="The receiver's URL as Label Studio reaches it; set, `planner run` "
        "registers the project's webhook there.",
    )
    reports_dir: Path = Field(default=Path("var/reports"), description="Daily reports folder.")

    @field_validator("metrics_port")
    @classmethod
    def _apart_from_the_dashboard(cls, value: int, info: ValidationInfo) -> int:
        if value and value == info.data.get("port"):
            # `planner run` binds the metrics first, then finds its webhook receiver's port taken
            raise ValueError(
                "is dashboard.port too, where `planner run` serves the webhook receiver; "
                "choose another port, or 0 to turn the metrics off"
            )
        return value

    @model_validator(mode="after")
    def _resolve_secrets(self) -> DashboardSettings:
        _resolve_secrets(self, "token", "webhook_secret")
        return self


Precision = Literal["auto", "float32", "bfloat16", "float16"]
PRECISIONS: tuple[Precision, ...] = ("auto", "float32", "bfloat16", "float16")
CompileMode = Literal["auto", "on", "off"]
COMPILE_MODES: tuple[CompileMode, ...] = ("auto", "on", "off")
BROKER_SCHEMES = ("redis://", "rediss://")
"""What ``workers.broker_url`` may start with: the Celery broker and the daemon's lease."""
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


class WorkerLimitError(ValueError):
    """Contradicting time limits; ``key`` is the setting to change, ``detail`` says why."""

    def __init__(self, key: str, value: int, detail: str) -> None:
        super().__init__(f"workers.{key} = {value}: {detail}")
        self.key = key
        self.detail = detail


def worker_time_limits(
    time_limit_s: int, soft_time_limit_s: int | None, visibility_timeout_s: int | None
) -> tuple[int, int, int]:
    """``(hard, soft, visibility)`` seconds of a scoring chunk, the unset ones derived.

    The soft limit defaults to 60 s (a tenth for short limits) before the hard one; the
    broker's visibility timeout to the hard limit plus a tenth (at least 60 s), because Redis
    hands an unacknowledged chunk to a second worker once it expires, while the first may
    still run it. ``WorkerLimitError`` names both keys when they contradict each other.
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
    visibility = visibility_timeout_s
    if visibility is None:
        visibility = time_limit_s + max(60, time_limit_s // 10)
    if visibility <= time_limit_s:
        raise WorkerLimitError(
            "visibility_timeout_s",
            visibility,
            f"must exceed workers.time_limit_s = {time_limit_s}: Redis would hand a chunk "
            "still running to a second worker",
        )
    return time_limit_s, soft, visibility


class WorkerSettings(_Section):
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
    image_root: Path | None = Field(default=None, description="Local copy of the images.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="The only http(s) hosts images may come from."
    )
    image_size: int = Field(default=32, gt=0, le=4096, description="Model input size.")
    batch_size: int = Field(default=64, gt=0, description="Images per forward pass.")
    chunk_size: int = Field(default=256, gt=0, description="Tasks per Celery job.")
    num_workers: NonNegativeInt | Literal["auto"] = Field(
        default="auto",
        description="DataLoader decode processes; auto = a CPU each on a CPU, a CPU each but one "
        "on a GPU (at most 16).",
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
    retry_backoff_max_s: float = Field(default=300.0, gt=0, description="Longest retry delay.")
    time_limit_s: int = Field(default=3 * 3600, ge=2, description="Hard time limit of a chunk.")
    soft_time_limit_s: int | None = Field(
        default=None,
        validate_default=True,
        description="Soft limit; unset = hard - 60 s (- a tenth under 600 s).",
    )
    visibility_timeout_s: int | None = Field(
        default=None,
        validate_default=True,
        description="Redelivery delay of a chunk whose worker died; unset = hard limit + 10 %.",
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
        try:
            _, soft, visibility = worker_time_limits(hard, soft, visibility)
        except WorkerLimitError as exc:
            raise ValueError(exc.detail if exc.key == info.field_name else str(exc)) from None
        return soft if own else visibility


class Settings(BaseSettings):
    """Everything the planner's entry points need."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
    )

    label_studio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    planning: PlanningSettings = Field(default_factory=PlanningSettings)
    quotas: dict[str, QuotaSettings] = Field(default_factory=dict)
    stop: StopSettings = Field(default_factory=StopSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file; the file arrives through init (see load_settings).
        return _EnvQuotaNames(env_settings, init_settings), init_settings

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data with every secret masked, safe to print or log."""
        data: dict[str, Any] = self.model_dump(mode="json")
        for dotted in SECRET_KEYS:
            section, _, key = dotted.partition(".")
            if section in data and data[section].get(key) is not None:
                data[section][key] = "**********"
        return data


class _EnvQuotaNames(PydanticBaseSettingsSource):
    """The environment's settings, each quota's class name spelled as in the config file.

    Environment variable names are read lowercased, so ``PLANNER_QUOTAS__Wheelchair__TARGET``
    arrives as quota ``wheelchair``; matched to the file's quota names case-insensitively, it
    overrides the file's ``[quotas.Wheelchair]`` instead of adding a quota no class has.
    """

    def __init__(self, env: PydanticBaseSettingsSource, init: PydanticBaseSettingsSource) -> None:
        super().__init__(env.settings_cls)
        self._env = env
        self._file: dict[str, Any] = getattr(init, "init_kwargs", {})

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self._env()
        quotas, named = data.get("quotas"), self._file.get("quotas")
        if not isinstance(quotas, dict) or not isinstance(named, dict):
            return data
        spelled = {str(name).lower(): str(name) for name in named}
        return data | {"quotas": {spelled.get(k.lower(), k): v for k, v in quotas.items()}}


def _toml_secret_lines(data: dict[str, Any], lines: dict[tuple[str, ...], int]) -> list[str]:
    found = []
    for dotted in SECRET_KEYS:
        section, _, key = dotted.partition(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            line = lines.get((section, key))
            found.append(
                f"{dotted}: secrets are not read from the config file; set {env} "
                f"or {dotted}_file = '/path/to/file'" + (f" (line {line})" if line else "")
            )
    return found


def _without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` less the secret keys, so the rest of the file is still checked."""
    clean = dict(data)
    for dotted in SECRET_KEYS:
        section, _, key = dotted.partition(".")
        if isinstance(clean.get(section), dict) and key in clean[section]:
            clean[section] = {k: v for k, v in clean[section].items() if k != key}
    return clean


def _config_error(lines: list[tuple[str, bool]], path: Path | None) -> ConfigError:
    places = [str(path)] if path is not None and not all(env for _, env in lines) else []
    if path is None or any(env for _, env in lines):
        places.append("the environment")
    text = "\n  ".join(line for line, _ in lines)
    return ConfigError(f"invalid configuration in {' and '.join(places)}:\n  {text}")


def load_settings(path: Path | None = None, *, environ: bool = True) -> Settings:
    """Read the TOML file at ``path`` (optional) and the environment into :class:`Settings`.

    Raises :class:`ConfigError` with one line per bad key: the key, the value, what is allowed.
    ``environ=False`` ignores ``PLANNER_*`` variables (tests, ``planner config check --file``).
    """
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if path is not None:
        named = os.environ.get(CONFIG_ENV) if environ else None
        data, lines = read_config(
            path, named_by=CONFIG_ENV if named and Path(named) == path else None
        )
    # A secret in the file is one bad line among the others, not a reason to check nothing else.
    secret_lines = [(line, False) for line in _toml_secret_lines(data, lines)]
    data = _without_secrets(data)
    variables = setting_variables(os.environ) if environ else {}
    for warning in unknown_variables(variables, Settings):
        log.warning(warning)
    try:
        settings = Settings(**data) if environ else _FileOnlySettings(**data)
    except ValidationError as exc:
        found = error_lines(exc, Sources(variables, lines), Settings, _SECRET_NAMES)
        raise _config_error(secret_lines + found, path) from None
    except SettingsError as exc:  # a table or list from the environment that is not JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        bad = bad_json_variables(field.group(1) if field else "", variables, os.environ, Settings)
        raise _config_error([(line, True) for line in bad or [str(exc)]], path) from None
    if secret_lines:
        raise _config_error(secret_lines, path)
    return settings


class _FileOnlySettings(Settings):
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "ArtifactSettings",
    "DashboardSettings",
    "LabelStudioSettings",
    "PlanningSettings",
    "QuotaSettings",
    "ScheduleSettings",
    "Settings",
    "StopSettings",
    "StoreSettings",
    "WorkerLimitError",
    "WorkerSettings",
    "load_settings",
    "worker_time_limits",
]
