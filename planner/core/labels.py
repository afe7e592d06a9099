"""The label model: classes read from a Label Studio label config.

Countable control tags and their kinds:

    Choices                      classification   (<Choice value=...>)
    RectangleLabels, EllipseLabels  detection
    PolygonLabels                polygon
    BrushLabels                  segmentation
    KeyPointLabels               keypoint
    Labels                       the kind of the Rectangle/Ellipse/Polygon/Brush/KeyPoint tool
                                 drawing on the same object, detection when there is none

A class is a label's ``value``. Results carry the ``alias`` instead when one is set, so each
control keeps an alias -> value map. **The same value in two controls is one class** (a
"Road" in BrushLabels and in PolygonLabels counts together); ``classes`` lists every value once,
in document order. A control without static labels (``value="$options"``) is kept, and its
results count as unknown. Configs are untrusted: DOCTYPE and entity declarations are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

from planner.core.hierarchy import (
    ClassMerge,
    TableMerge,
    merge_rare_children,
    merge_rare_columns,
    validate_hierarchy,
)
from planner.errors import LabelConfigError

__all__ = [
    "ClassMerge",
    "ControlKind",
    "ControlTag",
    "LabelSchema",
    "TableMerge",
    "merge_rare_children",
    "merge_rare_columns",
    "object_fields",
    "parse_label_config",
]

ControlKind = Literal["classification", "detection", "polygon", "segmentation", "keypoint"]
_CONTROLS: dict[str, tuple[ControlKind | None, str]] = {
    "choices": ("classification", "choice"),
    "rectanglelabels": ("detection", "label"),
    "ellipselabels": ("detection", "label"),
    "polygonlabels": ("polygon", "label"),
    "brushlabels": ("segmentation", "label"),
    "keypointlabels": ("keypoint", "label"),
    "labels": (None, "label"),
}
_TOOLS: dict[str, ControlKind] = {
    "rectangle": "detection",
    "ellipse": "detection",
    "polygon": "polygon",
    "brush": "segmentation",
    "keypoint": "keypoint",
}


@dataclass(frozen=True, slots=True)
class ControlTag:
    """One control tag of the config: where its results come from and which labels it has."""

    tag: str
    name: str
    to_name: str
    kind: ControlKind
    labels: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    """alias -> label value, for results that carry the alias."""
    _lookup: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One dict for label and alias lookups; a label's own value wins over an alias.
        lookup = dict(self.aliases)
        lookup.update((label, label) for label in self.labels)
        object.__setattr__(self, "_lookup", lookup)

    @property
    def result_type(self) -> str:
        """The ``type`` of this control's results (``rectanglelabels``, ``choices``, ...)."""
        return self.tag.lower()

    def resolve(self, label: str) -> str | None:
        """The class a result label stands for (value first, then alias), or None."""
        return self._lookup.get(label)

    def as_dict(self) -> dict[str, object]:
        return {
            "tag": self.tag,
            "name": self.name,
            "to_name": self.to_name,
            "kind": self.kind,
            "labels": list(self.labels),
            "aliases": dict(self.aliases),
        }


@dataclass(frozen=True, slots=True)
class LabelSchema:
    """Controls, the ordered unique classes they define, and an optional child -> parent map."""

    controls: tuple[ControlTag, ...]
    classes: tuple[str, ...]
    hierarchy: Mapping[str, str] = field(default_factory=dict)
    _by_name: dict[str, ControlTag] = field(init=False, repr=False, compare=False)
    _position: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise LabelConfigError(f"class names repeat in {self.classes}")
        names = [control.name for control in self.controls]
        if len(set(names)) != len(names):
            raise LabelConfigError(f"control names repeat in {names}; give each a unique name")
        validate_hierarchy(self.hierarchy, self.classes)
        # Lookups done once per result item: keep them O(1) for configs with many labels.
        object.__setattr__(self, "_by_name", {c.name: c for c in self.controls})
        object.__setattr__(self, "_position", {c: i for i, c in enumerate(self.classes)})

    @property
    def parent_only(self) -> tuple[str, ...]:
        """Parents named by the hierarchy that no control defines."""
        return validate_hierarchy(self.hierarchy, self.classes)

    def control(self, name: str) -> ControlTag | None:
        """The control with this ``name`` (a result's ``from_name``), or None."""
        return self._by_name.get(name)

    def position(self, name: str) -> int:
        """Index of a class in ``classes``; names outside it sort after all of them."""
        return self._position.get(name, len(self.classes))

    def resolve(self, control_name: str, label: str) -> str | None:
        """The class of a result label; a control the config lacks is matched by every control."""
        control = self.control(control_name)
        candidates = (control,) if control is not None else self.controls
        return next((c for c in (x.resolve(label) for x in candidates) if c is not None), None)

    def with_hierarchy(self, hierarchy: Mapping[str, str]) -> LabelSchema:
        """The same schema with another (validated) hierarchy."""
        return LabelSchema(controls=self.controls, classes=self.classes, hierarchy=dict(hierarchy))

    def as_dict(self) -> dict[str, object]:
        return {
            "controls": [control.as_dict() for control in self.controls],
            "classes": list(self.classes),
            "hierarchy": dict(self.hierarchy),
            "parent_only": list(self.parent_only),
        }


