"""The README's CLI reference names every command of the CLI, and only those."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from typer.main import get_command

from planner.cli import app

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
