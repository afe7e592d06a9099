"""Where a setting came from, and what to say when it is bad.

The configuration has two sources, the TOML file and ``PLANNER_*`` environment variables, the
environment winning. A bad value is reported against the one it came from: the variable's
name, or the line of the file. A ``PLANNER_*`` variable naming no section is ignored by
pydantic-settings; :func:`unknown_variables` words a warning for each, with the closest name.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from planner.errors import ConfigError

ENV_PREFIX = "PLANNER_"
NESTING = "__"
OWN_VARIABLES = frozenset({"PLANNER_CONFIG", "PLANNER_LS_HOME"})
"""``PLANNER_*`` variables the planner reads that are no setting: the config file's path and
the Label Studio launcher's home."""
TEST_HOOKS = "PLANNER_TEST_"
"""The prefix of the test suite's crash and pause points, which are no setting either."""

Loc = tuple[str, ...]

_URL_CREDENTIALS = re.compile(r"(//[^/:@]*:)[^/@]*@")
_MASK = "**********"
_NOT_A_TABLE = frozenset({"model_type", "model_attributes_type", "dict_type"})
_PLAIN = {
    # pydantic's own words name a Python class; these say what to write instead
    "path_type": "expected a path, as a string such as 'var/artifacts'",
    "time_delta_type": "expected a duration: seconds (300) or ISO 8601 ('PT5M')",
    "time_delta_parsing": "expected a duration: seconds (300) or ISO 8601 ('PT5M')",
}


