"""Single-label resampling plans: seed 001 acceptance cases, bounds, brute-force optimality."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.resampling import resampling_plan
from planner.errors import InputError

TRAFFIC = ["Car", "Pedestrian", "Bicycle", "Wheelchair"]


def test_seed_001_exercise_1() -> None:
    plan = resampling_plan(TRAFFIC, [6000, 2500, 1200, 300], target=8000, max_oversample=5)
    effective = dict(zip(TRAFFIC, plan.effective.tolist(), strict=True))
    assert effective == {"Car": 2167, "Pedestrian": 2167, "Bicycle": 2166, "Wheelchair": 1500}
    assert plan.total == 8000
    assert plan.reached
    assert plan.capped == ("Wheelchair",)
    assert plan.multipliers[3] == 5.0
    np.testing.assert_allclose(plan.multipliers[:3], [2167 / 6000, 2167 / 2500, 2166 / 1200])
    assert plan.as_dict()["Wheelchair"] == {"count": 300, "effective": 1500, "multiplier": 5.0}
    assert plan.imbalance_before == 20.0
    assert plan.imbalance_after == pytest.approx(2167 / 1500)


def test_seed_001_worked_example_1_crack_oversampled_background_matched() -> None:
    plan = resampling_plan(["Background", "Crack"], [50_000, 1_500], target=15_000)
    assert plan.effective.tolist() == [7_500, 7_500]
    np.testing.assert_allclose(plan.multipliers, [0.15, 5.0])
    # the seed's own numbers: Crack 7.5k, Background undersampled to 25k
    plan = resampling_plan(["Background", "Crack"], [50_000, 1_500], target=32_500)
    assert plan.effective.tolist() == [25_000, 7_500]
    assert plan.capped == ("Crack",)


def test_target_defaults_to_the_dataset_size() -> None:
    plan = resampling_plan(TRAFFIC, [6000, 2500, 1200, 300])
    assert plan.target == 10_000
    assert plan.effective.tolist() == [2834, 2833, 2833, 1500]


def test_unreachable_target_stops_at_the_cap() -> None:
    plan = resampling_plan(["a", "b"], [10, 20], target=1000, max_oversample=3)
    assert plan.effective.tolist() == [30, 60]
    assert not plan.reached
    assert plan.shortfall == 910
    assert plan.excess == 0
    assert plan.capped == ("a", "b")
    assert plan.summary()["reached"] is False


def test_forbidding_undersampling_keeps_every_image() -> None:
    plan = resampling_plan(
        ["Background", "Crack"], [50_000, 1_500], target=53_000, allow_undersample=False
    )
    assert plan.effective.tolist() == [50_000, 3_000]
    assert plan.reached
    # below the dataset size the target cannot be met: every image once, the excess reported
    plan = resampling_plan(
        ["Background", "Crack"], [50_000, 1_500], target=3_000, allow_undersample=False
    )
    assert plan.effective.tolist() == [50_000, 1_500]
    assert plan.excess == 48_500
    assert not plan.reached


def test_empty_classes_get_nothing_and_are_reported() -> None:
    plan = resampling_plan(["a", "b", "c"], [10, 0, 30], target=40)
    assert plan.effective.tolist() == [20, 0, 20]
    assert plan.multipliers[1] == 0.0
    assert plan.empty == ("b",)


def test_tiny_target_drops_classes_in_class_order() -> None:
    plan = resampling_plan(["a", "b", "c"], [10, 10, 10], target=2)
    assert plan.effective.tolist() == [1, 1, 0]
    assert plan.dropped == ("c",)


def test_ties_go_to_earlier_classes() -> None:
    plan = resampling_plan(["x", "y", "z"], [100, 100, 100], target=10)
    assert plan.effective.tolist() == [4, 3, 3]
    plan = resampling_plan(["z", "y", "x"], [100, 100, 100], target=10)
    assert plan.effective.tolist() == [4, 3, 3]


def test_fractional_cap_rounds_down_per_class_but_not_below_exact_products() -> None:
    # 10 * 2.3 is 22.999... in binary; the plan still allows 23.
    plan = resampling_plan(["a", "b"], [10, 3], target=100, max_oversample=2.3)
    assert plan.effective.tolist() == [23, 6]
    assert plan.multipliers[0] == 2.3


def test_cap_one_means_no_oversampling() -> None:
    plan = resampling_plan(["a", "b"], [100, 5], target=60, max_oversample=1)
    assert plan.effective.tolist() == [55, 5]


@pytest.mark.parametrize(
    ("counts", "kwargs", "message"),
    [
        ([1, 2], {"target": 0}, "target"),
        ([1, 2], {"target": 2.5}, "target"),
        ([1, 2], {"target": True}, "target"),
        ([1, 2], {"max_oversample": 0.5}, "max_oversample"),
        ([1, 2], {"max_oversample": float("inf")}, "max_oversample"),
        ([1.5, 2], {}, "whole numbers"),
        ([0, 0], {}, "nothing to resample"),
        ([1, float("nan")], {}, "NaN"),
        ([1, -2], {}, "non-negative"),
        ([1, 2, 3], {}, "shape"),
    ],
)
def test_bad_input_is_rejected(
    counts: list[float], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        resampling_plan(["a", "b"], counts, **kwargs)  # type: ignore[arg-type]


def _brute_force_min_squares(
    counts: list[int], target: int, cap: int, *, undersample: bool
) -> int | None:
    """The smallest sum of squares of integer effective counts in the box that sum to target."""
    ranges = [range(0 if undersample else n, n * cap + 1) for n in counts]
    best = None
    for combo in itertools.product(*ranges):
        if sum(combo) == target:
            value = sum(e * e for e in combo)
            best = value if best is None else min(best, value)
    return best


@settings(max_examples=120, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=3).filter(lambda c: sum(c) > 0),
    target=st.integers(1, 40),
    cap=st.integers(1, 3),
    undersample=st.booleans(),
)
def test_plan_is_the_closest_to_uniform(
    counts: list[int], target: int, cap: int, *, undersample: bool
) -> None:
    plan = resampling_plan(
        [f"c{i}" for i in range(len(counts))],
        counts,
        target=target,
        max_oversample=cap,
        allow_undersample=undersample,
    )
    best = _brute_force_min_squares(counts, target, cap, undersample=undersample)
    if best is None:
        assert not plan.reached
    else:
        assert plan.reached
        assert int((plan.effective**2).sum()) == best


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 10**7), min_size=1, max_size=12).filter(lambda c: sum(c) > 0),
    target=st.integers(1, 10**8),
    cap=st.floats(1.0, 20.0),
    undersample=st.booleans(),
)
def test_plan_invariants(counts: list[int], target: int, cap: float, *, undersample: bool) -> None:
    n = np.array(counts)
    plan = resampling_plan(
        [f"c{i}" for i in range(n.size)],
        n,
        target=target,
        max_oversample=cap,
        allow_undersample=undersample,
    )
    e = plan.effective
    # no cap is ever exceeded
    assert (plan.multipliers <= cap + 1e-12).all()
    assert (e <= n * cap * (1 + 1e-12)).all()
    assert (e >= 0).all()
    if not undersample:
        assert (e >= n).all()
        assert (plan.multipliers[n > 0] >= 1).all()
    assert (e[n == 0] == 0).all()
    # the target is hit exactly whenever it is reachable
    ceiling = int(np.floor(n * cap * (1 + 1e-12)).sum())
    floor = 0 if undersample else int(n.sum())
    assert plan.reached == (floor <= target <= ceiling)
    if plan.reached:
        assert plan.total == target
    elif target > ceiling:
        assert plan.shortfall == target - plan.total
    else:
        assert plan.excess == plan.total - target
    # closest to uniform: two classes differ by more than one only where a bound holds
    high = np.maximum(np.floor(n * cap * (1 + 1e-12)), n)
    low = np.zeros_like(n) if undersample else n
    for i, j in itertools.permutations(range(n.size), 2):
        if e[i] > e[j] + 1:
            assert e[i] == low[i] or e[j] == high[j]
