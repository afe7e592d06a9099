"""Sampling plans: exact two-level marginals, exact draws on a grid, plan and factor inputs."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core import sampling
from planner.core.repeat_factors import repeat_factors
from planner.core.resampling import resampling_plan
from planner.core.sampling import (
    MAX_CATEGORIES,
    label_sampling_plan,
    repeat_sampling_plan,
    sampling_plan,
)
from planner.errors import InputError


class GridRng:
    """Stands in for a Generator: the first ``random`` call sweeps a grid slowly, the second fast.

    Over ``m * m`` draws every (bucket uniform, image uniform) pair on an ``m``-point grid occurs
    once, so the draw counts are the exact two-level probabilities times ``m * m``.
    """

    def __init__(self, m: int) -> None:
        self.grid = (np.arange(m) + 0.5) / m
        self.calls = 0

    def random(self, size: int) -> np.ndarray:
        self.calls += 1
        m = self.grid.size
        assert size == m * m
        return np.repeat(self.grid, m) if self.calls == 1 else np.tile(self.grid, m)


def test_two_level_marginals_are_exactly_w_over_total() -> None:
    w = [3, 0, 1, 4, 4, 0, 0, 2, 7]
    plan = sampling_plan(w, max_categories=3)
    assert plan.num_buckets == 3
    total = sum(w)
    starts = plan.bucket_starts.tolist()
    for b in range(plan.num_buckets):
        inside = w[starts[b] : starts[b + 1]]
        bucket_mass = Fraction(sum(inside), total)
        for offset, wi in enumerate(inside):
            within = Fraction(wi, sum(inside)) if sum(inside) else Fraction(0)
            assert bucket_mass * within == Fraction(wi, total)
            assert plan.probabilities[starts[b] + offset] == pytest.approx(wi / total, abs=0)
        assert plan.bucket_probabilities[b] == pytest.approx(float(bucket_mass), rel=1e-15)
        np.testing.assert_allclose(
            plan.within_bucket(b), [float(Fraction(wi, sum(inside))) for wi in inside]
        )
    np.testing.assert_allclose(plan.marginal(), np.array(w) / total, rtol=1e-15)


def test_draw_realises_the_probabilities_exactly_on_a_grid() -> None:
    # w / 8: buckets [1, 2 | 3, 2]; every boundary is a multiple of 1/24
    plan = sampling_plan([1, 2, 3, 2], max_categories=2)
    m = 240
    drawn = plan.draw(m * m, GridRng(m))  # type: ignore[arg-type]
    counts = np.bincount(drawn, minlength=4)
    assert counts.tolist() == [m * m // 8, 2 * m * m // 8, 3 * m * m // 8, 2 * m * m // 8]


def test_zero_weight_images_and_buckets_are_never_drawn() -> None:
    plan = sampling_plan([0, 0, 0, 0, 5, 0, 1, 0], max_categories=3)
    assert plan.bucket_probabilities[0] == 0.0
    drawn = plan.draw(20_000, np.random.default_rng(0))
    assert set(np.unique(drawn).tolist()) == {4, 6}
    assert plan.num_included == 2
    assert plan.within_bucket(0).tolist() == [0.0, 0.0, 0.0]


def test_draw_frequencies_match_with_a_real_generator() -> None:
    w = np.array([5.0, 1.0, 0.5, 3.0, 0.0, 2.5, 8.0])
    plan = sampling_plan(w, max_categories=3)
    n = 400_000
    freq = np.bincount(plan.draw(n, np.random.default_rng(42)), minlength=w.size) / n
    p = w / w.sum()
    # five standard errors
    assert (np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12).all()


def test_draw_is_deterministic_for_a_seed() -> None:
    plan = sampling_plan(np.arange(1.0, 50.0), max_categories=8)
    a = plan.draw(1000, np.random.default_rng(5))
    b = plan.draw(1000, np.random.default_rng(5))
    assert a.tolist() == b.tolist()


def test_sorted_search_for_big_tables_gives_the_same_draws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = sampling_plan(np.arange(0.0, 300.0) % 7, max_categories=40)
    plain = plan.draw(5000, np.random.default_rng(9))
    monkeypatch.setattr(sampling, "_SORTED_SEARCH_FROM", 0)
    assert plan.draw(5000, np.random.default_rng(9)).tolist() == plain.tolist()


def test_small_datasets_use_one_bucket() -> None:
    plan = sampling_plan(np.ones(1000))
    assert plan.num_buckets == 1
    assert plan.max_categories == MAX_CATEGORIES == 2**24
    assert plan.bucket_starts.tolist() == [0, 1000]


@pytest.mark.parametrize(
    ("n", "limit"), [(4, 2), (3, 2), (16, 4), (13, 4), (9, 3), (1, 2), (1000, 40)]
)
def test_buckets_respect_the_category_limit_at_both_levels(n: int, limit: int) -> None:
    plan = sampling_plan(np.ones(n), max_categories=limit)
    sizes = np.diff(plan.bucket_starts)
    assert plan.num_buckets <= limit
    assert (sizes >= 1).all()
    assert (sizes <= limit).all()
    assert sizes.sum() == n


def test_too_many_images_for_two_levels_is_rejected() -> None:
    with pytest.raises(InputError, match="two levels"):
        sampling_plan(np.ones(10), max_categories=3)


def test_label_plan_gives_each_class_its_effective_count_in_expectation() -> None:
    classes = ["Car", "Pedestrian", "Bicycle", "Wheelchair"]
    counts = [6000, 2500, 1200, 300]
    plan = resampling_plan(classes, counts, target=8000)
    labels = np.repeat(np.arange(4), counts)
    sampling = label_sampling_plan(labels, plan, max_categories=1000)
    assert sampling.num_samples == 8000
    per_class = np.bincount(labels, weights=sampling.probabilities) * sampling.num_samples
    np.testing.assert_allclose(per_class, plan.effective, rtol=1e-12)
    by_name = label_sampling_plan(np.array(classes)[labels], plan)
    np.testing.assert_allclose(by_name.probabilities, sampling.probabilities)


def test_label_plan_leaves_out_dropped_classes() -> None:
    plan = resampling_plan(["a", "b", "c"], [5, 5, 5], target=2)
    sampling = label_sampling_plan([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2], plan)
    assert sampling.num_included == 10
    assert sampling.probabilities[2::3].tolist() == [0.0] * 5


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 0, 1], "plan was made for"),
        ([0, 1, 2], "0..1"),
        (["a", "z"], "not among"),
        ([0.0, 1.0], "dtype"),
        ([], "N >= 1"),
    ],
)
def test_label_plan_rejects_labels_that_do_not_match(labels: list[object], message: str) -> None:
    plan = resampling_plan(["a", "b"], [1, 1])
    with pytest.raises(InputError, match=message):
        label_sampling_plan(labels, plan)  # type: ignore[arg-type]


def test_repeat_plan_uses_the_image_factors() -> None:
    presence = np.array([[1, 1], [1, 0], [1, 0], [1, 0]], dtype=bool)
    factors = repeat_factors(["a", "b"], presence, threshold=1.0)  # [2, 1, 1, 1]
    sampling = repeat_sampling_plan(factors)
    np.testing.assert_allclose(sampling.probabilities, [0.4, 0.2, 0.2, 0.2])
    assert sampling.num_samples == 5
    assert sampling.summary() == {
        "images": 4,
        "included": 4,
        "buckets": 1,
        "num_samples": 5,
        "max_categories": 2**24,
    }


@pytest.mark.parametrize(
    ("weights", "kwargs", "message"),
    [
        ([], {}, "N >= 1"),
        ([[1.0]], {}, "N >= 1"),
        ([1.0, -1.0], {}, "non-negative"),
        ([1.0, np.inf], {}, "finite"),
        ([0.0, 0.0], {}, "every weight is 0"),
        ([1.0], {"num_samples": 0}, "num_samples"),
        ([1.0], {"num_samples": 1.5}, "num_samples"),
        ([1.0], {"max_categories": 1}, "max_categories"),
    ],
)
def test_bad_weights_are_rejected(
    weights: list[float], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        sampling_plan(weights, **kwargs)  # type: ignore[arg-type]


def test_weights_too_small_to_keep_a_positive_probability_are_rejected() -> None:
    with pytest.raises(InputError, match="orders of magnitude"):
        sampling_plan([2.0, 5e-324])


def test_bad_bucket_index_is_rejected() -> None:
    with pytest.raises(InputError, match="bucket"):
        sampling_plan([1.0, 2.0]).within_bucket(1)


@settings(max_examples=150, deadline=None)
@given(
    weights=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1e6)), min_size=1, max_size=60).filter(
        lambda w: sum(w) > 0
    ),
    limit=st.integers(8, 64),
)
def test_probabilities_form_a_distribution(weights: list[float], limit: int) -> None:
    plan = sampling_plan(weights, max_categories=limit)
    assert plan.probabilities.sum() == pytest.approx(1.0)
    assert plan.bucket_probabilities.sum() == pytest.approx(1.0)
    assert (plan.probabilities >= 0).all()
    w = np.array(weights)
    assert ((plan.probabilities > 0) == (w > 0)).all()
    np.testing.assert_allclose(plan.marginal(), w / w.sum(), rtol=1e-12, atol=1e-300)
    drawn = plan.draw(50, np.random.default_rng(0))
    assert (w[drawn] > 0).all()
