"""Tests for Cohen's kappa, against hand-worked values and scikit-learn."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score  # type: ignore[import-untyped]

from planner.core.agreement import cohen_kappa, successive_kappas
from planner.errors import InputError


def test_hand_worked_small_case() -> None:
    # p_o = 3/4; shares a = (1/2, 1/2), b = (1/4, 3/4): p_e = 1/8 + 3/8 = 1/2; kappa = 1/2.
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)


def test_textbook_two_by_two_table() -> None:
    # Table yes/yes 20, yes/no 5, no/yes 10, no/no 15 (n = 50): p_o = 0.7, p_e = 0.5, kappa 0.4.
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_full_disagreement_is_minus_one() -> None:
    assert cohen_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


@pytest.mark.parametrize("labels", [[3, 3, 3, 3], ["cat"] * 7, [True], [0, 1, 2, 1]])
def test_identical_vectors_give_one_even_when_constant(labels: list[Any]) -> None:
    # Both models predict one class everywhere: p_e = 1, defined as kappa = 1.
    assert cohen_kappa(labels, list(labels)) == 1.0


def test_one_side_constant_gives_zero() -> None:
    # p_o = 2/3 = p_e: no agreement beyond chance.
    assert cohen_kappa([1, 1, 1], [1, 1, 0]) == pytest.approx(0.0)


def test_multilabel_matrices_compare_all_decisions() -> None:
    a = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    b = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a.ravel(), b.ravel()))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 4), min_size=n, max_size=n),
            st.lists(st.integers(0, 4), min_size=n, max_size=n),
        )
    )
)
def test_matches_sklearn_on_random_labels(pair: tuple[list[int], list[int]]) -> None:
    a, b = pair
    ours = cohen_kappa(a, b)
    if a == b:
        assert ours == 1.0
    else:
        assert ours == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert ours == pytest.approx(cohen_kappa(b, a), abs=1e-12)
    assert -1.0 - 1e-12 <= ours <= 1.0 + 1e-12


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["car", "crack", "road"]), st.sampled_from(["car", "road"])),
        min_size=2,
        max_size=40,
    )
)
def test_string_labels_match_sklearn(pairs: list[tuple[str, str]]) -> None:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    if a != b:
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_successive_kappas_pair_each_version_with_the_next() -> None:
    v0, v1, v2 = [0, 0, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]
    np.testing.assert_allclose(successive_kappas([v0, v1, v2]), [0.5, 1.0])
    assert successive_kappas([v0]).shape == (0,)
    assert successive_kappas([]).shape == (0,)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ([0, 1], [0, 1, 1], "shape"),
        ([], [], "at least one"),
        ([0.0, np.nan], [0.0, 1.0], "NaN"),
        ([0, 1], ["0", "1"], "same label type"),
        ([None, 1], [None, 1], "labels"),
    ],
)
def test_bad_label_vectors_rejected(a: list[Any], b: list[Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        cohen_kappa(a, b)
