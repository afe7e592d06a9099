"""Per-cycle slots for rare classes: minimums first, scaled to the batch, capped by deficits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.quota_cycle import cycle_plan, cycle_targets
from planner.core.quotas import Quota, deficits
from planner.core.table import CountTable
from planner.errors import InputError


def test_minimums_fit_and_are_capped_by_deficits() -> None:
    slots = cycle_targets(20, [5, 10, 0, 3], [100, 4, 50, 0])
    assert slots.tolist() == [5, 4, 0, 0]
    assert slots.dtype == np.int64


def test_minimums_above_the_batch_are_scaled_proportionally() -> None:
    assert cycle_targets(20, [30, 10, 10], [99, 99, 99]).tolist() == [12, 4, 4]
    # shares 9.44, 4.72, 2.83 -> floors 9 + 4 + 2 = 15 of 17; the two largest rests get one more
    assert cycle_targets(17, [10, 5, 3], [99, 99, 99]).tolist() == [9, 5, 3]


def test_ties_go_to_priority_then_class_order() -> None:
    assert cycle_targets(2, [1, 1, 1], [9, 9, 9]).tolist() == [1, 1, 0]
    assert cycle_targets(2, [1, 1, 1], [9, 9, 9], priority=[0, 0, 5]).tolist() == [1, 0, 1]
    assert cycle_targets(0, [4, 4], [9, 9]).tolist() == [0, 0]


def test_plan_from_quota_status() -> None:
    table = CountTable.zeros(("Car", "Bicycle", "Wheelchair"), ("train",))
    table.images[:] = [[5000, 1400, 290]]
    quotas = [
        Quota("Car", target=5000, per_cycle_min=10),  # met: no slots
        Quota("Bicycle", target=1500, per_cycle_min=40),
        Quota("Wheelchair", target=300, per_cycle_min=30, criticality=3.0),  # lacks 10
        Quota("Stroller", target=50, per_cycle_min=10),  # not in the table: not planned
    ]
    plan = cycle_plan(deficits(quotas, table), batch_size=100)
    assert plan.wanted.tolist() == [0, 40, 10]
    assert plan.slots.tolist() == [0, 40, 10]
    assert not plan.scaled
    assert plan.leftover == 50
    tight = cycle_plan(deficits(quotas, table), batch_size=25)
    assert tight.scaled
    assert tight.slots.tolist() == [0, 20, 5]
    assert tight.leftover == 0
    payload = tight.as_dict()
    assert payload["classes"] == {
        "Bicycle": {"wanted": 40, "slots": 20},
        "Wheelchair": {"wanted": 10, "slots": 5},
    }
    json.dumps(payload, allow_nan=False)


@pytest.mark.parametrize(
    ("batch", "mins", "lacks", "priority", "message"),
    [
        (-1, [1], [1], None, "batch_size"),
        (2.5, [1], [1], None, "batch_size"),
        (True, [1], [1], None, "batch_size"),
        (5, [1, 2], [1], None, "differ in length"),
        (5, [-1], [1], None, "negative"),
        (5, [1], [np.nan], None, "NaN"),
        (5, [1], [1], [np.inf], "priority"),
        (5, [1], [1], [1, 2], "priority"),
    ],
)
def test_bad_input(
    batch: object, mins: object, lacks: object, priority: object, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        cycle_targets(batch, mins, lacks, priority=priority)  # type: ignore[arg-type]


_vectors = st.integers(1, 8).flatmap(
    lambda c: st.tuples(
        st.lists(st.integers(0, 500), min_size=c, max_size=c),
        st.lists(st.integers(0, 500), min_size=c, max_size=c),
        st.lists(st.floats(0.0, 5.0), min_size=c, max_size=c),
    )
)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 600), _vectors)
def test_invariants(batch: int, vectors: tuple[list[int], list[int], list[float]]) -> None:
    mins, lacks, priority = vectors
    slots = cycle_targets(batch, mins, lacks, priority=priority)
    wanted = np.minimum(mins, lacks)
    assert slots.sum() <= batch
    assert (slots >= 0).all()
    assert (slots <= wanted).all()
    assert (slots <= np.asarray(lacks)).all()
    if wanted.sum() <= batch:
        assert slots.tolist() == wanted.tolist()
    else:
        assert slots.sum() == batch
        # proportional: each within one slot of its exact share
        exact = wanted * batch / wanted.sum()
        assert (np.abs(slots - exact) < 1.0).all()