def read_config(
    path: Path, *, named_by: str | None = None
) -> tuple[dict[str, Any], dict[Loc, int]]:
    """The TOML file at ``path`` as data, and the line of each key (see :func:`key_lines`);
    :class:`ConfigError` says why it cannot be read. ``named_by``: the variable that named
    the file, when one did."""
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        fix = "pass the path of an existing file with --config"
        if named_by is not None:
            fix = f"named by ${named_by}: point ${named_by} at an existing file, or unset it"
        raise ConfigError(
            f"config file {source!r} does not exist; {fix} (the configuration reference is in "
            "README.md)"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"cannot read config {source}: it is a folder; pass the path of a TOML file"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config {source}: {exc.strerror or exc}; check its permissions, or "
            "pass the path of a readable TOML file"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read config {source}: byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start} is not UTF-8; save the file as UTF-8 (TOML files are UTF-8)"
        ) from None
    try:
        return tomllib.loads(text), key_lines(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


def setting_variables(environ: Mapping[str, str]) -> dict[str, Loc]:
    """The ``PLANNER_*`` variables meant as settings, each with its lowercased key path."""
    return {
        name: tuple(name[len(ENV_PREFIX) :].lower().split(NESTING))
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in OWN_VARIABLES
        and not name.upper().startswith(TEST_HOOKS)
    }


def _inner(annotation: Any) -> Any:
    """``annotation`` less ``Annotated`` and ``None``: ``Annotated[int, ...] | None`` is int."""
    if get_origin(annotation) is Annotated:
        return _inner(get_args(annotation)[0])
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1:
        return _inner(args[0])
    return annotation


def annotation_at(model: type[BaseModel], path: Loc) -> Any:
    """The type the key at ``path`` takes (case-insensitive), or None where no key is there."""
    annotation: Any = model
    for part in path:
        annotation = _inner(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {name.lower(): field for name, field in annotation.model_fields.items()}
            if part.lower() not in fields:
                return None
            annotation = fields[part.lower()].annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return annotation


def _shape(annotation: Any) -> str | None:
    """``"table"``, ``"list"`` or None: how a key of this type is written (JSON in a variable)."""
    inner = _inner(annotation)
    if (isinstance(inner, type) and issubclass(inner, BaseModel)) or get_origin(inner) is dict:
        return "table"
    return "list" if get_origin(inner) is list else None


def unknown_variables(variables: Mapping[str, Loc], settings: type[BaseModel]) -> list[str]:
    """A warning for each variable that names no section of ``settings`` (it is ignored)."""
    sections = list(settings.model_fields)
    warnings = []
    for name, path in sorted(variables.items()):
        if path[0] in sections:
            continue  # a wrong key inside a section is a validation error
        close = difflib.get_close_matches(path[0], sections, n=1)
        if close:
            spelled = ENV_PREFIX + close[0].upper() + name[len(ENV_PREFIX) + len(path[0]) :]
            hint = f"did you mean {spelled}?"
        else:
            hint = f"settings are {ENV_PREFIX}<SECTION>{NESTING}<KEY>, sections " + ", ".join(
                sections
            )
        warnings.append(f"{name} names no setting and is ignored; {hint}")
    return warnings


def bad_json_variables(
    field: str, variables: Mapping[str, Loc], environ: Mapping[str, str], settings: type[BaseModel]
) -> list[str]:
    """What to write instead, for each variable under ``field`` that gives a table or a list
    something that is not JSON."""
    lines = []
    for name, path in sorted(variables.items()):
        shape = _shape(annotation_at(settings, path)) if path[0] == field else None
        if shape is None:
            continue
        try:
            json.loads(environ[name])
        except ValueError:
            example = '["time", "camera"]' if shape == "list" else '{"key": 1}'
            lines.append(
                f"{name}: a {shape} is read from the environment as JSON, e.g. {example}"
                + (f"; or set one key at a time as {name}{NESTING}KEY" if shape == "table" else "")
            )
    return lines


_PART = r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)"
_KEY = re.compile(rf"((?:{_PART})(?:\s*\.\s*(?:{_PART}))*)\s*=")


def key_lines(text: str) -> dict[Loc, int]:
    """The line (from 1) of each table header and key of a TOML text, by its key path.

    A cheap scan rather than a parser: enough to point at a bad key; a key inside an inline
    table or an array of tables is found by the key holding it.
    """
    lines: dict[Loc, int] = {}
    table: Loc = ()
    in_string = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        quotes = line.count('"""') + line.count("'''")  # a multi-line string opens or closes
        if in_string:
            in_string = quotes % 2 == 0
            continue
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?", line)
        if header:
            table = _dotted(header.group(1))
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault(table + _dotted(key.group(1)), number)
        in_string = quotes % 2 == 1
    return lines


def _dotted(key: str) -> Loc:
    return tuple("".join(groups) for groups in re.findall(_PART, key))


@dataclass(frozen=True, slots=True)
class Sources:
    """What is known of where the values came from."""

    variables: Mapping[str, Loc]
    lines: Mapping[Loc, int]


def _variable(loc: Loc, sources: Sources) -> str | None:
    """The variable that set the value at ``loc``, if the environment did."""
    wanted = tuple(part.lower() for part in loc)
    setting = [name for name, path in sources.variables.items() if wanted[: len(path)] == path]
    return max(setting, key=lambda name: len(sources.variables[name])) if setting else None


def _origin(loc: Loc, sources: Sources) -> tuple[str, bool]:
    """`` (from PLANNER_X)`` or `` (line N)`` for the value at ``loc``, and whether the
    environment gave it."""
    variable = _variable(loc, sources)
    if variable is not None:
        return f" (from {variable})", True
    for end in range(len(loc), 0, -1):
        if loc[:end] in sources.lines:
            return f" (line {sources.lines[loc[:end]]})", False
    wanted = tuple(part.lower() for part in loc)
    under = sorted(
        name for name, path in sources.variables.items() if path[: len(wanted)] == wanted
    )
    if under and wanted:
        return f" (from {', '.join(under)})", True
    return "", False


def masked(value: object, secret_names: frozenset[str]) -> object:
    """``value`` as it may be shown: secrets at any depth masked, URLs without credentials."""
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {
            k: _MASK if str(k).lower() in secret_names else masked(v, secret_names)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(v, secret_names) for v in value]
    return value


def _spelling(loc: Loc, settings: type[BaseModel]) -> str:
    """The closest key beside the unknown one at ``loc``, as ``"; did you mean KEY?"``."""
    holder = _inner(annotation_at(settings, loc[:-1]))
    if not (isinstance(holder, type) and issubclass(holder, BaseModel)):
        return ""
    close = difflib.get_close_matches(loc[-1].lower(), list(holder.model_fields), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _not_a_table(loc: Loc, value: object, variable: str | None) -> str:
    """What to write where a table (a section, a quota) was given something else."""
    if variable is not None:
        if len(loc) == 2 and loc[0] == "quotas" and isinstance(value, int | str):
            return f"a quota is a table; set {variable}{NESTING}TARGET={value} instead"
        return f'expected a table: JSON such as {{"key": 1}}, or set {variable}{NESTING}KEY'
    if len(loc) == 2 and loc[0] == "quotas":
        target = value if isinstance(value, int) else "N"
        return (
            f"a quota is a table; write [quotas.{loc[1]}] with target = {target} on the next "
            "line (and splits, min_per_cycle, criticality as needed)"
        )
    if loc == ("quotas",):
        return "expected tables; write a [quotas.<Class>] table for each class, with target = N"
    return f"expected a table; write [{'.'.join(loc)}] with its keys on the lines below"


def error_lines(
    error: ValidationError,
    sources: Sources,
    settings: type[BaseModel],
    secret_names: frozenset[str],
) -> list[tuple[str, bool]]:
    """One line for each error (key, value, what is allowed, where it came from), and
    whether the environment gave that value."""
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(str(part) for part in item["loc"])
        key = ".".join(loc) or "(top level)"
        value = item.get("input")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key; check the spelling against the configuration reference"
            message += _spelling(loc, settings)
        elif item["type"] == "literal_error":
            message = message.replace("Input should be", "allowed:")
        elif item["type"] in _NOT_A_TABLE:
            message = _not_a_table(loc, value, _variable(loc, sources))
        else:
            message = _PLAIN.get(item["type"], message)
        secret = any(word in key for word in ("token", "password", "secret"))
        shown = "" if secret else f" = {masked(value, secret_names)!r}"
        origin, from_env = _origin(loc, sources)
        lines.append((f"{key}{shown}: {message}{origin}", from_env))
    return lines
