"""``planner init``: a commented TOML config holding every key of the settings model, and the
check of the Label Studio project it names.

The file is generated from ``planner.settings`` itself (each key with its default and the
field's one-line description), so a key added to the settings appears here without a second
list to keep in step. Keys without a default and the secrets are written as comments: a secret
is never read from the file (the environment or a ``*_file`` key holds it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from planner.core.labels import parse_label_config
from planner.settings import ENV_PREFIX, SECRET_KEYS, QuotaSettings, Settings

if TYPE_CHECKING:
    from planner.ports import AnnotationBackend

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_EXAMPLES: Mapping[str, Any] = {
    "label_studio.project_id": 1,
    "label_studio.token_file": "/run/secrets/label-studio-token",
    "store.password_file": "/run/secrets/planner-db-password",
    "stop.budget_annotations": 5000,
    "stop.budget_days": 30,
    "dashboard.token_file": "/run/secrets/planner-dashboard-token",
    "dashboard.webhook_secret_file": "/run/secrets/planner-webhook-secret",
    "dashboard.webhook_url": "http://planner.internal:8765/webhook/label-studio",
    "workers.broker_url": "redis://127.0.0.1:6379/0",
    "workers.weights": "models/weights.pt",
    "workers.model_dir": "var/models",
    "workers.bootstrap_dir": "var/artifacts/bootstrap",
    "workers.image_root": "/data/images",
    "workers.upload_root": "/var/lib/label-studio/media/upload",
    "workers.pixel_cache_dir": "var/artifacts/pixel-cache",
    "workers.soft_time_limit_s": 10740,
    "workers.visibility_timeout_s": 22980,
}
"""Values shown in the comment of a key that has no default (an unset key keeps that)."""
_EXAMPLE_QUOTA = {"target": 500, "splits": {"train": 400, "val": 50, "test": 50}}


def toml_value(value: Any) -> str:
    """``value`` (JSON data: str, bool, number, list, dict) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _section_lines(section: str, model: type[BaseModel], given: Mapping[str, Any]) -> list[str]:
    defaults = model().model_dump(mode="json")
    lines = [f"# {(model.__doc__ or section).strip()}", f"[{section}]"]
    for key, field in model.model_fields.items():
        dotted = f"{section}.{key}"
        about = field.description or ""
        if dotted in SECRET_KEYS:
            env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            lines.append(f"# {key}: secret, never read from this file; set {env} or {key}_file")
        elif key in given:
            lines.append(f"{key} = {toml_value(given[key])}  # {about}")
        elif field.get_default(call_default_factory=True) is None:
            example = _EXAMPLES.get(dotted)
            shown = "" if example is None else f" = {toml_value(example)}"
            lines.append(f"# {key}{shown}  # {about} (unset by default)")
        else:
            lines.append(f"{key} = {toml_value(defaults[key])}  # {about}")
    return lines


def config_template(
    label_studio: Mapping[str, Any] | None = None, *, classes: Sequence[str] = ()
) -> str:
    """The commented TOML of every setting at its default, the ``label_studio`` keys given
    (``url``, ``project_id``, ``token_file``) filled in, and a commented quota example for
    each class of ``classes`` (or for one example class)."""
    given = {k: v for k, v in (label_studio or {}).items() if v is not None}
    lines = [
        "# Annotation Planner configuration, written by `planner init`.",
        "# Every key can be overridden as PLANNER_<SECTION>__<KEY>; secrets come only from the",
        "# environment or from a *_file key, never from this file. Unset keys keep their default.",
    ]
    for section, field in Settings.model_fields.items():
        model = field.annotation
        lines.append("")
        if section == "quotas":
            lines.extend(_quota_lines(classes))
        elif isinstance(model, type) and issubclass(model, BaseModel):
            lines.extend(_section_lines(section, model, given if section == "label_studio" else {}))
    return "\n".join(lines) + "\n"


def _quota_lines(classes: Sequence[str]) -> list[str]:
    lines = [
        "# Quotas: what 'enough' means for each class (a [quotas.<Class>] table per class).",
    ]
    for key, field in QuotaSettings.model_fields.items():
        lines.append(f"#   {key}: {field.description}")
    for name in classes or ("Wheelchair",):
        lines.append(f"# [quotas.{_key(name)}]")
        lines.extend(f"# {key} = {toml_value(value)}" for key, value in _EXAMPLE_QUOTA.items())
    return lines


@dataclass(frozen=True, slots=True)
class ProjectCheck:
    """What ``planner init`` found in the Label Studio project."""

    project_id: int
    title: str
    controls: tuple[tuple[str, str, tuple[str, ...]], ...]
    """``(tag, name, classes)`` of each countable control tag."""
    classes: tuple[str, ...]
    unknown_quotas: tuple[str, ...]
    """Quota names that no control defines (nor the hierarchy names as a parent)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "project_id": self.project_id,
            "title": self.title,
            "controls": [
                {"tag": tag, "name": name, "classes": list(labels)}
                for tag, name, labels in self.controls
            ],
            "classes": list(self.classes),
            "unknown_quotas": list(self.unknown_quotas),
        }


def check_project(backend: AnnotationBackend, settings: Settings, project_id: int) -> ProjectCheck:
    """Read the project and its label config; errors (unreachable, token, project, config)
    are the adapter's, each saying what to fix."""
    remote = backend.project(project_id)
    schema = parse_label_config(remote.label_config)
    known = set(schema.classes) | set(settings.planning.hierarchy.values())
    return ProjectCheck(
        project_id=remote.id,
        title=remote.title,
        controls=tuple((c.tag, c.name, c.labels) for c in schema.controls),
        classes=schema.classes,
        unknown_quotas=tuple(name for name in settings.quotas if name not in known),
    )
