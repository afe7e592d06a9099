"""Reading one annotation's results: areas by hand, unknown labels, quarantined regions."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from planner.core.regions import parse_annotation
from planner.core.table import UNKNOWN
from tests.unit.core.ls_json import box, brush, choices, polygon, region, schema


def parse(result: object) -> Any:
    return parse_annotation(result, schema(), task_id=7, annotation_id=70)


def test_rectangle_area_and_rotation() -> None:
    # 10 % x 20 % of a 100 x 50 image: 10 px x 10 px.
    (plain,) = parse([box("Car")]).regions
    (rotated,) = parse([box("Car", rotation=33.0)]).regions
    assert (plain.classes, plain.pixels, plain.control, plain.region_id) == (
        ("Car",),
        100.0,
        "objects",
        "b1",
    )
    assert rotated.pixels == 100.0


def test_triangle_polygon_area() -> None:
    (tri,) = parse([polygon("Road", [[0, 0], [50, 0], [0, 100]])]).regions
    assert tri.pixels == 1250.0  # legs of 50 px and 50 px


def test_brush_pixels_come_from_the_mask() -> None:
    mask = np.zeros((40, 30), dtype=bool)
    mask[5:15, 3:10] = True  # 70 pixels
    (painted,) = parse([brush("Lane", mask)]).regions
    assert painted.pixels == 70.0


def test_ellipse_keypoint_and_choices() -> None:
    result = [
        region(
            "ellipselabels", "blobs", ["Sign"], "e1", x=50, y=50, radiusX=10, radiusY=20, rotation=0
        ),
        region("keypointlabels", "points", ["Head"], "k1", x=5, y=5, width=0.5),
        choices("day", "n"),
    ]
    ellipse, point, chosen = parse(result).regions
    assert ellipse.pixels == pytest.approx(math.pi * 10 * 10)
    assert point.pixels == 0.0
    assert (chosen.classes, chosen.pixels) == (("day", "night"), 0.0)  # alias n is night


def test_plain_labels_with_a_rectangle_tool() -> None:
    item = region("labels", "objects", ["wc"], "l1", x=0, y=0, width=50, height=50)
    (found,) = parse([item]).regions
    assert (found.classes, found.pixels) == (("Wheelchair",), 50 * 25.0)


def test_unknown_labels_are_counted_as_unknown_and_reported() -> None:
    parsed = parse([box("Scooter", rid="b9"), box("Car", rid="b1")])
    assert [r.classes for r in parsed.regions] == [(UNKNOWN,), ("Car",)]
    (unknown,) = parsed.unknown
    assert (
        unknown.task_id,
        unknown.annotation_id,
        unknown.control,
        unknown.label,
        unknown.region_id,
    ) == (
        7,
        70,
        "objects",
        "Scooter",
        "b9",
    )
    assert parsed.label_set == frozenset({UNKNOWN, "Car"})
    assert json.loads(json.dumps(unknown.as_dict()))["label"] == "Scooter"


def test_non_label_results_are_skipped_silently() -> None:
    result = [
        {"type": "relation", "from_id": "b1", "to_id": "b2", "direction": "right"},
        {
            "id": "t",
            "from_name": "notes",
            "to_name": "image",
            "type": "textarea",
            "value": {"text": ["x"]},
        },
        {
            "id": "r",
            "from_name": "tool",
            "to_name": "image",
            "type": "rectangle",
            "value": {"x": 1},
        },
        choices(),  # nothing chosen
    ]
    parsed = parse(result)
    assert (parsed.regions, parsed.problems, parsed.unknown) == ((), (), ())


def test_type_is_inferred_from_the_control_when_missing() -> None:
    item = box("Car")
    del item["type"]
    (found,) = parse([item]).regions
    assert found.pixels == 100.0


def bad_brush() -> dict[str, Any]:
    item = brush("Lane", np.ones((4, 4), dtype=bool))
    item["value"]["rle"] = item["value"]["rle"][:-3]
    return item


def wrong_size_brush() -> dict[str, Any]:
    item = brush("Lane", np.ones((4, 4), dtype=bool))
    item["original_width"] = 5
    return item


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({**box("Car"), "value": None}, "no value object"),
        ({**box("Car"), "value": {"x": 1, "rectanglelabels": "Car"}}, "must be a list"),
        (box("Car", width=float("nan")), "width must be finite"),
        (box("Car", width=-3), "must not be negative"),
        ({**box("Car"), "value": {"rectanglelabels": ["Car"], "width": 5}}, "no value.height"),
        (polygon("Road", [[0, 0], [1, 1]]), "at least 3 points"),
        (polygon("Road", "0,0 1,1 2,2"), "pairs"),  # type: ignore[arg-type]
        (bad_brush(), "truncated"),
        (wrong_size_brush(), "needs 80"),
        ({**box("Car"), "original_width": "wide"}, "must be a number"),
        (region("rectanglelabels", "objects", [], "b0", x=0, y=0, width=1, height=1), "no label"),
    ],
)
def test_malformed_regions_are_quarantined(item: dict[str, Any], message: str) -> None:
    parsed = parse([item, box("Car", rid="ok")])
    assert [r.region_id for r in parsed.regions] == ["ok"]  # the good region still counts
    (bad,) = parsed.problems
    assert bad.left_out == "region"
    assert (bad.task_id, bad.annotation_id) == (7, 70)
    assert message in bad.what
    assert "Label Studio" in bad.fix


def test_missing_image_size_keeps_the_region_without_pixels() -> None:
    item = box("Car")
    del item["original_width"]
    parsed = parse([item])
    (kept,) = parsed.regions
    assert (kept.classes, kept.pixels) == (("Car",), 0.0)
    (note,) = parsed.problems
    assert note.left_out == "pixels"
    assert "original_width" in note.what


def test_brush_without_image_size_uses_its_own_header() -> None:
    item = brush("Lane", np.eye(5, dtype=bool))
    del item["original_width"], item["original_height"]
    (painted,) = parse([item]).regions
    assert painted.pixels == 5.0


def test_unsupported_brush_format_keeps_the_region() -> None:
    item = brush("Lane", np.eye(5, dtype=bool))
    item["value"]["format"] = "png"
    parsed = parse([item])
    assert parsed.regions[0].pixels == 0.0
    assert parsed.problems[0].left_out == "pixels"


def test_brush_beyond_the_pixel_limit_is_quarantined() -> None:
    item = brush("Lane", np.eye(20, dtype=bool))
    parsed = parse_annotation([item], schema(), task_id=1, max_pixels=100)
    assert parsed.regions == ()
    assert "exceeds the limit of 100" in parsed.problems[0].what


@pytest.mark.parametrize("result", [None, {"a": 1}, "[]"])
def test_result_that_is_not_a_list_leaves_the_annotation_out(result: object) -> None:
    parsed = parse(result)
    assert parsed.regions == ()
    assert parsed.problems[0].left_out == "annotation"


def test_item_that_is_not_an_object_is_reported() -> None:
    parsed = parse([42, box("Car")])
    assert len(parsed.regions) == 1
    assert parsed.problems[0].what == "result item 0 is not an object"
