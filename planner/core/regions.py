"""One annotation's ``result`` list as counted regions, with its problems and unknown labels.

Each labelled result item is one region: a box, polygon, ellipse, brush mask, key point, or a
classification (``choices``). A region counts one instance per distinct label; its pixels are
the shape's area (brush: mask pixels; choices and key points: none). Items that are not labels
(relations, text areas, ratings) are skipped. A malformed item is quarantined: it counts
nothing and becomes a ``Problem``; the rest of the annotation still counts. A label outside the
config counts under ``UNKNOWN`` and is reported as an ``UnknownLabel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from planner.core.geometry import (
    as_points,
    ellipse_area,
    image_size,
    polygon_area,
    rectangle_area,
)
from planner.core.labels import LabelSchema
from planner.core.rle import DEFAULT_MAX_PIXELS, count_mask_pixels
from planner.core.table import UNKNOWN
from planner.errors import AnnotationError

TaskId = int | str
AnnotationId = int | str
LeftOut = Literal["task", "annotation", "region", "pixels", "nothing"]
"""What a problem kept out of the counts: a whole task, an annotation, a region, only the
region's pixels, or nothing (a note)."""

_LABEL_TYPES = (
    "choices",
    "rectanglelabels",
    "polygonlabels",
    "brushlabels",
    "ellipselabels",
    "keypointlabels",
    "labels",
)
_SHAPES = {
    "rectanglelabels": "rectangle",
    "polygonlabels": "polygon",
    "ellipselabels": "ellipse",
    "brushlabels": "brush",
}
_FIX = {
    "task": "fix the task in Label Studio or drop it from the export",
    "annotation": "open the task in Label Studio and re-submit the annotation",
    "region": "open the task in Label Studio and fix or delete the region",
    "pixels": "re-save the region in Label Studio so it records the image size",
    "nothing": "no action needed unless this is unexpected",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the data that could not be counted as given, and what to do about it."""

    task_id: TaskId | None
    what: str
    fix: str
    left_out: LeftOut
    annotation_id: AnnotationId | None = None
    region_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def problem(
    task_id: TaskId | None,
    what: str,
    left_out: LeftOut,
    *,
    annotation_id: AnnotationId | None = None,
    region_id: str | None = None,
) -> Problem:
    """A ``Problem`` with the standard advice for what it left out."""
    return Problem(task_id, what, _FIX[left_out], left_out, annotation_id, region_id)


@dataclass(frozen=True, slots=True)
class UnknownLabel:
    """A label a result used that the label config does not define (counted as unknown)."""

    task_id: TaskId | None
    control: str
    label: str
    annotation_id: AnnotationId | None = None
    region_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Region:
    """A counted region: its classes (``UNKNOWN`` for labels outside the config) and area."""

    control: str
    classes: tuple[str, ...]
    pixels: float
    region_id: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedAnnotation:
    """The regions of one annotation and what went wrong reading it."""

    annotation_id: AnnotationId | None
    regions: tuple[Region, ...]
    unknown: tuple[UnknownLabel, ...]
    problems: tuple[Problem, ...]

    @property
    def label_set(self) -> frozenset[str]:
        """The classes present, for comparing annotators."""
        return frozenset(name for region in self.regions for name in region.classes)


class _PixelsUnknownError(Exception):
    """The region counts, but its area cannot be computed (a note, not a quarantine)."""


def _label_type(item: Mapping[str, object], schema: LabelSchema) -> str | None:
    kind = item.get("type")
    if isinstance(kind, str):
        return kind.lower() if kind.lower() in _LABEL_TYPES else None
    control = schema.control(str(item.get("from_name")))
    if control is not None:
        return control.result_type
    value = item.get("value")
    if isinstance(value, Mapping):
        return next((key for key in _LABEL_TYPES if key in value), None)
    return None


_KEYS_TO_SHAPE = (("rle", "brush"), ("points", "polygon"), ("radiusX", "ellipse"))


def _shape(kind: str, value: Mapping[str, object]) -> str | None:
    if kind in _SHAPES:
        return _SHAPES[kind]
    if kind != "labels":
        return None
    found = next((shape for key, shape in _KEYS_TO_SHAPE if key in value), None)
    if found is None and "width" in value and "height" in value:
        found = "rectangle"
    return found  # None: a key point or a text span, which has no area


def _brush_pixels(value: Mapping[str, object], item: Mapping[str, object], max_pixels: int) -> int:
    if value.get("format", "rle") != "rle":
        raise _PixelsUnknownError(f"brush format {value.get('format')!r} is not supported")
    if "rle" not in value:
        raise AnnotationError("brush region has no value.rle")
    width, height = item.get("original_width"), item.get("original_height")
    if width is None or height is None:
        # The stream's own header still bounds and sizes it; only the image check is lost.
        return count_mask_pixels(value["rle"], max_pixels=max_pixels)
    w, h = image_size(width, height)
    if not (w.is_integer() and h.is_integer()):
        raise AnnotationError(f"brush image size {width}x{height} is not whole pixels")
    return count_mask_pixels(value["rle"], width=int(w), height=int(h), max_pixels=max_pixels)


def _pixels(
    kind: str, value: Mapping[str, object], item: Mapping[str, object], limit: int
) -> float:
    shape = _shape(kind, value)
    if shape is None:
        return 0.0
    if shape == "brush":
        return float(_brush_pixels(value, item, limit))
    needed = {"rectangle": ("width", "height"), "ellipse": ("radiusX", "radiusY")}
    for key in needed.get(shape, ("points",)):
        if key not in value:
            raise AnnotationError(f"{kind} region has no value.{key}")
    points = as_points(value["points"]) if shape == "polygon" else None
    if item.get("original_width") is None or item.get("original_height") is None:
        raise _PixelsUnknownError("region has no original_width/original_height")
    w, h = image_size(item["original_width"], item["original_height"])
    if points is not None:
        return polygon_area(points, image_width=w, image_height=h)
    if shape == "ellipse":
        return ellipse_area(value["radiusX"], value["radiusY"], image_width=w, image_height=h)
    return rectangle_area(value["width"], value["height"], image_width=w, image_height=h)


def _labels(kind: str, value: Mapping[str, object]) -> list[str]:
    labels = value.get(kind)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise AnnotationError(f"value.{kind} must be a list of label strings, got {labels!r}")
    return list(dict.fromkeys(labels))


@dataclass(slots=True)
class _Sink:
    """Where parsing one annotation puts what it finds."""

    task_id: TaskId | None
    annotation_id: AnnotationId | None
    regions: list[Region]
    unknown: list[UnknownLabel]
    problems: list[Problem]

    def report(self, what: str, left_out: LeftOut, region_id: str | None = None) -> None:
        self.problems.append(
            problem(
                self.task_id, what, left_out, annotation_id=self.annotation_id, region_id=region_id
            )
        )


def _parse_item(
    item: Mapping[str, object], kind: str, schema: LabelSchema, sink: _Sink, max_pixels: int
) -> None:
    raw_id = item.get("id")
    region_id = None if raw_id is None else str(raw_id)
    control = str(item.get("from_name", ""))
    try:
        value = item.get("value")
        if not isinstance(value, Mapping):
            raise AnnotationError(f"{kind} result has no value object")
        labels = _labels(kind, value)
        if not labels:
            if kind == "choices":
                return  # nothing chosen is a valid answer, not an error
            raise AnnotationError(f"{kind} region has no label")
        try:
            pixels = _pixels(kind, value, item, max_pixels)
        except _PixelsUnknownError as note:
            pixels = 0.0
            sink.report(f"{kind} region counted without pixels: {note}", "pixels", region_id)
    except AnnotationError as error:
        sink.report(f"{kind} region from {control!r} quarantined: {error}", "region", region_id)
        return
    classes: list[str] = []
    for label in labels:
        name = schema.resolve(control, label)
        if name is None:
            sink.unknown.append(
                UnknownLabel(sink.task_id, control, label, sink.annotation_id, region_id)
            )
            name = UNKNOWN
        if name not in classes:
            classes.append(name)
    sink.regions.append(Region(control, tuple(classes), pixels, region_id))


def parse_annotation(
    result: object,
    schema: LabelSchema,
    *,
    task_id: TaskId | None,
    annotation_id: AnnotationId | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ParsedAnnotation:
    """Reads one annotation's ``result`` list; never raises for bad data, reports it instead."""
    sink = _Sink(task_id, annotation_id, [], [], [])
    if not isinstance(result, list):
        sink.report("annotation result is not a list", "annotation")
    else:
        for position, item in enumerate(result):
            if not isinstance(item, Mapping):
                sink.report(f"result item {position} is not an object", "region")
                continue
            kind = _label_type(item, schema)
            if kind is not None:
                _parse_item(item, kind, schema, sink, max_pixels)
    return ParsedAnnotation(
        annotation_id, tuple(sink.regions), tuple(sink.unknown), tuple(sink.problems)
    )
