"""The labelled neighbours' vote against a brute-force k-nearest-neighbour count."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from planner.core import vote as vote_module
from planner.core.vote import neighbour_vote, vote_space_ok
from planner.errors import InputError


def brute_force(
    emb: npt.NDArray[np.float64],
    rows: npt.NDArray[np.intp],
    marks: npt.NDArray[np.float64],
    k: int,
    power: float = 0.0,
) -> npt.NDArray[np.float64]:
    """The vote row by row: a count of the k nearest, or weighted by distance ** -power."""
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = np.zeros((emb.shape[0], marks.shape[1]))
    for i in range(emb.shape[0]):
        if i in rows:
            continue
        dist = 1.0 - unit[rows] @ unit[i]
        nearest = np.argsort(dist, kind="stable")[:k]
        weight = np.maximum(dist[nearest], vote_module.MIN_DISTANCE) ** -power
        out[i] = (weight[:, None] * marks[nearest]).sum(axis=0) / weight.sum()
    return out * min(k, rows.size) / k


@pytest.mark.parametrize(("block", "elements"), [(7, 10**6), (4096, 10**6), (4096, 40)])
def test_vote_is_the_share_of_the_k_nearest_labelled_rows(
    block: int, elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vote_module, "BLOCK", block)  # several blocks, and one
    monkeypatch.setattr(vote_module, "BLOCK_ELEMENTS", elements)  # 40 / 15 labelled: 2 rows
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((60, 5))
    rows = rng.choice(60, 15, replace=False)
    marks = np.eye(3)[rng.integers(0, 3, 15)]
    got = neighbour_vote(emb, rows, marks, k=4)
    np.testing.assert_allclose(got, brute_force(emb, rows, marks, 4), atol=1e-6)
    assert (got[rows] == 0).all()
    open_rows = np.setdiff1d(np.arange(60), rows)
    np.testing.assert_allclose(got[open_rows].sum(axis=1), 1.0)  # single-label: one mark each


def test_fewer_labelled_rows_than_k_still_divide_by_k() -> None:
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    got = neighbour_vote(emb, np.array([0]), np.array([[0.0, 1.0]]), k=5)
    np.testing.assert_allclose(got, [[0, 0], [0, 0.2], [0, 0.2], [0, 0.2]])


def test_presence_marks_vote_per_class() -> None:
    # two labelled images, one holding both classes: a neighbour of both gets 1 and 1/2
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    marks = np.array([[1.0, 1.0], [1.0, 0.0]])
    got = neighbour_vote(emb, np.array([0, 1]), marks, k=2)
    np.testing.assert_allclose(got[2], [1.0, 0.5])


def test_no_labelled_rows_vote_nothing() -> None:
    got = neighbour_vote(np.ones((4, 3)), np.zeros(0, np.intp), np.zeros((0, 2)))
    assert got.shape == (4, 2)
    assert not got.any()


@pytest.mark.parametrize(
    ("k", "marks", "match"),
    [(0, np.eye(2), "k must be"), (True, np.eye(2), "k must be"), (2, np.eye(3), "one row per")],
)
def test_bad_arguments_say_what(k: int, marks: npt.NDArray[np.float64], match: str) -> None:
    with pytest.raises(InputError, match=match):
        neighbour_vote(np.ones((4, 3)), np.array([0, 1]), marks, k=k)


def test_vote_space_needs_a_spectrum_above_the_noise_floor() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((600, 32))
    structured = rng.standard_normal((600, 12)) @ rng.standard_normal((12, 32)) * 3
    structured += 0.1 * rng.standard_normal((600, 32))
    rows = np.arange(600)
    assert not vote_space_ok(noise, rows)
    assert vote_space_ok(structured, rows)
    assert not vote_space_ok(structured, rows[:1])


def test_candidates_are_the_rows_nearest_the_anchors_and_only_they_vote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from planner.core.vote import vote_candidates

    rng = np.random.default_rng(4)
    emb = rng.standard_normal((300, 6))
    anchors = np.array([3, 50, 120])
    picked = vote_candidates(emb, anchors, limit=40)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    best = (unit @ unit[anchors].T).max(axis=1)
    best[anchors] = -np.inf
    np.testing.assert_array_equal(picked, np.sort(np.argsort(-best)[:40]))
    assert vote_candidates(emb, anchors, limit=300).size == 300
    monkeypatch.setattr(vote_module, "ANCHOR_SAMPLE", 2)  # a sample of the anchors
    assert vote_candidates(emb, np.arange(10), limit=40).size == 40

    rows = rng.choice(300, 30, replace=False)
    marks = np.eye(2)[rng.integers(0, 2, 30)]
    full = neighbour_vote(emb, rows, marks, k=3)
    some = neighbour_vote(emb, rows, marks, k=3, candidates=picked)
    np.testing.assert_allclose(some[picked], full[picked], atol=1e-6)
    rest = np.setdiff1d(np.arange(300), picked)
    assert not some[rest].any()


@pytest.mark.parametrize(("k", "power"), [(4, 2.0), (5, 3.0), (20, 1.0)])
def test_a_distance_weighted_vote_weighs_each_neighbour_by_distance_to_minus_power(
    k: int, power: float
) -> None:
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((60, 5))
    rows = rng.choice(60, 15, replace=False)  # k = 20: fewer labelled rows than k
    marks = np.eye(3)[rng.integers(0, 3, 15)]
    got = neighbour_vote(emb, rows, marks, k=k, power=power)
    want = brute_force(emb, rows, marks, k, power)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert (got[rows] == 0).all()
    np.testing.assert_allclose(
        neighbour_vote(emb, rows, marks, k=k, power=0.0),
        brute_force(emb, rows, marks, k),
        atol=1e-6,
    )  # power 0: a plain count


def test_a_near_duplicate_takes_its_labelled_originals_class_under_a_weighted_vote() -> None:
    # row 2 is a near-duplicate of labelled row 0 (class 1); its second-nearest labelled
    # image, row 1, holds class 0. A plain count of two gives it 0.5 for class 1, as it
    # gives row 3, which only lies between them; weighted by distance ** -3, row 2 is class 1
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.02], [1.0, 0.8]])
    rows, marks = np.array([0, 1]), np.array([[0.0, 1.0], [1.0, 0.0]])
    plain = neighbour_vote(emb, rows, marks, k=2)
    np.testing.assert_allclose(plain[[2, 3], 1], [0.5, 0.5])
    weighted = neighbour_vote(emb, rows, marks, k=2, power=3.0)
    assert weighted[2, 1] > 0.99
    assert 0.5 < weighted[3, 1] < 0.99  # nearer the class-1 image, but not a duplicate of it
    np.testing.assert_allclose(weighted[[2, 3]].sum(axis=1), 1.0, rtol=1e-5)


def test_an_exact_duplicate_has_a_finite_weight() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # row 2: row 0 scaled, distance 0
    got = neighbour_vote(emb, np.array([0, 1]), np.array([[1.0], [0.0]]), k=2, power=3.0)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[2, 0], 1.0, rtol=1e-5)


@pytest.mark.parametrize("power", [-1.0, float("nan"), float("inf")])
def test_bad_power_says_what(power: float) -> None:
    with pytest.raises(InputError, match="power must be"):
        neighbour_vote(np.ones((4, 3)), np.array([0, 1]), np.eye(2), k=2, power=power)
