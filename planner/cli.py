"""The ``planner`` command line: parse, build settings, call a function, print, exit.

Exit codes: 0 success, 2 bad input or configuration (the message says what to fix),
1 anything unexpected.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from planner import __version__
from planner.errors import InputError, PlannerError
from planner.settings import CONFIG_ENV, load_settings

app = typer.Typer(
    name="planner",
    help="Plan annotation batches for imbalanced Label Studio projects.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and check the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help=f"TOML config file (default: ${CONFIG_ENV})."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@contextmanager
def _reported() -> Iterator[None]:
    """Turn the planner's own errors into one readable message and exit code 2."""
    try:
        yield
    except PlannerError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(code=2) from None


def parse_counts(text: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Parse ``Car=6000,Pedestrian=2500`` into class names and counts."""
    classes: list[str] = []
    counts: list[float] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--counts item {item!r} is not NAME=COUNT; write e.g. Car=6000")
        try:
            count = float(value)
        except ValueError:
            raise InputError(
                f"--counts item {item!r}: {value!r} is not a number; write e.g. {name}=6000"
            ) from None
        if not count >= 0 or count == float("inf"):
            raise InputError(f"--counts item {item!r}: counts must be finite and >= 0")
        if name in classes:
            raise InputError(f"--counts names class {name!r} twice; give each class once")
        classes.append(name)
        counts.append(count)
    if not classes:
        raise InputError("--counts is empty; write e.g. --counts Car=6000,Wheelchair=300")
    return tuple(classes), tuple(counts)


def _config_path(config: Path | None) -> Path | None:
    if config is not None:
        return config
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _fmt(value: float, digits: int = 4) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}"


@app.command()
def version() -> None:
    """Print the planner's version."""
    out.print(__version__)


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration; exit 2 with one line per bad key."""
    with _reported():
        load_settings(_config_path(config))
    out.print("configuration is valid")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration as JSON, secrets masked."""
    with _reported():
        settings = load_settings(_config_path(config))
    _print_json(settings.public_dict())
