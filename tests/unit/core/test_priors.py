"""Focal-loss alpha and logit-adjustment log-priors: hand values, smoothing, invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.priors import focal_alpha, log_priors
from planner.core.weights import class_weights
from planner.errors import InputError


def test_softmax_alpha_sums_to_one_in_weight_proportion() -> None:
    weights = class_weights(["a", "b"], [4, 2])  # balanced [0.75, 1.5]
    result = focal_alpha(weights, loss="softmax")
    np.testing.assert_allclose(result.alpha, [1 / 3, 2 / 3], rtol=1e-14)
    assert result.as_dict() == {
        "a": {"weight": 0.75, "alpha": pytest.approx(1 / 3)},
        "b": {"weight": 1.5, "alpha": pytest.approx(2 / 3)},
    }


def test_sigmoid_alpha_has_odds_equal_to_the_weight() -> None:
    weights = class_weights(["a", "b", "c"], [1, 1, 1])  # all weight 1
    np.testing.assert_allclose(focal_alpha(weights, loss="sigmoid").alpha, [0.5, 0.5, 0.5])
    weights = class_weights(["a", "b"], [4, 2])  # [0.75, 1.5]
    alpha = focal_alpha(weights, loss="sigmoid").alpha
    np.testing.assert_allclose(alpha, [0.75 / 1.75, 1.5 / 2.5], rtol=1e-14)
    np.testing.assert_allclose(alpha / (1 - alpha), weights.weights, rtol=1e-12)


def test_sigmoid_alpha_stays_strictly_inside_zero_one() -> None:
    weights = class_weights(["a", "b"], [10**12, 1], normalise="none", empty="max")
    alpha = focal_alpha(weights, loss="sigmoid").alpha
    assert (alpha > 0).all()
    assert (alpha < 1).all()
    assert alpha[0] < alpha[1]


def test_unknown_focal_kind_is_rejected() -> None:
    with pytest.raises(InputError, match="focal loss kind"):
        focal_alpha(class_weights(["a"], [1]), loss="softmax2")  # type: ignore[arg-type]


def test_log_priors_by_hand_without_smoothing() -> None:
    result = log_priors(["a", "b"], [3, 1], tau=2.0, pseudo_count=0.0)
    np.testing.assert_allclose(result.priors, [0.75, 0.25])
    np.testing.assert_allclose(result.log_priors, np.log([0.75, 0.25]))
    np.testing.assert_allclose(result.adjustment, 2.0 * np.log([0.75, 0.25]))


def test_log_priors_smooth_empty_classes_with_the_pseudo_count() -> None:
    result = log_priors(["a", "b"], [0, 2])
    # (0 + 0.5, 2 + 0.5) / 3
    np.testing.assert_allclose(result.priors, [0.5 / 3, 2.5 / 3])
    assert result.empty == ("a",)
    assert np.isfinite(result.log_priors).all()
    assert result.as_dict()["a"]["count"] == 0.0
    assert result.as_dict()["b"]["adjustment"] == pytest.approx(np.log(2.5 / 3))


def test_zero_pseudo_count_with_an_empty_class_is_rejected() -> None:
    with pytest.raises(InputError, match="pseudo_count"):
        log_priors(["a", "b"], [0, 2], pseudo_count=0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": -1.0}, "tau"),
        ({"tau": float("nan")}, "tau"),
        ({"pseudo_count": -0.5}, "pseudo_count"),
        ({"pseudo_count": float("inf")}, "pseudo_count"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InputError, match=message):
        log_priors(["a", "b"], [1, 2], **kwargs)


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(0, 10**12), min_size=1, max_size=10),
    tau=st.floats(0.0, 3.0),
    pseudo=st.floats(1e-3, 5.0),
)
def test_priors_are_a_finite_distribution(counts: list[int], tau: float, pseudo: float) -> None:
    result = log_priors([f"c{i}" for i in range(len(counts))], counts, tau=tau, pseudo_count=pseudo)
    assert result.priors.sum() == pytest.approx(1.0)
    assert (result.priors > 0).all()
    assert np.isfinite(result.adjustment).all()
    # more examples never means a smaller prior
    order = np.argsort(counts, kind="stable")
    assert (np.diff(result.priors[order]) >= 0).all()
