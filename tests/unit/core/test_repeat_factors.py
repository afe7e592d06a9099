"""LVIS repeat factors: hand values, a loop reference, per-class effect, stochastic rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from planner.core import repeat_factors as rf
from planner.core.repeat_factors import epoch_indices, repeat_factors, stochastic_round
from planner.errors import InputError


def _dataset() -> np.ndarray:
    """1000 images: 'a' in 750, 'b' in 250 (with 'a'), 'c' in 1; 250 images with nothing."""
    presence = np.zeros((1000, 3), dtype=bool)
    presence[:750, 0] = True
    presence[500:750, 1] = True
    presence[0, 2] = True
    return presence


def test_lvis_factors_by_hand() -> None:
    result = repeat_factors(["a", "b", "c"], _dataset(), threshold=0.1, max_repeat=None)
    np.testing.assert_allclose(result.image_fraction, [0.75, 0.25, 0.001])
    # sqrt(0.1/0.75) < 1, sqrt(0.1/0.25) < 1, sqrt(0.1/0.001) = 10
    np.testing.assert_allclose(result.class_factors, [1.0, 1.0, 10.0])
    assert result.image_factors[0] == pytest.approx(10.0)
    assert (result.image_factors[1:] == 1.0).all()
    assert result.capped == ()
    assert result.empty_images == 250


def test_median_threshold_repeats_the_classes_rarer_than_the_median_class() -> None:
    # f = [0.75, 0.25, 0.001]: median 0.25; sqrt(0.25 / 0.001) = 15.8, capped at 5
    result = repeat_factors(["a", "b", "c"], _dataset(), threshold="median")
    assert result.threshold == pytest.approx(0.25)
    np.testing.assert_allclose(result.class_factors, [1.0, 1.0, 5.0])
    uncapped = repeat_factors(["a", "b", "c"], _dataset(), threshold="median", max_repeat=None)
    assert uncapped.class_factors[2] == pytest.approx(math.sqrt(250))
    nothing = repeat_factors(["a", "b"], np.zeros((3, 2), bool), threshold="median")
    np.testing.assert_allclose(nothing.class_factors, [1.0, 1.0])  # no class seen: all 1


def test_cap_limits_class_and_image_factors() -> None:
    result = repeat_factors(["a", "b", "c"], _dataset(), threshold=0.1)
    np.testing.assert_allclose(result.class_factors, [1.0, 1.0, 5.0])
    assert result.image_factors.max() == 5.0
    assert result.capped == ("c",)


def test_max_versus_mean_aggregation() -> None:
    presence = np.array([[1, 1], [1, 0], [1, 0], [1, 0]], dtype=bool)
    # f = [1, 0.25]; t = 1: r = [1, 2]
    by_max = repeat_factors(["a", "b"], presence, threshold=1.0)
    by_mean = repeat_factors(["a", "b"], presence, threshold=1.0, aggregate="mean")
    np.testing.assert_allclose(by_max.class_factors, [1.0, 2.0])
    np.testing.assert_allclose(by_max.image_factors, [2.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(by_mean.image_factors, [1.5, 1.0, 1.0, 1.0])


def test_empty_images_kept_at_one_or_left_out() -> None:
    presence = np.array([[1, 0], [0, 0], [0, 1]], dtype=bool)
    kept = repeat_factors(["a", "b"], presence)
    dropped = repeat_factors(["a", "b"], presence, keep_empty_images=False)
    assert kept.image_factors[1] == 1.0
    assert dropped.image_factors[1] == 0.0
    assert kept.empty_images == dropped.empty_images == 1
    assert kept.epoch_after - dropped.epoch_after == 1.0


def test_per_class_effect_with_instance_counts() -> None:
    counts = np.array([[3, 0], [1, 2], [5, 0], [2, 0]])
    result = repeat_factors(["car", "wheelchair"], counts, threshold=1.0)
    # f = [1, 0.25] -> r = [1, 2]; image factors [1, 2, 1, 1]
    np.testing.assert_allclose(result.image_factors, [1.0, 2.0, 1.0, 1.0])
    assert result.images_before.tolist() == [4, 1]
    np.testing.assert_allclose(result.images_after, [5.0, 2.0])
    np.testing.assert_allclose(result.instances_before, [11.0, 2.0])
    np.testing.assert_allclose(result.instances_after, [12.0, 4.0])
    assert result.epoch_before == 4
    assert result.epoch_after == 5.0
    assert result.as_dict()["wheelchair"] == {
        "image_fraction": 0.25,
        "class_factor": 2.0,
        "images_before": 1,
        "images_after": 2.0,
        "instances_before": 2.0,
        "instances_after": 4.0,
    }
    assert result.summary()["epoch_after"] == 5.0


def test_class_in_no_image_is_reported() -> None:
    presence = np.array([[1, 0], [1, 0]], dtype=bool)
    result = repeat_factors(["a", "ghost"], presence)
    assert result.empty == ("ghost",)
    assert result.class_factors[1] == 1.0


def _reference(presence: np.ndarray, threshold: float, cap: float | None) -> np.ndarray:
    """A per-image loop written straight from the LVIS paper, capped."""
    n_images = len(presence)
    factors = []
    for row in presence:
        best = 1.0
        for c in np.flatnonzero(row):
            f = presence[:, c].sum() / n_images
            r = max(1.0, math.sqrt(threshold / f))
            best = max(best, r if cap is None else min(r, cap))
        factors.append(best)
    return np.array(factors)


def test_blocked_computation_matches_a_loop_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rf, "_BLOCK_CELLS", 7)  # force many small blocks
    rng = np.random.default_rng(7)
    presence = rng.random((60, 5)) < np.array([0.9, 0.3, 0.05, 0.02, 0.5])
    for cap in (None, 2.0):
        result = repeat_factors(
            [f"c{i}" for i in range(5)], presence, threshold=0.3, max_repeat=cap
        )
        np.testing.assert_allclose(result.image_factors, _reference(presence, 0.3, cap))
        np.testing.assert_allclose(result.images_after, result.image_factors @ presence)


@pytest.mark.parametrize(
    ("presence", "kwargs", "message"),
    [
        (np.ones((3,), bool), {}, "shape"),
        (np.ones((0, 2), bool), {}, "shape"),
        (np.ones((3, 3), bool), {}, "shape"),
        (np.array([[1.0, np.nan]]), {}, "NaN"),
        (np.array([[1, -1]]), {}, "negative"),
        (np.array([["a", "b"]]), {}, "dtype"),
        (np.ones((2, 2), bool), {"threshold": 0.0}, "threshold"),
        (np.ones((2, 2), bool), {"threshold": "mean"}, "threshold"),
        (np.ones((2, 2), bool), {"threshold": True}, "threshold"),
        (np.ones((2, 2), bool), {"max_repeat": 0.5}, "max_repeat"),
        (np.ones((2, 2), bool), {"aggregate": "min"}, "aggregate"),
    ],
)
def test_bad_input_is_rejected(
    presence: np.ndarray, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        repeat_factors(["a", "b"], presence, **kwargs)  # type: ignore[arg-type]


def test_stochastic_round_is_floor_or_ceiling_and_seeded() -> None:
    factors = np.array([1.0, 2.5, 0.0, 3.25, 1.0])
    first = stochastic_round(factors, np.random.default_rng(3))
    again = stochastic_round(factors, np.random.default_rng(3))
    assert first.tolist() == again.tolist()
    assert (first >= np.floor(factors)).all()
    assert (first <= np.ceil(factors)).all()
    assert first[0] == 1
    assert first[2] == 0
    assert first[4] == 1


def test_stochastic_round_is_unbiased() -> None:
    factors = np.full(200_000, 1.3)
    copies = stochastic_round(factors, np.random.default_rng(0))
    # mean 1.3, standard error sqrt(0.21 / 200000) ~ 0.001
    assert copies.mean() == pytest.approx(1.3, abs=0.005)


def test_epoch_indices_repeat_each_image_by_its_copies() -> None:
    factors = np.array([2.0, 0.0, 1.0, 3.0])
    ordered = epoch_indices(factors, np.random.default_rng(1), shuffle=False)
    assert ordered.tolist() == [0, 0, 2, 3, 3, 3]
    shuffled = epoch_indices(factors, np.random.default_rng(1))
    assert sorted(shuffled.tolist()) == ordered.tolist()


def test_factors_must_be_finite_and_non_negative() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="finite"):
        stochastic_round([1.0, -1.0], rng)
    with pytest.raises(InputError, match="shape"):
        stochastic_round([[1.0]], rng)


@settings(max_examples=100, deadline=None)
@given(
    presence=hnp.arrays(
        np.int64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=20),
        elements=st.integers(0, 3),
    ),
    threshold=st.floats(1e-4, 2.0),
    max_repeat=st.one_of(st.none(), st.floats(1.0, 10.0)),
    aggregate=st.sampled_from(["max", "mean"]),
    keep=st.booleans(),
)
def test_factors_lie_between_one_and_the_cap(
    *,
    presence: np.ndarray,
    threshold: float,
    max_repeat: float | None,
    aggregate: str,
    keep: bool,
) -> None:
    names = [f"c{i}" for i in range(presence.shape[1])]
    result = repeat_factors(
        names,
        presence,
        threshold=threshold,
        max_repeat=max_repeat,
        aggregate=aggregate,  # type: ignore[arg-type]
        keep_empty_images=keep,
    )
    has_class = (presence > 0).any(axis=1)
    factors = result.image_factors[has_class | keep]
    assert (factors >= 1.0).all()
    assert (result.class_factors >= 1.0).all()
    if max_repeat is not None:
        assert (factors <= max_repeat).all()
        assert (result.class_factors <= max_repeat).all()
    assert (result.image_factors[~has_class] == (1.0 if keep else 0.0)).all()
    # repeating never lowers what a class gets
    assert (result.images_after >= result.images_before - 1e-9).all()
    assert (result.instances_after >= result.instances_before - 1e-9).all()
