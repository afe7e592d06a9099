"""The README's references: every command of the CLI and every configuration key, and only
those."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from typer.main import get_command

from planner.cli import app
from planner.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(group: Any, prefix: str = "") -> set[str]:
    names = set()
    for name in group.list_commands(None):
        command = group.get_command(None, name)
        if hasattr(command, "list_commands"):
            names |= _commands(command, f"{prefix}{name} ")
        else:
            names.add(f"{prefix}{name}")
    return names


def test_the_cli_reference_lists_every_command() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    listed = {
        re.sub(r" --\S+", "", cell)
        for cell in re.findall(r"^\| `planner ([^`]+)` \|", section, re.M)
    }
    assert listed == _commands(get_command(app))


def test_the_configuration_reference_lists_every_key() -> None:
    """Every key of every section of the settings has a row (``a.b`` or ``a.b` / `a.c``)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", section, re.M)
    listed = {key for cell in first_cells for key in re.findall(r"`([a-z_]+\.[a-z_]+)`", cell)}
    wanted = {
        f"{name}.{key}"
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        for key in field.annotation.model_fields
    }
    assert wanted - listed == set(), "keys missing from the README's configuration reference"
    assert listed - wanted == set(), "README rows for keys the settings do not have"
