"""The config's sections, one model each; the workers' section is in :mod:`.workers`."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationInfo, field_validator, model_validator

from planner.core.table import CountKind
from planner.core.weights import WeightScheme
from planner.settings.base import Positive, Section, field_errors
from planner.settings.secret_keys import resolve_secrets


class LabelStudioSettings(Section):
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
        resolve_secrets(self, "token")
        return self


class StoreSettings(Section):
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
        resolve_secrets(self, "password")
        return self


class QuotaSettings(Section):
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


class PlanningSettings(Section):
    """How batches, weights and plans are made."""

    count_kind: CountKind = Field(
        default="images", description="What quotas and the emitted class weights count."
    )
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
    repeat_threshold: float | Literal["median"] = Field(
        default="median", description="Repeat-factor t of multi-label data: 'median' or LVIS's."
    )
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

    @field_validator("repeat_threshold", mode="before")
    @classmethod
    def _repeat_threshold(cls, value: object) -> object:
        # one message for the union, as for discovery_whiten
        if value == "median":
            return value
        try:
            number = float(value) if isinstance(value, int | float | str) else math.nan
        except ValueError:
            number = math.nan
        if isinstance(value, bool) or not 0 < number <= 1:
            raise ValueError(f"write median or a number in (0, 1], e.g. 0.001 (got {value!r})")
        return number

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


class StopSettings(Section):
    """When the planner stops asking for labels and emits weights."""

    when_quotas_met: bool = Field(default=True, description="Stop once every quota is met.")
    budget_annotations: int | None = Field(default=None, gt=0, description="Label budget.")
    budget_days: Positive | None = Field(default=None, description="Calendar budget.")
    yield_window: int = Field(default=3, gt=0, description="Batches for the yield rule.")
    min_yield: float = Field(default=0.02, ge=0, le=1, description="Rare hits per item.")
    yield_mode: Literal["all", "mean"] = Field(default="all", description="Each batch or pooled.")
    kappa_threshold: float = Field(default=0.99, gt=0, le=1, description="Stable predictions.")
    kappa_window: int = Field(default=3, gt=0, description="Successive pairs above it.")
    kappa_mode: Literal["all", "mean"] = Field(default="all", description="Each pair or mean.")


class ScheduleSettings(Section):
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


class ArtifactSettings(Section):
    """Where emitted weights and plans go."""

    dir: Path = Field(default=Path("var/artifacts"), description="Artifact folder.")


class DashboardSettings(Section):
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
        resolve_secrets(self, "token", "webhook_secret")
        return self
