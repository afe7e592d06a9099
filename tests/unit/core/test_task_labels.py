"""One task's labels: which annotation counts, per-class instances and pixels, broken tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.core.table import UNKNOWN
from planner.core.task_labels import label_task
from tests.unit.core.ls_json import annotation, box, brush, choices, polygon, region, schema, task


def test_instances_and_pixels_per_class() -> None:
    mask = np.zeros((50, 100), dtype=bool)
    mask[0:10, 0:30] = True  # 300 px of Road painted with the brush
    result = [
        choices("day"),
        box("Car", rid="b1"),  # 10 x 10 px
        box("Car", 20, 20, rid="b2"),  # 20 x 10 px
        box("wc", 50, 50, rid="b3"),  # alias of Wheelchair: 50 x 25 px
        polygon("Road", [[0, 0], [50, 0], [0, 100]]),  # 1250 px, same class from another control
        brush("Road", mask),
    ]
    labels = label_task(task(5, annotation(result, ident=50)), schema())
    assert (labels.task_id, labels.status, labels.reason, labels.annotation_id) == (
        5,
        "labelled",
        "only_annotation",
        50,
    )
    assert labels.classes == ("day", "Car", "Wheelchair", "Road")  # config order
    assert labels.instances == {"day": 1, "Car": 2, "Wheelchair": 1, "Road": 2}
    assert labels.pixels == {"day": 0, "Car": 300, "Wheelchair": 1250, "Road": 1550}
    assert labels.problems == ()


def test_pixels_are_rounded_once_per_task() -> None:
    ellipse = region("ellipselabels", "blobs", ["Sign"], "e", x=5, y=5, radiusX=10, radiusY=20)
    twice = [ellipse, {**ellipse, "id": "e2"}]  # 2 x pi x 100 = 628.3 px
    labels = label_task(task(1, annotation(twice)), schema())
    assert labels.pixels == {"Sign": 628}


def test_ground_truth_wins_over_majority() -> None:
    labels = label_task(
        task(
            1,
            annotation([box("Car")], ident=1, hours=1),
            annotation([box("Car")], ident=2, hours=2),
            annotation([box("wc")], ident=3, hours=0, truth=True),
        ),
        schema(),
    )
    assert (labels.reason, labels.annotation_id, labels.classes) == (
        "ground_truth",
        3,
        ("Wheelchair",),
    )


def test_majority_then_tie_goes_to_latest() -> None:
    majority = task(
        1,
        annotation([choices("day")], ident=1, hours=1),
        annotation([choices("night")], ident=2, hours=5),
        annotation([choices("day")], ident=3, hours=2),
    )
    labels = label_task(majority, schema())
    assert (labels.reason, labels.annotation_id, labels.classes) == ("majority", 3, ("day",))
    tie = task(
        2,
        annotation([choices("day")], ident=1, hours=1),
        annotation([choices("night")], ident=2, hours=5),
    )
    labels = label_task(tie, schema())
    assert (labels.reason, labels.annotation_id, labels.classes) == ("tie_latest", 2, ("night",))
    latest = label_task(majority, schema(), policy="latest")
    assert (latest.reason, latest.annotation_id) == ("latest", 2)


def test_cancelled_annotations_count_nothing() -> None:
    one = task(
        1,
        annotation([box("Car")], ident=1, hours=1),
        annotation([box("wc")], ident=2, hours=9, cancelled=True),
    )
    labels = label_task(one, schema(), policy="latest")
    assert (labels.annotation_id, labels.classes) == (1, ("Car",))


@pytest.mark.parametrize(
    ("the_task", "status", "reason"),
    [
        (
            task(1, annotation([], cancelled=True), annotation([], ident=2, cancelled=True)),
            "unlabelled",
            "all_cancelled",
        ),
        (task(1), "unlabelled", "no_annotations"),
        (  # a skip under skip_queue "Ignore skipped": Label Studio serves it no more
            {**task(1, annotation([], cancelled=True)), "is_labeled": True},
            "skipped",
            "finished_unlabelled",
        ),
        ({"id": 1, "data": {}, "annotations": None}, "unlabelled", "no_annotations"),
        ({"id": 1, "data": {}}, "unlabelled", "no_annotations"),
    ],
)
def test_unlabelled_tasks(the_task: dict[str, object], status: str, reason: str) -> None:
    labels = label_task(the_task, schema())
    assert (labels.status, labels.reason, labels.classes, labels.problems) == (
        status,
        reason,
        (),
        (),
    )


def test_empty_submitted_annotation_is_a_background_image() -> None:
    labels = label_task(task(3, annotation([])), schema())
    assert (labels.status, labels.classes, labels.instances) == ("labelled", (), {})


def test_unknown_labels_of_the_chosen_annotation_are_reported() -> None:
    labels = label_task(task(4, annotation([box("Scooter"), choices("dusk")], ident=40)), schema())
    assert labels.classes == (UNKNOWN,)
    assert labels.instances == {UNKNOWN: 2}
    assert labels.pixels == {UNKNOWN: 100}
    assert [(u.control, u.label) for u in labels.unknown] == [
        ("objects", "Scooter"),
        ("time", "dusk"),
    ]


@pytest.mark.parametrize(
    ("the_task", "what"),
    [
        ([1, 2], "task is a list, not an object"),
        ({"data": {}, "annotations": []}, "task has no id"),
        ({"id": True, "annotations": []}, "task has no id"),
        ({"id": 9, "annotations": {"result": []}}, "task annotations is not a list"),
    ],
)
def test_broken_tasks_are_quarantined(the_task: object, what: str) -> None:
    labels = label_task(the_task, schema())
    assert (labels.status, labels.reason) == ("quarantined", "malformed_task")
    assert labels.problems[0].what == what
    assert labels.problems[0].left_out == "task"


def test_annotation_with_nothing_readable_is_not_a_background_image() -> None:
    broken = box("Car")
    broken["value"] = None
    labels = label_task(task(6, annotation([broken], ident=60)), schema())
    assert (labels.status, labels.reason) == ("quarantined", "all_annotations_malformed")
    assert [p.left_out for p in labels.problems] == ["region", "annotation"]
    labels = label_task(
        task(6, annotation([broken], ident=60), annotation([box("wc")], ident=61)), schema()
    )
    assert (labels.status, labels.annotation_id, labels.classes) == (
        "labelled",
        61,
        ("Wheelchair",),
    )


def test_non_object_annotation_and_bad_result() -> None:
    bad_result = {**annotation([]), "result": "oops", "id": 2}
    labels = label_task(
        {"id": 8, "annotations": ["x", bad_result, annotation([box("Car")], ident=3)]}, schema()
    )
    assert (labels.status, labels.annotation_id) == ("labelled", 3)
    assert [p.what for p in labels.problems] == [
        "annotation 0 is not an object",
        "annotation result is not a list",
    ]


def test_unreadable_time_is_a_note_and_orders_as_missing() -> None:
    early = annotation([box("Car")], ident=1, hours=1)
    garbled = {**annotation([box("wc")], ident=2), "updated_at": "last tuesday", "created_at": None}
    labels = label_task(task(1, early, garbled), schema(), policy="latest")
    assert labels.annotation_id == 1
    (note,) = labels.problems
    assert (note.left_out, note.annotation_id) == ("nothing", 2)
    assert "'last tuesday'" in note.what


def test_as_dict_is_json_ready() -> None:
    labels = label_task(
        task(4, annotation([box("Scooter"), box("Car", rid="b2")], ident=40)), schema()
    )
    data = json.loads(json.dumps(labels.as_dict()))
    assert data["instances"] == {"Car": 1, UNKNOWN: 1}
    assert data["unknown"][0]["label"] == "Scooter"
