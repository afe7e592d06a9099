"""Quotas and deficits: validation, hand-computed deficits with split targets, invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.quotas import Quota, deficits
from planner.core.table import UNKNOWN, CountTable
from planner.errors import InputError

CLASSES = ("Car", "Pedestrian", "Bicycle", "Wheelchair", UNKNOWN)
SPLITS = ("train", "val", "test")


def _table() -> CountTable:
    table = CountTable.zeros(CLASSES, SPLITS)
    table.images[:] = [
        [4800, 2000, 900, 480, 3],
        [600, 250, 150, 10, 0],
        [600, 250, 150, 10, 0],
    ]
    table.instances[:] = table.images * 2
    return table


def test_total_defaults_to_the_sum_of_split_targets() -> None:
    quota = Quota("Wheelchair", split_targets={"train": 400, "val": 50, "test": 50})
    assert quota.target is None
    assert quota.total == 500
    assert Quota("Car", target=np.int64(7)).total == 7  # type: ignore[arg-type]
    assert Quota("Car", target=900, split_targets={"val": 100}).total == 900


def test_split_targets_are_copied() -> None:
    splits = {"train": 10}
    quota = Quota("Car", split_targets=splits)
    splits["train"] = 10_000
    assert quota.split_targets == {"train": 10}
    assert quota.total == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "neither a target nor split targets"),
        ({"target": -1}, "target must not be negative"),
        ({"target": 2.5}, "target must be a whole number"),
        ({"target": True}, "whole number"),
        ({"split_targets": {"val": -3}}, "split target 'val' must not be negative"),
        (
            {"target": 99, "split_targets": {"train": 90, "val": 10}},
            "sum to 100, above the target 99",
        ),
        ({"target": 1, "per_cycle_min": -1}, "per_cycle_min must not be negative"),
        ({"target": 1, "criticality": 0}, "criticality must be above 0"),
        ({"target": 1, "criticality": -2.0}, "criticality must be above 0"),
        ({"target": 1, "criticality": float("inf")}, "finite"),
        ({"target": 1, "criticality": "high"}, "finite"),
        ({"target": 1, "kind": "boxes"}, "kind 'boxes'"),
    ],
)
def test_quota_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        Quota("Car", **kwargs)  # type: ignore[arg-type]


def test_quota_needs_a_class_name() -> None:
    with pytest.raises(InputError, match="class name"):
        Quota(" ", target=3)


def test_hand_computed_deficits() -> None:
    quotas = [
        Quota("Wheelchair", split_targets={"train": 400, "val": 50, "test": 50}, criticality=2.0),
        Quota("Bicycle", target=1500, per_cycle_min=20),
        Quota("Car", target=5000),
    ]
    status = deficits(quotas, _table())
    wheel = status.status("Wheelchair")
    # 500 images in all meets the total, but val and test each lack 40: 80 more are needed
    assert wheel.count == 500
    assert wheel.deficit == 80
    assert wheel.progress == pytest.approx(1 - 80 / 500)
    assert not wheel.met
    assert wheel.need == pytest.approx(2.0 * 80 / 500)
    assert [(s.split, s.count, s.deficit) for s in wheel.splits] == [
        ("train", 480, 0),
        ("val", 10, 40),
        ("test", 10, 40),
    ]
    bike = status.status("Bicycle")
    assert (bike.count, bike.deficit) == (1200, 300)
    assert bike.progress == pytest.approx(0.8)
    assert bike.need == pytest.approx(0.2)
    car = status.status("Car")
    assert (car.deficit, car.progress, car.met, car.need) == (0, 1.0, True, 0.0)
    assert [s.class_name for s in status.statuses] == ["Car", "Bicycle", "Wheelchair"]
    assert status.need.tolist() == pytest.approx([0.0, 0.0, 0.2, 0.32, 0.0])
    assert status.no_quota == ("Pedestrian",)  # the unknown bucket is not a class
    assert status.overall_progress == pytest.approx((2 * 0.84 + 0.8 + 1.0) / 4)
    assert not status.all_met
    payload = status.as_dict()
    assert payload["classes"]["Wheelchair"]["splits"]["val"] == {
        "count": 10,
        "target": 50,
        "deficit": 40,
    }
    json.dumps(payload, allow_nan=False)


def test_quota_kind_picks_the_counts() -> None:
    status = deficits([Quota("Bicycle", target=2500, kind="instances")], _table())
    assert status.status("Bicycle").count == 2400
    assert status.status("Bicycle").deficit == 100


def test_class_missing_from_the_table_counts_zero() -> None:
    status = deficits([Quota("Stroller", target=40), Quota("Car", target=10)], _table())
    stroller = status.status("Stroller")
    assert (stroller.count, stroller.deficit, stroller.in_table) == (0, 40, False)
    assert status.not_in_table == ("Stroller",)
    assert status.need.shape == (len(CLASSES),)
    assert status.need.sum() == 0.0  # the need vector only covers table classes
    assert [s.class_name for s in status.statuses] == ["Car", "Stroller"]


def test_unknown_class_against_the_schema_is_an_error() -> None:
    with pytest.raises(InputError, match=r"'Strolller'.*known classes: \['Car', 'Stroller'\]"):
        deficits([Quota("Strolller", target=4)], _table(), known_classes={"Car", "Stroller"})
    status = deficits([Quota("Stroller", target=4)], _table(), known_classes=["Car", "Stroller"])
    assert status.not_in_table == ("Stroller",)


def test_unknown_split_counts_zero_and_is_reported() -> None:
    status = deficits([Quota("Car", target=10, split_targets={"holdout": 5})], _table())
    car = status.status("Car")
    assert car.unknown_splits == ("holdout",)
    assert car.deficit == 5


def test_duplicates_and_wrong_types() -> None:
    with pytest.raises(InputError, match=r"more than one quota for \['Car'\]"):
        deficits([Quota("Car", target=1), Quota("Car", target=2)], _table())
    with pytest.raises(InputError, match="Quota objects"):
        deficits([{"class_name": "Car"}], _table())  # type: ignore[list-item]
    with pytest.raises(InputError, match="no quota for class 'Bus'"):
        deficits([Quota("Car", target=1)], _table()).status("Bus")


def test_zero_target_and_no_quotas() -> None:
    status = deficits([Quota("Car", target=0)], _table())
    assert status.status("Car").progress == 1.0
    assert status.status("Car").need == 0.0
    assert status.all_met
    empty = deficits([], _table())
    assert empty.all_met
    assert empty.overall_progress == 1.0
    assert empty.need.tolist() == [0.0] * len(CLASSES)
    assert empty.no_quota == CLASSES[:-1]


@st.composite
def _cases(draw: st.DrawFn) -> tuple[CountTable, list[Quota]]:
    table = CountTable.zeros(("a", "b", "c"), ("train", "val"))
    cells = draw(st.lists(st.integers(0, 60), min_size=6, max_size=6))
    table.images[:] = np.asarray(cells).reshape(2, 3)
    quotas = []
    for name in draw(st.lists(st.sampled_from(["a", "b", "c", "z"]), unique=True)):
        splits = draw(st.dictionaries(st.sampled_from(["train", "val"]), st.integers(0, 50)))
        extra = draw(st.integers(0, 60))
        implicit: bool = draw(st.booleans())
        target = None if splits and implicit else sum(splits.values()) + extra
        crit = draw(st.floats(0.1, 10.0))
        quotas.append(Quota(name, target=target, split_targets=splits, criticality=crit))
    return table, quotas


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_invariants(case: tuple[CountTable, list[Quota]]) -> None:
    table, quotas = case
    status = deficits(quotas, table)
    for s in status.statuses:
        assert s.deficit >= 0
        assert 0.0 <= s.progress <= 1.0
        assert s.met == (s.deficit == 0)
        assert s.met == (s.progress == 1.0)
        assert 0.0 <= s.need <= s.quota.criticality
        assert s.deficit >= s.target - s.count
        assert all(x.deficit >= 0 for x in s.splits)
        if s.target and not s.met:
            assert s.need > 0.0
    assert 0.0 <= status.overall_progress <= 1.0
    assert status.all_met == all(s.met for s in status.statuses)
    assert (status.need >= 0).all()
    json.dumps(status.as_dict(), allow_nan=False)
