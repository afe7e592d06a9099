"""Partial PCA whitening: the space discovery measures novelty in."""

from __future__ import annotations

import numpy as np
import pytest

from planner.core.whitening import fit_whitening
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
