"""Partial PCA whitening: the space discovery measures novelty in."""

from __future__ import annotations

import numpy as np
import pytest

from planner.core.whitening import (
    WHITEN_MIN_SIGNAL,
    fit_whitening,
    noise_dominated,
    signal_rank,
)
from planner.errors import InputError


def _stretched(n: int = 2_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 4)) * np.array([10.0, 3.0, 1.0, 0.1]) + 5.0


def test_full_whitening_gives_unit_covariance() -> None:
    x = _stretched()
    z = fit_whitening(x, variance=1.0).apply(x)
    assert z.shape == x.shape
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(4), atol=1e-9)


def test_power_zero_is_a_rotation_and_variance_drops_small_directions() -> None:
    x = _stretched()
    z = fit_whitening(x, variance=1.0, power=0.0).apply(x)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), np.linalg.norm(centred, axis=1))
    # 10^2 of about 110.01 total variance: one direction explains 90%, two 99.9%
    assert fit_whitening(x, variance=0.9).projection.shape == (4, 1)
    assert fit_whitening(x, variance=0.99).projection.shape == (4, 2)


def test_one_row_or_no_variance_is_the_identity_after_centring() -> None:
    x = np.ones((5, 3))
    white = fit_whitening(x)
    np.testing.assert_array_equal(white.apply(x), np.zeros((5, 3)))
    np.testing.assert_array_equal(white.apply(np.array([2.0, 1.0, 1.0])), [1.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"variance": 0.0}, "variance"), ({"power": 0.7}, "power"), ({"power": -0.1}, "power")],
)
def test_bad_arguments_say_what(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(InputError, match=match):
        fit_whitening(_stretched(10), **kwargs)


def test_an_empty_sample_is_refused() -> None:
    with pytest.raises(InputError, match="sample"):
        fit_whitening(np.zeros((0, 3)))


def _planted(rank: int, *, d: int = 60, n: int = 2_000, seed: int = 0) -> np.ndarray:
    """``rank`` strong directions over isotropic noise of unit variance in ``d`` dimensions."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :rank]
    signal = rng.standard_normal((n, rank)) * np.linspace(10.0, 3.0, rank) @ basis.T
    return signal + rng.standard_normal((n, d))


def _decaying(*, d: int = 60, n: int = 2_000, seed: int = 0) -> np.ndarray:
    """A spectrum decaying steadily (variance exp(-i / 10), like the digits' pixels, whose
    eigenvalues fall by 1/70 over 40 directions): no flat floor of noise."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * np.exp(-np.arange(d) / 20.0)


@pytest.mark.parametrize("rank", [0, 1, 3, 8])
def test_signal_rank_counts_the_directions_above_a_noise_floor(rank: int) -> None:
    x = _planted(rank)
    eigval = np.linalg.eigvalsh(np.cov(x.T, bias=True))
    assert signal_rank(eigval, *x.shape) == rank


def test_signal_rank_of_nothing_is_zero() -> None:
    assert signal_rank(np.zeros(4), 10, 4) == 0


def test_a_few_directions_over_noise_are_noise_dominated_a_decaying_spectrum_is_not() -> None:
    low_rank = fit_whitening(_planted(3))
    assert low_rank.signal == 3
    assert low_rank.kept > 40  # 99% of the variance needs most noise directions
    assert low_rank.signal_share < WHITEN_MIN_SIGNAL
    assert low_rank.noise_dominated
    smooth = fit_whitening(_decaying())
    assert smooth.signal_share >= WHITEN_MIN_SIGNAL
    assert not smooth.noise_dominated


@pytest.mark.parametrize(
    "sample",
    [
        _planted(3),
        _planted(3, n=40),  # fewer rows than dimensions: from the (m, m) Gram matrix
        _planted(30),
        _decaying(),
        _decaying(n=30),
        _stretched(),
        np.ones((5, 3)),  # no variance at all
        np.ones((1, 3)),
    ],
    ids=[
        "planted",
        "planted-wide",
        "planted-30",
        "decaying",
        "decaying-wide",
        "stretched",
        "flat",
        "one-row",
    ],
)
def test_noise_dominated_from_the_eigenvalues_alone_agrees_with_the_fit(
    sample: np.ndarray,
) -> None:
    assert noise_dominated(sample) == fit_whitening(sample).noise_dominated
    assert (
        noise_dominated(sample, variance=0.5) == fit_whitening(sample, variance=0.5).noise_dominated
    )


def test_the_noise_check_refuses_what_the_fit_refuses() -> None:
    with pytest.raises(InputError, match="variance"):
        noise_dominated(_stretched(10), variance=0.0)
    with pytest.raises(InputError, match="shape"):
        noise_dominated(np.zeros((0, 3)))
