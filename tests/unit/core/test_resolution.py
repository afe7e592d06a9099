"""Choosing one annotation per task: ground truth, majority, ties, latest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.resolution import (
    Candidate,
    ResolutionPolicy,
    as_policy,
    parse_timestamp,
    resolve,
)
from planner.errors import InputError

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def cand(
    labels: set[str],
    *,
    hours: float | None = 0,
    created: float | None = None,
    ident: int | str | None = None,
    truth: bool = False,
) -> Candidate:
    return Candidate(
        annotation_id=ident,
        ground_truth=truth,
        updated_at=None if hours is None else T0 + timedelta(hours=hours),
        created_at=None if created is None else T0 + timedelta(hours=created),
        label_set=frozenset(labels),
    )


def test_ground_truth_beats_a_later_majority() -> None:
    candidates = [
        cand({"Car"}, hours=5),
        cand({"Car"}, hours=6),
        cand({"Bus"}, hours=1, truth=True),
    ]
    assert resolve(candidates, "ground_truth_majority_latest").index == 2
    assert (
        resolve(candidates, ResolutionPolicy.GROUND_TRUTH_MAJORITY_LATEST).reason == "ground_truth"
    )


def test_latest_of_several_ground_truths() -> None:
    candidates = [
        cand({"A"}, hours=3, truth=True),
        cand({"B"}, hours=4, truth=True),
        cand({"C"}, hours=9),
    ]
    assert resolve(candidates, "ground_truth_majority_latest").index == 1


def test_majority_beats_latest_and_picks_latest_of_the_majority() -> None:
    candidates = [cand({"Car"}, hours=1), cand({"Bus"}, hours=9), cand({"Car"}, hours=2)]
    decision = resolve(candidates, "ground_truth_majority_latest")
    assert (decision.index, decision.reason) == (2, "majority")
    assert resolve(candidates, "majority").index == 2


def test_tie_goes_to_the_latest_annotation() -> None:
    candidates = [
        cand({"Car"}, hours=1),
        cand({"Bus"}, hours=3),
        cand({"Car"}, hours=2),
        cand({"Bus"}, hours=0),
    ]
    decision = resolve(candidates, "majority")
    assert (decision.index, decision.reason) == (1, "tie_latest")


def test_majority_policy_ignores_ground_truth_and_latest_ignores_both() -> None:
    candidates = [
        cand({"A"}, hours=1, truth=True),
        cand({"B"}, hours=2),
        cand({"B"}, hours=3),
        cand({"C"}, hours=4),
    ]
    assert resolve(candidates, "majority").index == 2
    decision = resolve(candidates, "latest")
    assert (decision.index, decision.reason) == (3, "latest")


def test_single_annotation() -> None:
    assert resolve([cand(set())], "latest").reason == "only_annotation"


def test_latest_orders_by_updated_then_created_then_id() -> None:
    same_update = [
        cand(set(), hours=1, created=0, ident=9),
        cand(set(), hours=1, created=0.5, ident=1),
    ]
    assert resolve(same_update, "latest").index == 1
    same_times = [
        cand(set(), hours=1, created=0, ident=12),
        cand(set(), hours=1, created=0, ident=7),
    ]
    assert resolve(same_times, "latest").index == 0
    no_update = [cand(set(), hours=None, created=5, ident=1), cand(set(), hours=0, ident=0)]
    assert resolve(no_update, "latest").index == 1  # any real updated_at beats a missing one
    nothing = [cand(set(), hours=None, ident=3), cand(set(), hours=None, ident=None)]
    assert resolve(nothing, "latest").index == 0
    positions = [cand(set(), hours=None), cand(set(), hours=None)]
    assert resolve(positions, "latest").index == 1  # last resort: later in the list


def test_timestamps() -> None:
    assert parse_timestamp("2026-11-01T08:00:00.123456Z") == T0 + timedelta(microseconds=123456)
    assert parse_timestamp("2026-11-01T08:00:00") == T0  # Label Studio stores UTC
    plus_two = parse_timestamp("2026-11-01T10:00:00+02:00")
    assert plus_two == T0
    assert plus_two is not None
    assert plus_two.utcoffset() == timedelta(hours=2)
    for bad in ("yesterday", "", None, 1700000000):
        assert parse_timestamp(bad) is None


def test_policy_names() -> None:
    assert as_policy("latest") is ResolutionPolicy.LATEST
    with pytest.raises(InputError, match="ground_truth_majority_latest, majority, latest"):
        as_policy("newest")
    with pytest.raises(InputError, match="at least one"):
        resolve([], "latest")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sets(st.sampled_from("ABC"), max_size=2), st.integers(0, 5), st.booleans()),
        min_size=1,
        max_size=7,
    ),
    st.sampled_from(list(ResolutionPolicy)),
)
def test_choice_is_an_annotation_no_larger_group_beats(
    raw: list[tuple[set[str], int, bool]], policy: ResolutionPolicy
) -> None:
    candidates = [cand(labels, hours=h, ident=i, truth=t) for i, (labels, h, t) in enumerate(raw)]
    decision = resolve(candidates, policy)
    chosen = candidates[decision.index]
    reversed_choice = resolve(candidates[::-1], policy)
    assert candidates[::-1][reversed_choice.index] == chosen  # order of the list does not matter
    if policy is ResolutionPolicy.GROUND_TRUTH_MAJORITY_LATEST and any(
        c.ground_truth for c in candidates
    ):
        assert chosen.ground_truth
    elif policy is not ResolutionPolicy.LATEST:
        sizes = [sum(c.label_set == d.label_set for d in candidates) for c in candidates]
        assert sizes[decision.index] == max(sizes)
