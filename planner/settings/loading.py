"""The whole configuration, the sources it is read from, and :func:`load_settings`."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
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
from planner.errors import ConfigError
from planner.settings.secret_keys import (
    SECRET_KEYS,
    SECRET_NAMES,
    toml_secret_lines,
    without_secrets,
)
from planner.settings.sections import (
    ArtifactSettings,
    DashboardSettings,
    LabelStudioSettings,
    PlanningSettings,
    QuotaSettings,
    ScheduleSettings,
    StopSettings,
    StoreSettings,
)
from planner.settings.workers import WorkerSettings

# The package's name, as when this was one module: log filters and tests name it.
log = logging.getLogger("planner.settings")
CONFIG_ENV = "PLANNER_CONFIG"
"""Environment variable naming the TOML file when ``--config`` is not given."""


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
    secret_lines = [(line, False) for line in toml_secret_lines(data, lines)]
    data = without_secrets(data)
    variables = setting_variables(os.environ) if environ else {}
    for warning in unknown_variables(variables, Settings):
        log.warning(warning)
    try:
        settings = Settings(**data) if environ else _FileOnlySettings(**data)
    except ValidationError as exc:
        found = error_lines(exc, Sources(variables, lines), Settings, SECRET_NAMES)
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
