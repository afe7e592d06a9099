"""The planner's configuration: a TOML file plus ``PLANNER_*`` environment overrides.

Built once per entry point with :func:`load_settings` and passed down; the core never sees it.
Secrets (API tokens, passwords) are read only from the environment or from a file path named in
the config, never from the TOML file itself, and they never appear in ``repr``, ``str`` or
:meth:`Settings.public_dict`.

Environment overrides use ``PLANNER_`` and ``__`` between levels, e.g.
``PLANNER_PLANNING__BATCH_SIZE=200`` or ``PLANNER_LABEL_STUDIO__TOKEN=...``.
"""

from __future__ import annotations

import math
import re
import tomllib
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
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from planner.errors import ConfigError

ENV_PREFIX = "PLANNER_"
CONFIG_ENV = "PLANNER_CONFIG"
"""Environment variable naming the TOML file when ``--config`` is not given."""

_URL_CREDENTIALS = re.compile(r"(//[^/:@]*:)[^/@]*@")
SECRET_KEYS = ("label_studio.token", "store.password", "dashboard.token", "webhook.secret")
"""Dotted keys that may hold a secret: refused in the TOML file."""

CountKindName = Literal["images", "instances", "pixels"]
WeightScheme = Literal["balanced", "inverse_sqrt", "effective_number", "median_frequency", "yolo"]
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
        token = _read_secret(self.token, self.token_file, "token")
        object.__setattr__(self, "token", token)
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
        object.__setattr__(
            self, "password", _read_secret(self.password, self.password_file, "password")
        )
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
            raise ValueError(
                f"per-split targets sum to {sum(self.splits.values())}, above target "
                f"{self.target}; raise target or lower the split targets"
            )
        return self


class PlanningSettings(_Section):
    """How batches, weights and plans are made."""

    count_kind: CountKindName = Field(default="images", description="What quotas count.")
    batch_size: int = Field(default=100, gt=0, le=100_000, description="Tasks per batch.")
    exploration_share: float = Field(default=0.10, ge=0, le=1, description="Random picks.")
    hard_negative_share: float = Field(default=0.05, ge=0, le=1, description="Look-alikes.")
    diversity: bool = Field(default=True, description="Avoid near-duplicates in a batch.")
    balance_lambda: float = Field(default=1.0, ge=0, description="Deficit vs uncertainty.")
    split_ratios: dict[str, Positive] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
        description="Target split proportions, summing to 1.",
    )
    hierarchy: dict[str, str] = Field(
        default_factory=dict, description="Child class -> parent class."
    )
    merge_min_count: int = Field(default=0, ge=0, description="Merge children below this.")
    weight_scheme: WeightScheme = Field(default="balanced", description="Emitted weights.")
    max_oversample: float = Field(default=5.0, ge=1, description="Oversampling cap.")
    seed: int = Field(default=0, ge=0, description="Seed of every random choice.")

    @field_validator("split_ratios")
    @classmethod
    def _sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("name at least one split, e.g. {train = 0.8, val = 0.1, test = 0.1}")
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
    timezone: str = Field(default="UTC", description="IANA time zone of the daily report.")
    report_at: str = Field(default="07:00", description="Daily report time, HH:MM.")

    @field_validator("sync_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration, e.g. 300 or 'PT5M'")
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
        return env_settings, init_settings

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain data with every secret masked, safe to print or log."""
        data: dict[str, Any] = self.model_dump(mode="json")
        for dotted in SECRET_KEYS:
            section, _, key = dotted.partition(".")
            if section in data and data[section].get(key) is not None:
                data[section][key] = "**********"
        return data


def _toml_secret_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for dotted in SECRET_KEYS:
        section, _, key = dotted.partition(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            lines.append(
                f"{dotted}: secrets are not read from the config file; set {env} "
                f"or {dotted}_file = '/path/to/file'"
            )
    return lines


def _format_errors(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in error.errors(include_url=False):
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key; check the spelling against the configuration reference"
        elif item["type"] == "literal_error":
            message = message.replace("Input should be", "allowed:")
        secret = any(word in key for word in ("token", "password", "secret"))
        if isinstance(value, str):
            value = _URL_CREDENTIALS.sub(r"\1***@", value)
        shown = "" if secret else f" = {value!r}"
        lines.append(f"{key}{shown}: {message}")
    return ConfigError(f"invalid configuration in {source}:\n  " + "\n  ".join(lines))


def load_settings(path: Path | None = None, *, environ: bool = True) -> Settings:
    """Read the TOML file at ``path`` (optional) and the environment into :class:`Settings`.

    Raises :class:`ConfigError` with one line per bad key: the key, the value, what is allowed.
    ``environ=False`` ignores ``PLANNER_*`` variables (tests, ``planner config check --file``).
    """
    data: dict[str, Any] = {}
    source = "the environment"
    if path is not None:
        source = str(path)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(
                f"config file {source!r} does not exist; create it with `planner init` "
                "or pass --config"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        secret_lines = _toml_secret_lines(data)
        if secret_lines:
            raise ConfigError(f"invalid configuration in {source}:\n  " + "\n  ".join(secret_lines))
    try:
        if environ:
            return Settings(**data)
        return _FileOnlySettings(**data)
    except ValidationError as exc:
        raise _format_errors(exc, source) from None


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
    "ArtifactSettings",
    "LabelStudioSettings",
    "PlanningSettings",
    "QuotaSettings",
    "ScheduleSettings",
    "Settings",
    "StopSettings",
    "StoreSettings",
    "load_settings",
]
