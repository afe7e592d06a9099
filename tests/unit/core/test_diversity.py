"""Near-duplicate guard: distances, the default radius, admission and validation."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics.pairwise import cosine_distances, euclidean_distances

from planner.core.diversity import (
    NearDuplicateGuard,
    NoveltySearch,
    check_embeddings,
    estimate_radius,
    isolation,
    nearest_distance,
    pair_distances,
)
from planner.core.whitening import WhitenMode, fit_whitening
from planner.errors import InputError


def test_pair_distances_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 8)).astype(np.float32)
    b = rng.standard_normal((30, 8)).astype(np.float32)
    np.testing.assert_allclose(
        pair_distances(a, b, metric="cosine"), np.diag(cosine_distances(a, b)), atol=1e-6
    )
    np.testing.assert_allclose(
        pair_distances(a, b, metric="euclidean"), np.diag(euclidean_distances(a, b)), atol=1e-5
    )


def test_radius_scales_with_the_space_for_euclidean_not_cosine() -> None:
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((500, 16))
    pool = np.arange(500)
    cos = estimate_radius(emb, pool, rng=np.random.default_rng(2))
    cos10 = estimate_radius(emb * 10, pool, rng=np.random.default_rng(2))
    l2 = estimate_radius(emb, pool, rng=np.random.default_rng(2), metric="euclidean")
    l2_10 = estimate_radius(emb * 10, pool, rng=np.random.default_rng(2), metric="euclidean")
    assert cos == pytest.approx(cos10)
    assert l2_10 == pytest.approx(10 * l2)
    # Random directions in 16-d: median cosine distance about 1, so the radius about 0.05.
    assert 0.04 < cos < 0.06
    # Euclidean median distance of standard normals in 16-d is about sqrt(2 * 16).
    assert l2 == pytest.approx(0.05 * math.sqrt(32), rel=0.1)


def test_radius_of_a_tiny_pool_is_zero() -> None:
    emb = np.ones((3, 2))
    assert estimate_radius(emb, np.array([1]), rng=np.random.default_rng(0)) == 0.0
    with pytest.raises(InputError, match="fraction"):
        estimate_radius(emb, np.arange(3), rng=np.random.default_rng(0), fraction=-1)


def test_guard_refuses_rows_within_the_radius() -> None:
    emb = np.array([[1.0, 0.0], [0.999, 0.01], [0.0, 1.0], [-1.0, 0.0]])
    guard = NearDuplicateGuard(emb, radius=0.01, capacity=1, metric="cosine")
    assert guard.nearest(0) == math.inf
    assert guard.admits(0)
    guard.add(0)
    assert not guard.admits(1)  # cosine distance about 5e-5
    assert guard.admits(2)
    guard.add(2)  # beyond capacity: the guard grows
    guard.add(3)
    assert guard.nearest(1) == pytest.approx(1 - 0.999 / math.hypot(0.999, 0.01))
    assert guard.nearest(1, ignore=0) == pytest.approx(1 - 0.01 / math.hypot(0.999, 0.01))
    assert guard.admits(1, ignore=0)
    guard.replace(0, 1)
    assert not guard.admits(0)
    with pytest.raises(IndexError):
        guard.replace(5, 0)


def test_guard_euclidean_and_exact_duplicates_with_zero_radius() -> None:
    emb = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    guard = NearDuplicateGuard(emb, radius=0.0, capacity=3, metric="euclidean")
    guard.add(0)
    assert not guard.admits(1)  # distance 0 <= radius 0
    assert guard.nearest(2) == pytest.approx(5.0)
    with pytest.raises(InputError, match="radius"):
        NearDuplicateGuard(emb, radius=-1.0, capacity=1)
    with pytest.raises(InputError, match="metric"):
        NearDuplicateGuard(emb, radius=1.0, capacity=1, metric="manhattan")  # type: ignore[arg-type]


def test_cosine_twins_are_refused_with_zero_radius_despite_rounding() -> None:
    # found by hypothesis: these float32 twins (seed 8) come out of 1 - a.b at about 1e-16, not 0
    emb = np.random.default_rng(8).standard_normal((1, 3)).astype(np.float32)
    twins = np.concatenate([emb, emb])
    guard = NearDuplicateGuard(twins, radius=0.0, capacity=2, metric="cosine")
    guard.add(0)
    assert guard.nearest(1) <= 1e-9
    assert not guard.admits(1)


def test_check_embeddings_returns_without_copying() -> None:
    emb = np.ones((4, 3), dtype=np.float32)
    assert check_embeddings(emb, 4) is emb


@pytest.mark.parametrize(
    ("emb", "n", "metric", "match"),
    [
        (np.ones((4, 3), np.int64), 4, "cosine", "float"),
        (np.ones((4, 3)), 5, "cosine", "shape"),
        (np.ones((4, 0)), 4, "cosine", "shape"),
        (np.array([[1.0, 0.0], [np.nan, 1.0]]), 2, "cosine", "row 1 has NaN"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), 2, "cosine", "row 1 is all zeros"),
        (np.ones((2, 2)), 2, "dot", "metric"),
    ],
)
def test_check_embeddings_refuses_bad_input(
    emb: np.ndarray, n: int, metric: str, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        check_embeddings(emb, n, metric=metric)  # type: ignore[arg-type]


def test_zero_rows_are_fine_for_euclidean() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert check_embeddings(emb, 2, metric="euclidean") is emb


def test_isolation_ranks_sparse_points_above_a_dense_cluster() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.01, (50, 3)) + np.array([5.0, 0, 0])
    far = np.array([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    emb = np.concatenate([dense, far])
    rows = np.arange(52)
    score = isolation(emb, rows, rows, k=3, metric="euclidean")
    assert score[50:].min() > score[:50].max()
    # a row is never its own neighbour: a lone duplicate pair is at distance 0, not less
    assert (score >= 0).all()


def test_nearest_distance_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((40, 5))
    rows, ref = np.arange(10), np.arange(10, 40)
    want = euclidean_distances(emb[rows], emb[ref]).min(axis=1)
    got = nearest_distance(emb, rows, ref, metric="euclidean")
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert np.isinf(nearest_distance(emb, rows, ref[:0], metric="euclidean")).all()


def _isolated_twins() -> npt.NDArray[np.float64]:
    """A dense cluster (rows 0-49), two far twins (50, 51) and a single (52) between."""
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.01, (50, 3)) + np.array([5.0, 0, 0])
    twins = np.array([[0.0, 5.0, 0.0], [0.0, 5.0, 0.01]])
    single = np.array([[0.0, 0.0, 2.0]])  # nearer the cluster than the twins
    return np.concatenate([dense, twins, single])


def test_novelty_search_prefers_rows_far_from_known_ones() -> None:
    emb = _isolated_twins()
    open_rows = np.arange(52)  # 52 is labelled
    none_known = NoveltySearch(
        emb, open_rows, open_rows[:0], rng=np.random.default_rng(1), metric="euclidean"
    )
    keys = none_known.keys()
    assert keys[52] == -np.inf  # not open: never a candidate
    assert keys[50:52].min() > keys[:50].max()
    # with 50 labelled, its twin 51 is no longer novel: far from nothing known
    known = NoveltySearch(
        emb,
        np.delete(open_rows, 50),
        np.array([50, 52]),
        rng=np.random.default_rng(1),
        metric="euclidean",
    )
    keys = known.keys()
    assert keys[51] < keys[:50].max()


def test_novelty_search_counts_added_rows_as_known() -> None:
    emb = _isolated_twins()
    search = NoveltySearch(
        emb, np.arange(53), np.array([], np.intp), rng=np.random.default_rng(1), metric="euclidean"
    )
    first = int(np.argmax(search.keys()))
    assert first in (50, 51, 52)
    search.add(50)
    keys = search.keys()
    assert int(np.argmax(keys)) == 52  # the twin of a pick is not novel any more
    assert keys[51] < keys[52]


def test_novelty_keys_are_weighted_at_the_scored_rows_only() -> None:
    emb = _isolated_twins()
    search = NoveltySearch(
        emb, np.arange(52), np.array([52]), rng=np.random.default_rng(1), metric="euclidean"
    )
    plain = search.keys()
    weight = np.linspace(1.0, 2.0, 53)
    weighted = search.keys(weight)
    scored = np.isfinite(plain)
    np.testing.assert_allclose(weighted[scored], plain[scored] * weight[scored])
    assert np.isneginf(weighted[~scored]).all()
    assert weighted[52] == -np.inf  # labelled: no weight makes it a candidate


def test_novelty_search_measures_distances_in_the_whitened_space() -> None:
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((300, 6)) * np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25]) + 1.0
    rows, known = np.arange(280), np.arange(280, 300)
    white = fit_whitening(emb[rows])
    by_hand = NoveltySearch(
        white.apply(emb), rows, known, rng=np.random.default_rng(1), whiten=False
    )
    search = NoveltySearch(emb, rows, known, rng=np.random.default_rng(1), whiten=True)
    np.testing.assert_allclose(search.keys(), by_hand.keys(), rtol=1e-9, atol=1e-12)
    search.add(7)
    by_hand.add(7)
    np.testing.assert_allclose(search.keys(), by_hand.keys(), rtol=1e-9, atol=1e-12)


def test_whitened_novelty_ignores_how_much_a_direction_is_stretched() -> None:
    # A direction of large variance (brightness, pose) dominates raw distances; after
    # whitening, stretching it further changes nothing, while the raw keys change.
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((400, 5)) + 3.0
    stretched = emb * np.array([5.0, 1.0, 1.0, 1.0, 1.0])
    rows, known = np.arange(380), np.arange(380, 400)

    def top(e: npt.NDArray[np.float64], whiten: bool) -> list[int]:
        keys = NoveltySearch(e, rows, known, rng=np.random.default_rng(1), whiten=whiten).keys()
        return [int(r) for r in np.argsort(-keys)[:10]]

    assert top(emb, True) == top(stretched, True)
    assert top(emb, False) != top(stretched, False)


def _noise_dominated(n: int = 600, d: int = 40, seed: int = 3) -> npt.NDArray[np.float64]:
    """Two strong directions over isotropic noise: whitening would mostly stretch noise."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, d))
    emb[:, :2] *= 12.0
    return emb + 5.0


