"""Tests for the stop rules: hand-worked cases at each boundary, the window logic, the decision."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from planner.core.agreement import cohen_kappa
from planner.core.stop_policy import StopConfig, StopState, evaluate_stop_rules
from planner.core.stop_rules import (
    DEFAULT_RULES,
    annotation_budget_spent,
    f1_plateau,
    minority_yield_low,
    pool_entropy_low,
    predictions_stable,
    quota_met,
    time_budget_spent,
)
from planner.errors import InputError

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
BALANCED = np.array([0] * 50 + [1] * 50)
ONE_FLIPPED = np.array([0] * 49 + [1] * 51)  # kappa with BALANCED: (0.99 - 0.5) / 0.5 = 0.98


# --- quota ----------------------------------------------------------------------------------


def test_quota_per_class_and_overall() -> None:
    overall, car, crack = quota_met(counts={"car": 10, "crack": 4}, targets={"car": 10, "crack": 5})
    assert (overall.rule, overall.fired) == ("quota", False)
    assert overall.numbers == {"classes": 2.0, "classes_met": 1.0, "deficit": 1.0}
    assert "crack 1" in overall.reason
    assert (car.rule, car.class_name, car.fired) == ("class_quota", "car", True)
    assert (crack.class_name, crack.fired, crack.numbers["deficit"]) == ("crack", False, 1.0)


def test_quota_fires_exactly_at_the_target() -> None:
    overall, *_ = quota_met(counts={"car": 10, "crack": 5}, targets={"car": 10, "crack": 5})
    assert overall.fired
    assert overall.reason == "all 2 class quotas met"
    over, *_ = quota_met(counts={"car": 12}, targets={"car": 10})
    assert over.fired
    assert over.numbers["deficit"] == 0.0


def test_quota_class_without_count_has_zero() -> None:
    overall, wheelchair = quota_met(counts={}, targets={"wheelchair": 3})
    assert not overall.fired
    assert wheelchair.numbers == {"count": 0.0, "target": 3.0, "deficit": 3.0}


def test_quota_from_deficits() -> None:
    met, *_ = quota_met(deficits={"car": 0, "crack": -2})
    assert met.fired
    short, car, crack = quota_met(deficits={"car": 0, "crack": 7})
    assert not short.fired
    assert short.numbers["deficit"] == 7.0
    assert car.fired
    assert not crack.fired


def test_quota_without_classes_does_not_fire() -> None:
    (overall,) = quota_met(targets={})
    assert not overall.fired
    assert overall.reason == "no class has a quota"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"targets": {"a": 1}, "deficits": {"a": 1}},
        {"counts": {"a": -1}, "targets": {"a": 1}},
        {"counts": {"a": 1}, "targets": {"a": 1.5}},
        {"deficits": {"a": 0.5}},
    ],
)
def test_quota_bad_inputs(kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        quota_met(**kwargs)  # type: ignore[arg-type]


# --- budgets --------------------------------------------------------------------------------


def test_annotation_budget_boundary() -> None:
    below = annotation_budget_spent(used=999, budget=1000)
    assert not below.fired
    assert below.numbers == {"used": 999.0, "budget": 1000.0, "left": 1.0}
    at = annotation_budget_spent(used=1000, budget=1000)
    assert at.fired
    assert at.numbers["left"] == 0.0
    with pytest.raises(InputError):
        annotation_budget_spent(used=1, budget=0)
    with pytest.raises(InputError):
        annotation_budget_spent(used=-1, budget=10)


def test_time_budget_boundary() -> None:
    at = time_budget_spent(started_at=START, now=START + timedelta(days=14), days=14)
    assert at.fired
    assert at.numbers["elapsed_days"] == 14.0
    before = time_budget_spent(
        started_at=START, now=START + timedelta(days=14) - timedelta(seconds=1), days=14
    )
    assert not before.fired
    assert before.numbers["days_left"] == pytest.approx(1 / 86400)


def test_time_budget_across_time_zones() -> None:
    # START is 12:00 at UTC+3 on 1 March; midnight at UTC+3 on 4 March is 2.5 days later.
    now = datetime(2024, 3, 4, 0, 0, tzinfo=timezone(timedelta(hours=3)))
    event = time_budget_spent(started_at=START, now=now, days=2.5)
    assert event.numbers["elapsed_days"] == 2.5
    assert event.fired
    assert not time_budget_spent(started_at=START, now=now, days=2.6).fired


def test_naive_datetimes_rejected() -> None:
    naive = datetime(2024, 3, 1, 9, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(InputError, match="timezone-aware"):
        time_budget_spent(started_at=naive, now=START, days=1)
    with pytest.raises(InputError, match="timezone-aware"):
        time_budget_spent(started_at=START, now=naive, days=1)
    with pytest.raises(InputError, match="timezone-aware"):
        StopState(now=naive)
    with pytest.raises(InputError, match="before the start"):
        time_budget_spent(started_at=START, now=START - timedelta(hours=1), days=1)
    with pytest.raises(InputError, match="positive"):
        time_budget_spent(started_at=START, now=START, days=0)


# --- minority yield -------------------------------------------------------------------------


def test_yield_all_mode_boundary() -> None:
    # Yields 4%, 4%, 5%: 5% is not below 5%.
    at = minority_yield_low([100, 100, 100], [4, 4, 5], window=3, threshold=0.05)
    assert not at.fired
    below = minority_yield_low([100, 100, 100], [4, 4, 4], window=3, threshold=0.05)
    assert below.fired
    assert below.rule == "minority_yield"
    assert below.numbers["yield_-1"] == pytest.approx(0.04)
    assert below.numbers["pooled_yield"] == pytest.approx(0.04)


def test_yield_mean_mode_pools_the_window() -> None:
    # 0 + 0 + 14 hits in 300 items: 4.7% pooled, below 5%; one batch alone is 14%.
    sizes, hits = [100, 100, 100], [0, 0, 14]
    assert not minority_yield_low(sizes, hits, threshold=0.05, mode="all").fired
    pooled = minority_yield_low(sizes, hits, threshold=0.05, mode="mean")
    assert pooled.fired
    assert pooled.numbers["pooled_yield"] == pytest.approx(14 / 300)
    # Pooled, not the mean of the batch yields: 10/200 + 0/10 pooled is 4.8%, the mean 2.5%.
    assert not minority_yield_low([200, 10], [10, 0], window=2, threshold=0.025, mode="mean").fired


def test_yield_window_only_looks_at_the_last_batches() -> None:
    assert minority_yield_low([100] * 4, [50, 1, 1, 1], window=3, threshold=0.05).fired
    assert not minority_yield_low([100] * 4, [1, 1, 1, 50], window=3, threshold=0.05).fired


def test_yield_never_fires_before_the_window_is_full() -> None:
    event = minority_yield_low([100, 100], [0, 0], window=3, threshold=0.05)
    assert not event.fired
    assert "needs 3" in event.reason
    assert minority_yield_low([100] * 3, [0] * 3, window=3, threshold=0.05).fired


def test_class_yield_names_the_class() -> None:
    event = minority_yield_low([50, 50, 50], [0, 1, 0], class_name="wheelchair", threshold=0.05)
    assert (event.rule, event.class_name, event.fired) == ("class_yield", "wheelchair", True)
    assert event.reason.startswith("wheelchair yield")


@pytest.mark.parametrize(
    ("sizes", "hits", "kwargs"),
    [
        ([10], [11], {}),
        ([0], [0], {}),
        ([10, 10], [1], {}),
        ([10], [-1], {}),
        ([10], [1], {"window": 0}),
        ([10], [1], {"threshold": 1.5}),
        ([10], [1], {"mode": "median"}),
    ],
)
def test_yield_bad_inputs(sizes: list[int], hits: list[int], kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        minority_yield_low(sizes, hits, **kwargs)  # type: ignore[arg-type]


# --- stabilising predictions ----------------------------------------------------------------


def test_stable_when_last_three_pairs_agree() -> None:
    event = predictions_stable([BALANCED] * 4)
    assert event.fired
    assert event.numbers["min_kappa"] == 1.0
    assert event.numbers["f_bound"] == 0.0
    assert [event.numbers[f"kappa_{i}"] for i in (-3, -2, -1)] == [1.0, 1.0, 1.0]


def test_stable_needs_window_plus_one_versions() -> None:
    event = predictions_stable([BALANCED] * 3, window=3)
    assert not event.fired
    assert "needs 4" in event.reason
    assert predictions_stable([BALANCED] * 2, window=1).fired


def test_stable_kappa_boundary() -> None:
    kappa = cohen_kappa(BALANCED, ONE_FLIPPED)
    assert kappa == pytest.approx(0.98)
    versions = [BALANCED, BALANCED, BALANCED, ONE_FLIPPED]
    below = predictions_stable(versions, threshold=0.99)
    assert not below.fired
    assert below.numbers["kappa_-1"] == pytest.approx(0.98)
    assert below.numbers["f_bound"] == pytest.approx(4 * 0.02 / 0.98)
    assert predictions_stable(versions, threshold=kappa).fired


def test_stable_window_logic() -> None:
    other = 1 - BALANCED
    # An unstable pair before the window does not count...
    assert predictions_stable([other, BALANCED, BALANCED, BALANCED, BALANCED]).fired
    # ...one inside it does, wherever it is.
    assert not predictions_stable([BALANCED, BALANCED, other, other, other]).fired
    assert not predictions_stable([BALANCED, BALANCED, BALANCED, other, other]).fired


def test_stable_mean_mode_is_the_papers_window_average() -> None:
    # kappas 1, 1, 0.98: the lowest is below 0.99, their mean (0.9933) is not
    versions = [BALANCED, BALANCED, BALANCED, ONE_FLIPPED]
    assert not predictions_stable(versions, mode="all").fired
    event = predictions_stable(versions, mode="mean")
    assert event.fired
    assert event.numbers["mean_kappa"] == pytest.approx((2 + 0.98) / 3)
    assert "mean 0.9933, at or above" in event.reason
    # one pair that disagrees outright pulls the mean under
    assert not predictions_stable([BALANCED, BALANCED, BALANCED, 1 - BALANCED], mode="mean").fired
    with pytest.raises(InputError, match="kappa mode"):
        predictions_stable(versions, mode="median")  # type: ignore[arg-type]


def test_stop_config_passes_the_kappa_mode_on() -> None:
    state = unstable_state(predictions=[BALANCED, BALANCED, BALANCED, ONE_FLIPPED])
    for mode, fired in (("all", False), ("mean", True)):
        events = evaluate_stop_rules(StopConfig(kappa_mode=mode), state).events  # type: ignore[arg-type]
        assert next(e for e in events if e.rule == "stable_predictions").fired is fired


def test_stable_with_constant_predictions_everywhere() -> None:
    constant = np.zeros(30, dtype=int)
    assert predictions_stable([constant] * 4).fired


def test_stable_rejects_a_changed_stop_set() -> None:
    with pytest.raises(InputError, match="shape"):
        predictions_stable([BALANCED, BALANCED, BALANCED, BALANCED[:-1]])


# --- macro-F1 plateau -----------------------------------------------------------------------


def test_f1_plateau_boundary() -> None:
    # Binary fractions, so the subtraction is exact: gain 1/32 < 1/16 fires, gain 1/16 does not.
    fired = f1_plateau([0.25, 0.5, 0.5 + 1 / 32, 0.5, 0.5], patience=3, epsilon=1 / 16)
    assert fired.fired
    assert fired.numbers["improvement"] == 1 / 32
    assert fired.numbers["best_before"] == 0.5
    held = f1_plateau([0.25, 0.5, 0.5 + 1 / 16, 0.5, 0.5], patience=3, epsilon=1 / 16)
    assert not held.fired


def test_f1_plateau_compares_the_best_before_not_the_last() -> None:
    # Best before the last 2 is 0.75 (not the 0.5 just before): 0.6875 is a loss.
    event = f1_plateau([0.75, 0.5, 0.625, 0.6875], patience=2, epsilon=0.01)
    assert event.fired
    assert event.numbers["improvement"] == -0.0625
    assert "loss" in event.reason


def test_f1_plateau_needs_patience_plus_one() -> None:
    assert not f1_plateau([0.5, 0.5, 0.5], patience=3).fired
    assert f1_plateau([0.5, 0.5, 0.5, 0.5], patience=3).fired


@pytest.mark.parametrize("history", [[0.5, float("nan")], [0.5, 1.2], [-0.1]])
def test_f1_plateau_bad_values(history: list[float]) -> None:
    with pytest.raises(InputError):
        f1_plateau(history, patience=1)


# --- pool entropy ---------------------------------------------------------------------------


def test_pool_entropy_boundary() -> None:
    assert not pool_entropy_low([0.04, 0.06], threshold=0.05).fired  # mean 0.05, not below
    low = pool_entropy_low([0.04, 0.05], threshold=0.05)
    assert low.fired
    assert low.numbers == {"pool": 2.0, "threshold": 0.05, "mean_entropy": pytest.approx(0.045)}
    assert not pool_entropy_low([], threshold=0.05).fired
    with pytest.raises(InputError):
        pool_entropy_low([0.5, 1.5])
    with pytest.raises(InputError):
        pool_entropy_low([np.nan])


# --- config and decision --------------------------------------------------------------------


def unstable_state(**overrides: object) -> StopState:
    base: dict[str, object] = {
        "counts": {"car": 500, "crack": 40},
        "targets": {"car": 500, "crack": 100},
        "batch_sizes": [100, 100, 100],
        "batch_hits": [2, 1, 0],
        "predictions": [BALANCED, BALANCED, ONE_FLIPPED, ONE_FLIPPED],
        "macro_f1": [0.5, 0.6, 0.6, 0.6, 0.6],
    }
    return StopState(**(base | overrides))  # type: ignore[arg-type]


def test_default_decision_continues_until_a_group_fires() -> None:
    decision = evaluate_stop_rules(StopConfig(), unstable_state())
    assert not decision.should_stop
    assert decision.triggered_by == ()
    fired = {(e.rule, e.class_name) for e in decision.fired}
    # Yield is low and F1 has plateaued, but predictions are not stable (kappa 0.98).
    assert fired == {("class_quota", "car"), ("minority_yield", None), ("f1_plateau", None)}
    assert decision.reason.startswith("continue")


def test_yield_low_and_stable_stops() -> None:
    state = unstable_state(predictions=[BALANCED] * 4)
    decision = evaluate_stop_rules(StopConfig(), state)
    assert decision.should_stop
    assert decision.triggered_by == ("minority_yield", "stable_predictions")
    assert "kappa" in decision.reason
    assert "yield" in decision.reason
    # Stable alone is not enough.
    alone = evaluate_stop_rules(
        StopConfig(), unstable_state(predictions=[BALANCED] * 4, batch_hits=[9, 9, 9])
    )
    assert not alone.should_stop


def test_quota_or_budgets_stop_alone() -> None:
    met = unstable_state(counts={"car": 500, "crack": 100})
    assert evaluate_stop_rules(StopConfig(), met).triggered_by == ("quota",)
    budget = StopConfig(annotation_budget=5000)
    spent = evaluate_stop_rules(budget, unstable_state(annotations_used=5000))
    assert spent.triggered_by == ("annotation_budget",)
    timed = StopConfig(days_budget=14)
    late = unstable_state(started_at=START, now=START + timedelta(days=15))
    assert evaluate_stop_rules(timed, late).triggered_by == ("time_budget",)
    # Budget rules without a configured budget report, they do not fire.
    events = {e.rule: e for e in evaluate_stop_rules(StopConfig(), late).events}
    assert events["time_budget"].reason == "not evaluated: no days budget configured"
    assert events["annotation_budget"].numbers == {}


def test_custom_any_of_a_chosen_set() -> None:
    config = StopConfig(stop_when=(frozenset({"f1_plateau"}), frozenset({"quota"})))
    decision = evaluate_stop_rules(config, unstable_state())
    assert decision.should_stop
    assert decision.triggered_by == ("f1_plateau",)


def test_pool_entropy_is_optional() -> None:
    state = unstable_state(pool_entropies=[0.01, 0.02])
    assert "pool_entropy" not in {e.rule for e in evaluate_stop_rules(StopConfig(), state).events}
    config = StopConfig(
        rules=DEFAULT_RULES | {"pool_entropy"}, stop_when=(frozenset({"pool_entropy"}),)
    )
    decision = evaluate_stop_rules(config, state)
    assert decision.should_stop
    assert decision.triggered_by == ("pool_entropy",)


def test_class_yield_events_and_missing_inputs() -> None:
    state = StopState(
        batch_sizes=[10, 10, 10],
        batch_hits=[1, 1, 1],
        class_hits={"crack": [0, 0, 0], "dent": [1, 1, 1]},
    )
    decision = evaluate_stop_rules(StopConfig(), state)
    by_class = {e.class_name: e.fired for e in decision.events if e.rule == "class_yield"}
    assert by_class == {"crack": True, "dent": False}
    events = {e.rule: e for e in decision.events if e.class_name is None}
    assert events["quota"].reason.startswith("not evaluated")
    assert not events["stable_predictions"].fired
    assert not events["f1_plateau"].fired


def test_decision_as_dict_is_json_ready() -> None:
    decision = evaluate_stop_rules(StopConfig(), unstable_state(predictions=[BALANCED] * 4))
    data = decision.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["should_stop"] is True
    assert "class_quota:car" in data["fired"]  # type: ignore[operator]
    with pytest.raises(TypeError):
        decision.events[0].numbers["x"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rules": frozenset({"quota", "nonsense"})},
        {"stop_when": (frozenset(),)},
        {"stop_when": (frozenset({"pool_entropy"}),)},
        {"annotation_budget": 0},
        {"days_budget": -1.0},
        {"yield_threshold": 1.5},
        {"yield_window": 0},
        {"yield_mode": "median"},
        {"kappa_threshold": float("nan")},
        {"kappa_window": 0},
        {"kappa_mode": "median"},
        {"f1_patience": 0},
        {"f1_epsilon": -0.1},
        {"entropy_threshold": 2.0},
    ],
)
def test_bad_config_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        StopConfig(**kwargs)  # type: ignore[arg-type]
