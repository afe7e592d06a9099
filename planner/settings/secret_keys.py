"""Secrets: read from the environment or from a file the config names, never from the TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from planner.config_sources import ENV_PREFIX
from planner.settings.base import field_errors

SECRET_KEYS = (
    "label_studio.token",
    "store.password",
    "dashboard.token",
    "dashboard.webhook_secret",
)
"""Dotted keys that may hold a secret: refused in the TOML file."""
SECRET_NAMES = frozenset(dotted.partition(".")[2] for dotted in SECRET_KEYS)
"""The secret keys by their own name, masked wherever an error shows a value."""


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


def resolve_secrets(section: BaseModel, *keys: str) -> None:
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


def toml_secret_lines(data: dict[str, Any], lines: dict[tuple[str, ...], int]) -> list[str]:
    """A line for each secret the TOML file holds: where it belongs instead."""
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


def without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` less the secret keys, so the rest of the file is still checked."""
    clean = dict(data)
    for dotted in SECRET_KEYS:
        section, _, key = dotted.partition(".")
        if isinstance(clean.get(section), dict) and key in clean[section]:
            clean[section] = {k: v for k, v in clean[section].items() if k != key}
    return clean
