"""Partial PCA whitening of embeddings: the space discovery measures novelty in.

Raw embedding distances are dominated by the few directions of largest variance (stroke
thickness, brightness, pose), which say little about class; a rare class often differs from
the head classes along directions of small variance. :func:`fit_whitening` centres a sample,
keeps the principal directions that explain ``variance`` of it and divides each by its
standard deviation raised to ``2 * power`` (``power=0.5``: full whitening, the Mahalanobis
distance; ``0``: plain PCA). Distances are then taken around the sample's mean. On the
digits sets of ``bench/effectiveness``, ``power=0.5`` at 99% variance met the quotas with
fewer labels than the raw space and raised macro-F1; on the generated shapes, whose
embeddings are mostly pixel noise, it cost labels (it stretches the noise directions), so
discovery uses it only when asked (``discovery_whiten``; docs/effectiveness.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from planner.errors import InputError

WHITEN_VARIANCE = 0.99
"""Share of the sample's variance the kept principal directions explain."""
WHITEN_POWER = 0.5
"""Each kept direction is divided by its eigenvalue to this power (0.5: full whitening)."""


@dataclass(frozen=True, slots=True)
class Whitening:
    """The map ``x -> (x - mean) @ projection``; ``mean: (d,)``, ``projection: (d, k)``."""

    mean: npt.NDArray[np.float64]
    projection: npt.NDArray[np.float64]

    def apply(self, rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """``rows: (m, d)`` (or one ``(d,)`` row) in the whitened space: ``(m, k)``."""
        out: npt.NDArray[np.float64] = (np.asarray(rows, np.float64) - self.mean) @ self.projection
        return out


def fit_whitening(
    sample: npt.NDArray[np.floating[Any]],
    *,
    variance: float = WHITEN_VARIANCE,
    power: float = WHITEN_POWER,
) -> Whitening:
    """Fit on ``sample: (m, d)``; see the module docstring. Costs one ``(d, d)`` eigensolve.

    Directions of zero variance are dropped; a sample without any variance gives the identity
    after centring.
    """
    if not 0.0 < variance <= 1.0:
        raise InputError(f"whitening variance must lie in (0, 1], got {variance}")
    if not 0.0 <= power <= 0.5:
        raise InputError(f"whitening power must lie in [0, 0.5], got {power}")
    x = np.asarray(sample, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"whitening needs a (m, d) sample with m >= 1, got shape {x.shape}")
    mean = x.mean(axis=0)
    centred = x - mean
    eigval, eigvec = np.linalg.eigh(centred.T @ centred / x.shape[0])
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]  # largest first
    positive = eigval > eigval[0] * 1e-12 if eigval[0] > 0 else np.zeros(eigval.size, bool)
    if not positive.any():
        return Whitening(mean, np.eye(x.shape[1]))
    eigval, eigvec = eigval[positive], eigvec[:, positive]
    share = np.cumsum(eigval) / eigval.sum()
    k = min(int(np.searchsorted(share, variance - 1e-12)) + 1, eigval.size)
    return Whitening(mean, eigvec[:, :k] / eigval[:k] ** power)