def _structured(n: int = 600, d: int = 40, seed: int = 3) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.exp(-np.arange(d) / 12.0) + 5.0


def test_auto_whitening_leaves_a_noise_dominated_space_raw() -> None:
    emb = _noise_dominated()
    rows, known = np.arange(580), np.arange(580, 600)

    def search(whiten: WhitenMode) -> NoveltySearch:
        return NoveltySearch(emb, rows, known, rng=np.random.default_rng(1), whiten=whiten)

    auto = search("auto")
    assert auto.fitted is not None
    assert auto.fitted.noise_dominated
    assert not auto.whitened
    np.testing.assert_array_equal(auto.keys(), search(False).keys())
    assert not np.array_equal(auto.keys(), search(True).keys())


def test_auto_whitening_whitens_a_structured_space() -> None:
    emb = _structured()
    rows, known = np.arange(580), np.arange(580, 600)
    auto = NoveltySearch(emb, rows, known, rng=np.random.default_rng(1), whiten="auto")
    white = NoveltySearch(emb, rows, known, rng=np.random.default_rng(1), whiten=True)
    assert auto.fitted is not None
    assert not auto.fitted.noise_dominated
    assert auto.whitened
    np.testing.assert_array_equal(auto.keys(), white.keys())
    assert NoveltySearch(emb, rows, known, rng=np.random.default_rng(1)).fitted is None
