"""Class weights: sklearn oracle, hand values per scheme, normalisation, clipping, empty classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils.class_weight import compute_class_weight

from planner.core.weights import (
    DEFAULT_NORMALISATION,
    EMPTY_RULES,
    NORMALISATIONS,
    SCHEMES,
    class_image_pixels,
    class_weights,
    compare_schemes,
)
from planner.errors import InputError


def test_balanced_matches_the_sklearn_reference_value() -> None:
    y = np.array([1, 1, 1, 1, 0, 0])
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    result = class_weights(["0", "1"], np.bincount(y), scheme="balanced")
    np.testing.assert_allclose(result.weights, [1.5, 0.75], rtol=0, atol=1e-15)
    np.testing.assert_allclose(result.weights, expected, rtol=1e-15)
    assert result.normalisation == "none"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=200))
def test_balanced_equals_sklearn_on_random_labels(labels: list[int]) -> None:
    y = np.array(labels)
    present = np.unique(y)
    expected = compute_class_weight("balanced", classes=present, y=y)
    counts = np.bincount(y)[present]
    result = class_weights([str(c) for c in present], counts)
    np.testing.assert_allclose(result.weights, expected, rtol=1e-12)


def test_balanced_is_already_expected_normalised() -> None:
    counts = [10, 30, 60]
    natural = class_weights(["a", "b", "c"], counts).weights
    expected = class_weights(["a", "b", "c"], counts, normalise="expected").weights
    np.testing.assert_allclose(natural, expected, rtol=1e-14)


def test_inverse_sqrt_by_hand() -> None:
    # raw [1, 1/2], mean 3/4 -> [4/3, 2/3]
    result = class_weights(["a", "b"], [1, 4], scheme="inverse_sqrt")
    np.testing.assert_allclose(result.weights, [4 / 3, 2 / 3], rtol=1e-14)
    raw = class_weights(["a", "b"], [1, 4], scheme="inverse_sqrt", normalise="none")
    np.testing.assert_allclose(raw.weights, [1.0, 0.5], rtol=1e-14)


def test_effective_number_by_hand() -> None:
    # beta 0.5: n=1 -> 0.5/0.5 = 1, n=2 -> 0.5/0.75 = 2/3; mean 5/6 -> [6/5, 4/5]
    result = class_weights(["a", "b"], [1, 2], scheme="effective_number", beta=0.5)
    np.testing.assert_allclose(result.weights, [6 / 5, 4 / 5], rtol=1e-14)
    assert result.weights.sum() == pytest.approx(2.0)


def test_effective_number_limits() -> None:
    uniform = class_weights(["a", "b"], [3, 300], scheme="effective_number", beta=0.0)
    np.testing.assert_allclose(uniform.weights, [1.0, 1.0])
    # beta -> 1 tends to 1/n: ratio of weights -> ratio of counts
    near_one = class_weights(["a", "b"], [10, 100], scheme="effective_number", beta=1 - 1e-9)
    assert near_one.weights[0] / near_one.weights[1] == pytest.approx(10.0, rel=1e-6)
    # the Cui et al. default: sum C
    default = class_weights(["a", "b", "c"], [5, 50, 5000], scheme="effective_number")
    assert default.weights.sum() == pytest.approx(3.0)
    raw = (1 - 0.999) / (1 - 0.999 ** np.array([5.0, 50.0, 5000.0]))
    np.testing.assert_allclose(default.weights, 3 * raw / raw.sum(), rtol=1e-12)


def test_median_frequency_without_image_pixels() -> None:
    # freq proportional to counts; median of [1, 2, 4, 8] is 3
    result = class_weights(["a", "b", "c", "d"], [1, 2, 4, 8], scheme="median_frequency")
    np.testing.assert_allclose(result.weights, [3.0, 1.5, 0.75, 0.375], rtol=1e-14)


def test_median_frequency_with_image_pixels() -> None:
    # freq = [100/1000, 10/100, 50/1000] = [0.1, 0.1, 0.05]; median 0.1
    result = class_weights(
        ["road", "sign", "lane"],
        [100, 10, 50],
        scheme="median_frequency",
        image_pixels=[1000, 100, 1000],
    )
    np.testing.assert_allclose(result.weights, [1.0, 1.0, 2.0], rtol=1e-14)


def test_class_image_pixels_sums_the_sizes_of_the_images_holding_each_class() -> None:
    pixels = np.array([[50, 0, 5], [0, 0, 10], [80, 0, 0]])
    sizes = np.array([100, 20, 400])
    np.testing.assert_allclose(class_image_pixels(pixels, sizes), [500, 0, 120])


@pytest.mark.parametrize(
    ("pixels", "sizes", "message"),
    [
        (np.ones((2, 2)), np.ones(3), "a size per image"),
        (np.ones(2), np.ones(2), "a size per image"),
        (-np.ones((2, 2)), np.ones(2), "non-negative"),
        (np.ones((2, 2)), np.array([1.0, np.inf]), "finite"),
        (np.array([[3, 0], [0, 1]]), np.array([2, 2]), "more pixels than its image"),
    ],
)
def test_class_image_pixels_rejects_bad_input(
    pixels: np.ndarray, sizes: np.ndarray, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        class_image_pixels(pixels, sizes)


def test_median_frequency_rejects_image_pixels_below_class_pixels() -> None:
    with pytest.raises(InputError, match="image_pixels"):
        class_weights(["a", "b"], [10, 5], scheme="median_frequency", image_pixels=[5, 100])


def _yolo_reference(labels: np.ndarray, nc: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=nc).astype(float)
    counts[counts == 0] = 1
    inverse = 1 / counts
    return inverse / inverse.sum() * nc


def test_yolo_matches_labels_to_class_weights_times_nc() -> None:
    labels = np.array([0] * 40 + [1] * 8 + [3] * 2)
    result = class_weights(["a", "b", "c", "d"], np.bincount(labels, minlength=4), scheme="yolo")
    np.testing.assert_allclose(result.weights, _yolo_reference(labels, 4), rtol=1e-14)
    assert result.empty == ("c",)
    assert result.empty_rule == "one"


def test_empty_class_gets_the_largest_weight_by_default() -> None:
    result = class_weights(["a", "b", "c"], [4, 2, 0])
    np.testing.assert_allclose(result.weights, [0.5, 1.0, 1.0])  # N/(C n): 6/12, 6/6
    assert result.empty == ("c",)
    for scheme in SCHEMES:
        if scheme == "yolo":
            continue
        weights = class_weights(["a", "b", "c"], [4, 2, 0], scheme=scheme).weights
        assert weights[2] == pytest.approx(weights[:2].max())


def test_empty_rule_one_evaluates_the_formula_at_one() -> None:
    result = class_weights(["a", "b", "c"], [4, 2, 0], empty="one")
    np.testing.assert_allclose(result.weights, [0.5, 1.0, 2.0])


def test_median_frequency_empty_rule_one_with_image_pixels() -> None:
    result = class_weights(
        ["a", "b", "c"],
        [100, 10, 0],
        scheme="median_frequency",
        image_pixels=[1000, 100, 0],
        empty="one",
    )
    # freq a, b = 0.1; c imagined as 1 pixel of the largest image set: 1/1000; median 0.1
    np.testing.assert_allclose(result.weights, [1.0, 1.0, 100.0], rtol=1e-12)


def test_no_examples_at_all_gives_uniform_weights() -> None:
    for scheme in SCHEMES:
        for norm in NORMALISATIONS:
            result = class_weights(["a", "b"], [0, 0], scheme=scheme, normalise=norm)
            expected = 0.5 if norm == "sum" else 1.0
            np.testing.assert_allclose(result.weights, [expected, expected])
            assert result.empty == ("a", "b")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_normalisations_hold(scheme: str) -> None:
    counts = np.array([5.0, 80.0, 900.0, 0.0])
    names = ["a", "b", "c", "d"]
    mean = class_weights(names, counts, scheme=scheme, normalise="mean").weights  # type: ignore[arg-type]
    total = class_weights(names, counts, scheme=scheme, normalise="sum").weights  # type: ignore[arg-type]
    expected = class_weights(names, counts, scheme=scheme, normalise="expected").weights  # type: ignore[arg-type]
    assert mean.mean() == pytest.approx(1.0)
    assert total.sum() == pytest.approx(1.0)
    assert float(expected @ counts) / counts.sum() == pytest.approx(1.0)
    # every normalisation only rescales
    np.testing.assert_allclose(mean / mean[0], total / total[0], rtol=1e-12)
    np.testing.assert_allclose(mean / mean[0], expected / expected[0], rtol=1e-12)


def test_default_normalisations_are_recorded() -> None:
    for scheme in SCHEMES:
        result = class_weights(["a", "b"], [1, 3], scheme=scheme)
        assert result.normalisation == DEFAULT_NORMALISATION[scheme]


def test_max_ratio_caps_at_ratio_times_smallest() -> None:
    result = class_weights(["a", "b", "c"], [1000, 100, 1], max_ratio=5.0)
    natural = class_weights(["a", "b", "c"], [1000, 100, 1]).weights
    assert result.weights[0] == natural[0]
    np.testing.assert_allclose(result.weights[1:], [5 * natural[0], 5 * natural[0]])
    assert result.clipped == ("b", "c")


def test_absolute_bounds_apply_after_normalisation() -> None:
    result = class_weights(
        ["a", "b", "c"], [100, 10, 1], normalise="mean", min_weight=0.1, max_weight=2.0
    )
    mean = class_weights(["a", "b", "c"], [100, 10, 1], normalise="mean").weights  # 1:10:100 / 37
    np.testing.assert_allclose(result.weights, np.clip(mean, 0.1, 2.0))
    assert result.clipped == ("a", "c")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counts": [1, float("nan")]}, "NaN"),
        ({"counts": [1, float("inf")]}, "NaN or inf"),
        ({"counts": [1, -1]}, "non-negative"),
        ({"counts": [1, 2, 3]}, "shape"),
        ({"scheme": "focal"}, "scheme"),
        ({"normalise": "max"}, "normalisation"),
        ({"empty": "zero"}, "empty-class rule"),
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"max_ratio": 0.5}, "max_ratio"),
        ({"min_weight": 0.0}, "min_weight"),
        ({"min_weight": 2.0, "max_weight": 1.0}, "exceeds"),
        ({"max_weight": float("nan")}, "max_weight"),
    ],
)
def test_bad_input_is_rejected(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"counts": [1, 2]} | kwargs
    with pytest.raises(InputError, match=message):
        class_weights(["a", "b"], **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("classes", [[], ["a", "a"], ["a", ""]])
def test_bad_class_names_are_rejected(classes: list[str]) -> None:
    with pytest.raises(InputError):
        class_weights(classes, [1] * len(classes))


def test_single_class_gets_weight_one() -> None:
    for scheme in SCHEMES:
        assert class_weights(["only"], [7], scheme=scheme).weights.tolist() == [1.0]


def test_compare_schemes_and_as_dict() -> None:
    table = compare_schemes(["a", "b"], [4, 2], beta=0.9)
    assert tuple(table) == SCHEMES
    assert table["balanced"].as_dict() == {
        "a": {"count": 4, "weight": 0.75},
        "b": {"count": 2, "weight": 1.5},
    }
    assert table["balanced"].mapping() == {"a": 0.75, "b": 1.5}


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(
        st.one_of(st.integers(0, 10**9), st.floats(0, 1e9, allow_nan=False)),
        min_size=1,
        max_size=8,
    ),
    scheme=st.sampled_from(SCHEMES),
    norm=st.sampled_from(NORMALISATIONS),
    rule=st.sampled_from(EMPTY_RULES),
    beta=st.sampled_from([0.0, 0.9, 0.999, 0.99999]),
    max_ratio=st.one_of(st.none(), st.floats(1.0, 100.0)),
    bounds=st.one_of(st.none(), st.tuples(st.floats(1e-3, 1.0), st.floats(1.0, 100.0))),
)
def test_weights_are_finite_and_positive_for_every_option(
    *,
    counts: list[float],
    scheme: str,
    norm: str,
    rule: str,
    beta: float,
    max_ratio: float | None,
    bounds: tuple[float, float] | None,
) -> None:
    counts = [c if c == 0 or c >= 1e-3 else 0.0 for c in counts]  # no sub-pixel dust
    names = [f"c{i}" for i in range(len(counts))]
    low, high = (None, None) if bounds is None else bounds
    result = class_weights(
        names,
        counts,
        scheme=scheme,  # type: ignore[arg-type]
        normalise=norm,  # type: ignore[arg-type]
        empty=rule,  # type: ignore[arg-type]
        beta=beta,
        max_ratio=max_ratio,
        min_weight=low,
        max_weight=high,
    )
    assert np.isfinite(result.weights).all()
    assert (result.weights > 0).all()
    assert result.empty == tuple(n for n, c in zip(names, counts, strict=True) if c == 0)
    if max_ratio is not None and bounds is None:
        assert result.weights.max() <= max_ratio * result.weights.min() * (1 + 1e-12)
    if bounds is not None:
        assert (result.weights >= low).all()
        assert (result.weights <= high).all()
    assert math.isfinite(sum(v["weight"] for v in result.as_dict().values()))
