"""Acquisition scores: hand values, oracles, direct loops and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy

from planner.core.acquisition import (
    aggregate_boxes,
    bald,
    check_probs,
    entropy,
    least_confidence,
    margin,
    minority_probability,
    one_vs_rest,
    top_two,
    uncertainty,
)
from planner.errors import InputError

HAND = np.array([[0.5, 0.3, 0.2]])


def test_hand_values_for_one_row() -> None:
    assert least_confidence(HAND)[0] == pytest.approx(0.5)
    assert margin(HAND)[0] == pytest.approx(1 - (0.5 - 0.3))
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert entropy(HAND)[0] == pytest.approx(h / math.log(3))
    assert entropy(HAND, normalise=False)[0] == pytest.approx(h)
    assert entropy(HAND)[0] == pytest.approx(0.937231, abs=1e-6)  # 1.029654 / ln 3


def test_certain_and_uniform_rows_are_the_extremes() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(least_confidence(probs), [0.0, 2 / 3])
    np.testing.assert_allclose(margin(probs), [0.0, 1.0])
    np.testing.assert_allclose(entropy(probs), [0.0, 1.0])


def test_rounding_past_one_gives_no_negative_score() -> None:
    # check_probs accepts rows summing to 1 + 1e-4 (a model's float16 output, say)
    past = np.array([[1.00005, 0.0, 0.0]])
    for score in (least_confidence(past), margin(past), entropy(past, normalise=False)):
        assert score[0] == 0.0


def test_higher_is_more_uncertain_for_every_score() -> None:
    sure, unsure = [0.9, 0.05, 0.05], [0.4, 0.35, 0.25]
    for method in ("least_confidence", "margin", "entropy"):
        scores = uncertainty(np.array([sure, unsure]), method=method)
        assert scores[1] > scores[0], method


def test_entropy_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(7, 0.3), size=200)
    probs[:5, 2] = 0.0  # zeros exercise 0 log 0 = 0
    probs /= probs.sum(axis=1, keepdims=True)
    expected = scipy_entropy(probs, base=7, axis=1)
    np.testing.assert_allclose(entropy(probs), expected, atol=1e-12)


def test_single_class_scores_zero() -> None:
    probs = np.ones((4, 1))
    np.testing.assert_array_equal(entropy(probs), np.zeros(4))
    np.testing.assert_array_equal(margin(probs), np.zeros(4))
    np.testing.assert_array_equal(bald(np.ones((3, 4, 1))), np.zeros(4))


def test_top_two_breaks_ties_to_the_lower_class() -> None:
    top1, p1, top2, p2 = top_two(np.array([[0.4, 0.2, 0.4], [0.1, 0.45, 0.45]]))
    assert top1.tolist() == [0, 1]
    assert top2.tolist() == [2, 2]
    np.testing.assert_allclose(p1, [0.4, 0.45])
    np.testing.assert_allclose(p2, [0.4, 0.45])


def test_bald_hand_value_two_confident_passes_that_disagree() -> None:
    mc = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert bald(mc, normalise=False)[0] == pytest.approx(math.log(2))
    assert bald(mc)[0] == pytest.approx(1.0)
    agree = np.array([[[0.5, 0.5]], [[0.5, 0.5]]])
    assert bald(agree)[0] == 0.0  # aleatoric only: no mutual information


def test_bald_matches_a_direct_loop() -> None:
    rng = np.random.default_rng(5)
    mc = rng.dirichlet(np.full(4, 0.5), size=(6, 30))
    expected = []
    for i in range(30):
        mean = mc[:, i].mean(axis=0)
        h_mean = -sum(p * math.log(p) for p in mean if p > 0)
        mean_h = sum(-sum(p * math.log(p) for p in mc[t, i] if p > 0) for t in range(6)) / 6
        expected.append(max(h_mean - mean_h, 0.0))
    np.testing.assert_allclose(bald(mc, normalise=False), expected, atol=1e-12)
    np.testing.assert_allclose(bald(mc), np.array(expected) / math.log(4), atol=1e-12)


def test_bald_is_never_negative_from_rounding() -> None:
    row = np.array([0.1, 0.2, 0.7], dtype=np.float32)
    mc = np.broadcast_to(row, (20, 50, 3))
    assert (bald(mc) >= 0).all()
    assert bald(mc).max() < 1e-6


def test_minority_probability_hand_value() -> None:
    assert minority_probability(HAND, [0, 2, 10])[0] == pytest.approx(0.3 * 2 + 0.2 * 10)
    assert minority_probability(HAND, [0, 0, 0])[0] == 0.0
    with pytest.raises(InputError, match="need"):
        minority_probability(HAND, [0, -1, 1])
    with pytest.raises(InputError, match="shape"):
        minority_probability(HAND, [1, 1])


def test_float32_and_integer_inputs_are_accepted() -> None:
    probs32 = HAND.astype(np.float32)
    assert entropy(probs32)[0] == pytest.approx(entropy(HAND)[0], abs=1e-6)
    np.testing.assert_array_equal(least_confidence(np.array([[0, 1]])), [0.0])


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.array([[0.5, 0.5], [np.nan, 1.0]]), r"NaN or inf in 1 row\(s\): 1"),
        (np.array([[0.5, 0.5], [1.5, -0.5]]), "outside"),
        (np.array([[0.5, 0.4], [0.5, 0.5], [0.2, 0.2]]), r"2 row\(s\): 0, 2"),
        (np.array([0.5, 0.5]), "shape"),
        (np.zeros((3, 0)), "shape"),
        (np.array([["a", "b"]]), "float"),
    ],
)
def test_bad_probabilities_are_refused_naming_rows(probs: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        entropy(probs)


def test_error_lists_first_rows_and_a_count() -> None:
    probs = np.full((9, 2), 0.3)
    with pytest.raises(InputError, match=r"9 row\(s\): 0, 1, 2, 3, 4 and 4 more"):
        check_probs(probs)


def test_multilabel_presence_rows_need_not_sum_to_one() -> None:
    presence = np.array([[0.9, 0.8], [0.0, 0.1]])
    assert check_probs(presence, multilabel=True) is presence
    with pytest.raises(InputError, match="sum to 1"):
        check_probs(presence)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(InputError, match="unknown"):
        uncertainty(HAND, method="bald")  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 20),
    st.floats(0.05, 3.0),
    st.integers(0, 2**32 - 1),
)
def test_scores_lie_in_unit_interval_and_ignore_class_order(
    c: int, n: int, alpha: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, alpha), size=n)
    perm = rng.permutation(c)
    for method in ("least_confidence", "margin", "entropy"):
        scores = uncertainty(probs, method=method)
        assert ((scores >= -1e-12) & (scores <= 1 + 1e-12)).all()
        np.testing.assert_allclose(scores, uncertainty(probs[:, perm], method=method), atol=1e-12)


# --- detection ------------------------------------------------------------------------------


def test_noisy_or_matches_a_direct_loop() -> None:
    rng = np.random.default_rng(11)
    box_probs = rng.dirichlet(np.full(4, 0.4), size=60)
    box_image = rng.integers(0, 9, size=60)
    scores = aggregate_boxes(box_probs, box_image, n_images=12)
    for img in range(12):
        rows = box_probs[box_image == img]
        expected = [1 - math.prod(1 - p for p in rows[:, k]) for k in range(4)]
        np.testing.assert_allclose(scores.presence[img], expected, atol=1e-12)
        if rows.size:
            hs = [-sum(p * math.log(p) for p in r if p > 0) / math.log(4) for r in rows]
            assert scores.uncertainty[img] == pytest.approx(max(hs))
    assert scores.n_boxes.tolist() == np.bincount(box_image, minlength=12).tolist()


def test_box_hand_values_and_options() -> None:
    box_probs = np.array([[0.5, 0.5], [0.8, 0.2], [1.0, 0.0]])
    box_image = np.array([0, 0, 2])
    noisy = aggregate_boxes(box_probs, box_image, n_images=4)
    np.testing.assert_allclose(noisy.presence[0], [1 - 0.5 * 0.2, 1 - 0.5 * 0.8])
    np.testing.assert_allclose(noisy.presence[2], [1.0, 0.0])  # a certain box, no warning
    np.testing.assert_allclose(noisy.presence[[1, 3]], 0.0)  # no boxes: presence 0
    assert noisy.uncertainty[0] == pytest.approx(1.0)  # max of the two entropies
    maxed = aggregate_boxes(
        box_probs, box_image, n_images=4, presence="max", reduce="mean", empty_uncertainty=0.5
    )
    np.testing.assert_allclose(maxed.presence[0], [0.8, 0.5])
    h2 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)
    assert maxed.uncertainty[0] == pytest.approx((1.0 + h2) / 2)
    assert maxed.uncertainty[1] == 0.5
    assert maxed.uncertainty[3] == 0.5
    assert noisy.as_dict() == {
        "images": 4,
        "images_without_boxes": 2,
        "boxes": 3,
        "mean_uncertainty": pytest.approx(noisy.uncertainty.mean()),
    }


def test_no_boxes_at_all() -> None:
    scores = aggregate_boxes(np.zeros((0, 3)), np.zeros(0, np.int64), n_images=2)
    np.testing.assert_array_equal(scores.presence, np.zeros((2, 3)))
    np.testing.assert_array_equal(scores.uncertainty, np.zeros(2))


@pytest.mark.parametrize(
    ("box_image", "n_images", "match"),
    [
        (np.array([0, 5]), 3, r"\[0, 3\)"),
        (np.array([0, -1]), 3, r"\[0, 3\)"),
        (np.array([0.0, 1.0]), 3, "integer"),
        (np.array([0]), 3, "shape"),
    ],
)
def test_bad_box_indices_are_refused(box_image: np.ndarray, n_images: int, match: str) -> None:
    with pytest.raises(InputError, match=match):
        aggregate_boxes(np.array([[1.0, 0.0], [0.5, 0.5]]), box_image, n_images=n_images)


def test_bad_box_options_are_refused() -> None:
    args = (np.array([[1.0, 0.0]]), np.array([0]))
    with pytest.raises(InputError, match="presence"):
        aggregate_boxes(*args, n_images=1, presence="mean")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="reduce"):
        aggregate_boxes(*args, n_images=1, reduce="sum")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="empty_uncertainty"):
        aggregate_boxes(*args, n_images=1, empty_uncertainty=math.nan)


def test_one_vs_rest_is_the_largest_binary_entropy_in_bits() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [0.34, 0.33, 0.33], [1.0, 0.0, 0.0], [0.8, 0.2, 0.0]])
    got = one_vs_rest(probs)
    h = lambda p: -(p * math.log2(p) + (1 - p) * math.log2(1 - p))  # noqa: E731
    np.testing.assert_allclose(got, [1.0, h(0.34), 0.0, h(0.2)], atol=1e-9)
    # entropy ranks the flat row first; the one-vs-rest decision the even split
    assert entropy(probs)[1] > entropy(probs)[0]
    assert got[0] > got[1]


def test_one_vs_rest_weighs_classes_and_takes_presence_rows() -> None:
    presence = np.array([[0.5, 0.0], [0.0, 0.5], [0.9, 0.9]])  # rows need not sum to 1
    unweighted = one_vs_rest(presence, multilabel=True)
    assert unweighted[0] == pytest.approx(unweighted[1])
    weighted = one_vs_rest(presence, class_weights=[1.0, 4.0], multilabel=True)
    assert weighted[1] == pytest.approx(1.0)  # the heaviest class at 0.5 scores 1
    assert weighted[0] == pytest.approx(0.25)  # the lighter class's 1 bit, weighed 1/4
    assert ((weighted >= 0) & (weighted <= 1)).all()
    assert not one_vs_rest(presence, class_weights=[0.0, 0.0], multilabel=True).any()
    with pytest.raises(InputError, match="class_weights"):
        one_vs_rest(presence, class_weights=[1.0], multilabel=True)
    with pytest.raises(InputError, match="sum to 1"):
        one_vs_rest(presence)
