"""Counting tasks into a per-split, per-class table: hand-built projects, a brute-force oracle."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.counting import UNASSIGNED, count_tasks, label_task, tabulate
from planner.core.hierarchy import merge_rare_columns
from planner.core.labels import parse_label_config
from planner.core.table import UNKNOWN
from planner.errors import InputError
from planner.examples.traffic import make_example
from tests.unit.core.ls_json import annotation, box, brush, choices, polygon, schema, task

SPLITS = ("train", "val", "test")


def by_data_split(one: Any) -> str | None:
    split: str | None = one["data"].get("split")
    return split


def project() -> list[Any]:
    mask = np.zeros((50, 100), dtype=bool)
    mask[10:17, 20:30] = True  # 70 px
    broken = box("Car", rid="bad")
    broken["value"] = {"rectanglelabels": ["Car"]}  # no geometry
    return [
        task(
            1, annotation([choices("day"), box("Car"), box("Car", 20, 20, rid="b2")]), split="train"
        ),
        task(2, annotation([choices("n"), box("Car"), box("wc", 50, 50, rid="b3")]), split="train"),
        task(
            3,
            annotation(
                [choices("day"), polygon("Road", [[0, 0], [50, 0], [0, 100]]), brush("Road", mask)]
            ),
            split="val",
        ),
        task(4, annotation([], cancelled=True), split="val"),
        task(5, annotation([]), split="test"),
        task(6, annotation([box("Car")])),
        task(7, annotation([broken]), split="train"),
    ]


def test_hand_counted_project() -> None:
    result = count_tasks(project(), schema(), split_of=by_data_split)
    table = result.table
    assert table.splits == (*SPLITS, UNASSIGNED)
    assert table.classes == ("day", "night", "Car", "Wheelchair", "Road", "Lane", "Sign", "Head")
    counts = table.as_dict()
    assert counts["images"]["train"] == {
        **dict.fromkeys(table.classes, 0),
        "day": 1,
        "night": 1,
        "Car": 2,
        "Wheelchair": 1,
    }
    assert counts["instances"]["train"] == {
        **dict.fromkeys(table.classes, 0),
        "day": 1,
        "night": 1,
        "Car": 3,
        "Wheelchair": 1,
    }
    assert counts["pixels"]["train"] == {
        **dict.fromkeys(table.classes, 0),
        "Car": 400,
        "Wheelchair": 1250,
    }
    assert counts["images"]["val"] == {**dict.fromkeys(table.classes, 0), "day": 1, "Road": 1}
    assert counts["instances"]["val"] == {**dict.fromkeys(table.classes, 0), "day": 1, "Road": 2}
    assert counts["pixels"]["val"]["Road"] == 1250 + 70
    assert counts["images"]["test"] == dict.fromkeys(table.classes, 0)
    assert counts["pixels"][UNASSIGNED] == {**dict.fromkeys(table.classes, 0), "Car": 100}
    assert result.labelled == {"train": 2, "val": 1, "test": 1, UNASSIGNED: 1}
    assert result.status_counts() == {
        "labelled": 5,
        "unlabelled": 1,
        "skipped": 0,
        "quarantined": 1,
    }
    assert dict(result.split_of_task) == {
        1: "train",
        2: "train",
        3: "val",
        5: "test",
        6: UNASSIGNED,
    }
    assert [(p.task_id, p.left_out) for p in result.problems] == [(7, "region"), (7, "annotation")]
    assert "no value.x" not in result.problems[0].what  # names what is missing
    assert "no value.width" in result.problems[0].what
    assert UNKNOWN not in table.classes  # the column appears only when needed
    assert json.loads(json.dumps(result.as_dict()))["tasks"]["quarantined"] == 1


def test_multi_label_image_counts_once_per_class() -> None:
    tasks = [
        task(
            1,
            annotation(
                [choices("day", "night"), box("Car"), box("Car", rid="b2"), box("Car", rid="b3")]
            ),
        )
    ]
    table = count_tasks(tasks, schema(), split_of="train").table
    assert table.split("train", "images")[list(table.classes).index("Car")] == 1
    assert table.split("train", "instances")[list(table.classes).index("Car")] == 3
    assert table.totals("images")[:2].tolist() == [1, 1]  # day and night on the same image


def test_unknown_labels_get_a_column_and_a_report() -> None:
    tasks = [
        task(1, annotation([box("Scooter"), box("Car", rid="b2")], ident=10)),
        task(2, annotation([box("Scooter", rid="s2"), choices("dusk")], ident=20)),
    ]
    result = count_tasks(tasks, schema(), split_of={1: "train", 2: "val"})
    assert result.table.classes[-1] == UNKNOWN
    unknown = result.table.classes.index(UNKNOWN)
    assert result.table.images[:, unknown].tolist() == [1, 1, 0]
    assert result.table.instances[:, unknown].tolist() == [1, 2, 0]
    assert result.unknown_summary() == {"objects": {"Scooter": 2}, "time": {"dusk": 1}}
    assert [(u.task_id, u.annotation_id, u.label) for u in result.unknown] == [
        (1, 10, "Scooter"),
        (2, 20, "Scooter"),
        (2, 20, "dusk"),
    ]


def test_config_with_its_own_unknown_class_shares_the_column() -> None:
    config = (
        '<View><Choices name="c" toName="i">'
        '<Choice value="cat"/><Choice value="unknown"/></Choices></View>'
    )
    tasks = [
        task(
            1,
            annotation([{"from_name": "c", "type": "choices", "value": {"choices": ["unknown"]}}]),
        ),
        task(2, annotation([{"from_name": "c", "type": "choices", "value": {"choices": ["dog"]}}])),
    ]
    result = count_tasks(tasks, parse_label_config(config), split_of="train", splits=("train",))
    assert result.table.classes == ("cat", "unknown")
    assert result.table.images.tolist() == [[0, 2]]
    assert [u.label for u in result.unknown] == ["dog"]


def test_split_by_mapping_string_and_errors() -> None:
    tasks = [task(1, annotation([box("Car")])), task(2, annotation([box("Car")]))]
    assert count_tasks(tasks, schema(), split_of={1: "val", 2: "val"}).labelled == {
        "train": 0,
        "val": 2,
        "test": 0,
    }
    only = count_tasks(tasks, schema(), split_of="all", splits=["all"])
    assert only.table.splits == ("all",)
    with pytest.raises(InputError, match="task 1 is assigned to split 'validation'"):
        count_tasks(tasks, schema(), split_of={1: "validation"})
    with pytest.raises(InputError, match="repeat"):
        count_tasks(tasks, schema(), split_of="train", splits=("train", "train"))
    with pytest.raises(InputError, match="non-empty"):
        count_tasks(tasks, schema(), split_of="train", splits=())
    with pytest.raises(InputError, match="merge_on"):
        count_tasks(tasks, schema(), split_of="train", merge_on="boxes")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="resolution policy"):
        count_tasks(tasks, schema(), split_of="train", policy="newest")


def test_unlabelled_tasks_need_no_split() -> None:
    tasks = [task(1, annotation([box("Car")])), task(2)]
    result = count_tasks(tasks, schema(), split_of={1: "train"})
    assert result.table.splits == SPLITS  # task 2 is unlabelled: no unassigned row


def test_duplicate_task_ids_count_once() -> None:
    tasks = [task(1, annotation([box("Car")])), task(1, annotation([box("wc")]))]
    result = count_tasks(tasks, schema(), split_of="train")
    assert result.table.totals("instances").sum() == 1
    assert [t.reason for t in result.tasks] == ["only_annotation", "duplicate_id"]
    assert "appears more than once" in result.problems[0].what


def test_malformed_task_does_not_stop_the_count() -> None:
    tasks: list[Any] = [None, "task", task(2, annotation([box("Car")])), {"annotations": []}]
    result = count_tasks(tasks, schema(), split_of="train")
    assert result.table.totals("instances").sum() == 1
    assert result.status_counts() == {
        "labelled": 1,
        "unlabelled": 0,
        "skipped": 0,
        "quarantined": 3,
    }


def test_rare_children_merge_per_image() -> None:
    birds = schema(hierarchy={"Car": "vehicle", "Wheelchair": "vehicle"})
    tasks = [
        task(1, annotation([box("Car"), box("wc", rid="b2")])),  # both children on one image
        task(2, annotation([box("Car")])),
        task(3, annotation([choices("day")])),
    ]
    result = count_tasks(tasks, birds, split_of="train", min_count=5)
    assert result.merge is not None
    assert result.merge.mapping["Car"] == "vehicle"
    assert result.merge.mapping["Wheelchair"] == "vehicle"
    column = result.table.classes.index("vehicle")
    assert result.table.split("train", "images")[column] == 2  # image 1 counted once
    assert result.table.split("train", "instances")[column] == 3
    assert "Car" not in result.table.classes
    assert result.tasks[0].classes == ("Car", "Wheelchair")  # task labels stay unmerged
    plain = count_tasks(tasks, birds, split_of="train")
    upper = merge_rare_columns(plain.table, birds.hierarchy, min_count=5).table
    assert upper.split("train", "images")[upper.classes.index("vehicle")] == 3  # column sum
    override = count_tasks(
        tasks, schema(), split_of="train", hierarchy={"Wheelchair": "vehicle"}, min_count=5
    )
    assert override.merge is not None
    assert override.merge.mapping == {
        **override.merge.mapping,
        "Car": "Car",
        "Wheelchair": "vehicle",
    }
    assert override.table.classes[-1] == "vehicle"
    with pytest.raises(InputError, match="own parent"):
        count_tasks(tasks, schema(), split_of="train", hierarchy={"Car": "Car"}, min_count=5)
    kept = count_tasks(tasks, birds, split_of="train", min_count=1)
    assert kept.merge is not None
    assert kept.merge.merged == ()
    assert kept.table.classes == plain.table.classes


def test_policy_reaches_every_task() -> None:
    tasks = [
        task(
            1,
            annotation([box("Car")], ident=1, hours=1),
            annotation([box("Car")], ident=2, hours=2),
            annotation([box("wc")], ident=3, hours=3),
        )
    ]
    default = count_tasks(tasks, schema(), split_of="train")
    latest = count_tasks(tasks, schema(), split_of="train", policy="latest")
    assert default.tasks[0].classes == ("Car",)
    assert latest.tasks[0].classes == ("Wheelchair",)
    assert latest.as_dict()["policy"] == "latest"


def test_bundled_traffic_example() -> None:
    example = make_example(labelled=300, pool=10)
    schema_ = parse_label_config(example.label_config)
    result = count_tasks(
        example.tasks, schema_, split_of=lambda t: "train" if t["id"] % 4 else "val"
    )
    # Oracle: for single-choice tasks, ground truth else the most frequent label.
    expected: Counter[tuple[str, str]] = Counter()
    for one in example.tasks:
        kept = [
            a for a in one["annotations"] if not a["was_cancelled"] and "value" in a["result"][0]
        ]
        if not kept:
            continue
        truth = [a for a in kept if a["ground_truth"]]
        votes = Counter(a["result"][0]["value"]["choices"][0] for a in truth or kept)
        label = votes.most_common(1)[0][0]
        name = label if label in example.classes else UNKNOWN
        expected["train" if one["id"] % 4 else "val", name] += 1
    table = result.table
    for (split, name), count in expected.items():
        assert table.split(split, "images")[table.classes.index(name)] == count
    assert int(table.images.sum()) == sum(expected.values())
    assert [(u.task_id, u.label) for u in result.unknown] == [(18, "Scooter")]
    assert [t.task_id for t in result.tasks if t.status == "quarantined"] == [24]
    assert result.tasks[11].reason == "ground_truth"


@st.composite
def random_projects(draw: st.DrawFn) -> list[tuple[int, str | None, list[tuple[str, int, int]]]]:
    """Tasks as (id, split, boxes); a box is (label, width %, height %) on a 100 x 50 image."""
    out = []
    for ident in range(draw(st.integers(0, 12))):
        split = draw(st.sampled_from([*SPLITS, None]))
        boxes = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["Car", "wc", "Scooter"]),
                    st.integers(0, 100),
                    st.integers(0, 100),
                ),
                max_size=5,
            )
        )
        out.append((ident, split, boxes))
    return out


@settings(max_examples=60, deadline=None)
@given(random_projects())
def test_counts_match_brute_force(
    project_: list[tuple[int, str | None, list[tuple[str, int, int]]]],
) -> None:
    tasks = [
        task(
            i,
            annotation([box(lbl, w, h, rid=f"b{k}") for k, (lbl, w, h) in enumerate(boxes)]),
            split=split,
        )
        for i, split, boxes in project_
    ]
    table = count_tasks(tasks, schema(), split_of=by_data_split).table
    names = {"Car": "Car", "wc": "Wheelchair", "Scooter": UNKNOWN}
    for i, split, boxes in project_:
        del i
        row = table.splits.index(split or UNASSIGNED)
        for name in {names[lbl] for lbl, _, _ in boxes}:
            column = table.classes.index(name)
            same_split = [b for _, s, b in project_ if (s or UNASSIGNED) == (split or UNASSIGNED)]
            assert table.images[row, column] == sum(
                any(names[x[0]] == name for x in b) for b in same_split
            )
            assert table.instances[row, column] == sum(
                names[x[0]] == name for b in same_split for x in b
            )
            # w % of 100 px times h % of 50 px = w * h / 2 px per box, rounded once per task.
            assert table.pixels[row, column] == sum(
                round(sum(x[1] * x[2] / 2 for x in b if names[x[0]] == name)) for b in same_split
            )
    assert int(table.images.sum()) == sum(len({names[x[0]] for x in b}) for _, _, b in project_)
    assert (UNKNOWN in table.classes) == any(x[0] == "Scooter" for _, _, b in project_ for x in b)


def test_tabulate_needs_every_split_and_class() -> None:
    labels = [label_task(task(1, annotation([box("Car")])), schema())]
    table = tabulate(labels, {1: "val"}, classes=("Car",), splits=("train", "val"))
    assert table.instances.tolist() == [[0], [1]]
    with pytest.raises(InputError, match="task 1 has no split"):
        tabulate(labels, {}, classes=("Car",), splits=("train",))
    with pytest.raises(InputError, match="class 'Car', which maps outside"):
        tabulate(labels, {1: "train"}, classes=("Bus",), splits=("train",))