def _refuse(what: str) -> LabelConfigError:
    return LabelConfigError(
        f"label config contains a {what}; label configs may not declare DTDs or entities "
        "(untrusted input): remove it"
    )


def _parse_xml(config: str) -> Element:
    """Parses with expat, refusing DOCTYPE and entity declarations before they take effect."""
    builder = TreeBuilder()
    parser = expat.ParserCreate()

    def on_doctype(*_: object) -> None:
        raise _refuse("DOCTYPE declaration")

    def on_entity(*_: object) -> None:
        raise _refuse("entity declaration")

    parser.StartDoctypeDeclHandler = on_doctype
    parser.EntityDeclHandler = on_entity
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(config, True)
    except expat.ExpatError as error:
        raise LabelConfigError(
            f"label config is not well-formed XML ({error}); copy it again from the "
            "project's Labeling Interface settings"
        ) from error
    return builder.close()


def _attr(element: Element, name: str) -> str | None:
    """An attribute by case-insensitive name (Label Studio accepts ``toname`` too)."""
    lowered = name.lower()
    return next((v for k, v in element.attrib.items() if k.lower() == lowered), None)


def _labels(control: Element, child_tag: str, name: str) -> tuple[list[str], dict[str, str]]:
    values: list[str] = []
    aliases: dict[str, str] = {}
    for element in control.iter():
        if element is control or element.tag.lower() != child_tag:
            continue
        value = _attr(element, "value")
        if not value:
            raise LabelConfigError(
                f"control {name!r} has a <{element.tag}> without a value; "
                "give every label a value attribute"
            )
        if value not in values:
            values.append(value)
        alias = _attr(element, "alias")
        if alias and alias != value:
            aliases.setdefault(alias, value)
    return values, aliases


def _tool_kinds(root: Element) -> dict[str, ControlKind]:
    """Kind of the first drawing tool bound to each object, for plain ``<Labels>``."""
    kinds: dict[str, ControlKind] = {}
    for element in root.iter():
        kind = _TOOLS.get(element.tag.lower())
        target = _attr(element, "toName")
        if kind is not None and target:
            for name in target.split(","):
                kinds.setdefault(name.strip(), kind)
    return kinds


def parse_label_config(config: str, *, hierarchy: Mapping[str, str] | None = None) -> LabelSchema:
    """Reads the countable controls and classes of a label config XML string.

    Raises ``LabelConfigError`` for malformed or unsafe XML, or a config with no countable
    control holding at least one label.
    """
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("label config is empty; pass the project's label_config XML")
    root = _parse_xml(config)
    tools = _tool_kinds(root)
    controls: list[ControlTag] = []
    found: list[str] = []
    for element in root.iter():
        found.append(element.tag)
        spec = _CONTROLS.get(element.tag.lower())
        if spec is None:
            continue
        name = _attr(element, "name")
        if not name:
            raise LabelConfigError(f"a <{element.tag}> has no name attribute; name it")
        to_name = _attr(element, "toName") or ""
        kind, child_tag = spec
        labels, aliases = _labels(element, child_tag, name)
        controls.append(
            ControlTag(
                tag=element.tag,
                name=name,
                to_name=to_name,
                kind=kind or tools.get(to_name.split(",")[0].strip(), "detection"),
                labels=tuple(labels),
                aliases=aliases,
            )
        )
    classes = tuple(dict.fromkeys(label for control in controls for label in control.labels))
    if not classes:
        seen = ", ".join(dict.fromkeys(found))
        empty = [f"{c.tag} {c.name!r}" for c in controls]
        detail = f"; {', '.join(empty)} list no static labels" if empty else ""
        raise LabelConfigError(
            f"label config has no countable class: found tags {seen}{detail}; the planner needs "
            "a Choices, RectangleLabels, PolygonLabels, BrushLabels, EllipseLabels, "
            "KeyPointLabels or Labels control with at least one <Choice>/<Label value=...>"
        )
    return LabelSchema(controls=tuple(controls), classes=classes, hierarchy=dict(hierarchy or {}))


def object_fields(config: str) -> dict[str, str]:
    """Object tag name -> the task data key it shows, in document order.

    ``<Image name="image" value="$image"/>`` gives ``{"image": "image"}``: a control's
    ``toName`` names the object, the object's ``$value`` the data field holding the image URL.
    Tags with a literal value (labels, choices) are left out.
    """
    found: dict[str, str] = {}
    for element in _parse_xml(config).iter():
        name, value = _attr(element, "name"), _attr(element, "value") or ""
        if name and value.startswith("$") and element.tag.lower() not in _CONTROLS:
            found.setdefault(name, value[1:])
    return found
