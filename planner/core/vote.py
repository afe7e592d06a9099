"""The labelled neighbours' vote: how many of an item's nearest labelled images hold a class.

A model trained on a handful of images of a rare class gives it low, overconfident
probabilities, and ranks the class's obvious look-alikes (near-duplicate frames, the same
object from another angle) far down. The images labelled so far know better: an item whose
nearest labelled images hold the class most likely holds it too. This is the k-nearest-
neighbour model of active search (Garnett et al., ICML 2012) and of SEALS (Coleman et al.,
AAAI 2022), which restricts candidates to the labelled set's neighbours.

:func:`neighbour_vote` returns, for every row, the share of its ``k`` nearest labelled rows
(cosine distance) that hold each class, ``0`` for labelled rows themselves; fewer than ``k``
labelled rows still divide by ``k``, so a vote from one or two images stays modest. The
planner's quota term reads ``max(model, vote)`` (:func:`planner.core.plan.plan_batch`);
uncertainty stays the model's.

The vote needs embeddings in which neighbours mean something: on embeddings whose spectrum
is mostly noise (:attr:`planner.core.whitening.Whitening.noise_dominated`) the nearest
labelled image is a matter of noise, and :func:`vote_space_ok` says to leave it out.

Cost: ``O(n m d)`` for ``n`` rows and ``m`` labelled rows, in blocks of ``BLOCK`` rows, so
memory is ``O(BLOCK m + n c)``; 100,000 rows against 5,000 labelled ones in 512
dimensions are about 2.6e11 multiply-adds (seconds with BLAS).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from planner.core.whitening import fit_whitening
from planner.errors import InputError

FloatArray = npt.NDArray[np.float64]
BLOCK = 4_096
"""Rows per block of the distance computation."""
SPECTRUM_SAMPLE = 2_048
"""Rows sampled to decide from the spectrum whether neighbours mean something."""


def _unit(rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    out = np.asarray(rows, dtype=np.float32)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    unit: npt.NDArray[np.float32] = out / np.where(norm > 0, norm, 1.0)
    return unit


def neighbour_vote(
    embeddings: npt.NDArray[np.floating[Any]],
    labelled_rows: npt.NDArray[np.intp],
    labelled_classes: npt.NDArray[np.floating[Any]],
    *,
    k: int = 3,
) -> FloatArray:
    """``(n, c)``: per row, the share of its ``k`` nearest labelled rows holding each class.

    ``embeddings: (n, d)`` (checked by the caller); ``labelled_rows: (m,)`` distinct rows of
    it; ``labelled_classes: (m, c)`` 0/1 presence of each class in each labelled row (one 1
    per row for single-label data). Labelled rows get 0 (they are not candidates).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    rows = np.asarray(labelled_rows, dtype=np.intp)
    marks = np.asarray(labelled_classes, dtype=np.float64)
    if marks.ndim != 2 or marks.shape[0] != rows.size:
        raise InputError(
            f"labelled_classes must be ({rows.size}, c), one row per labelled row, "
            f"got {marks.shape}"
        )
    n, c = embeddings.shape[0], marks.shape[1]
    out = np.zeros((n, c))
    if rows.size == 0:
        return out
    anchors = _unit(embeddings[rows])
    take = min(k, rows.size)
    for start in range(0, n, BLOCK):
        sim = _unit(embeddings[start : start + BLOCK]) @ anchors.T
        if take < rows.size:
            nearest = np.argpartition(-sim, take - 1, axis=1)[:, :take]
        else:
            nearest = np.broadcast_to(np.arange(rows.size), (sim.shape[0], rows.size))
        out[start : start + sim.shape[0]] = marks[nearest].sum(axis=1) / k
    out[rows] = 0.0
    return out


def vote_space_ok(embeddings: npt.NDArray[np.floating[Any]], rows: npt.NDArray[np.intp]) -> bool:
    """Whether the spectrum of ``rows`` (``SPECTRUM_SAMPLE`` of them, evenly spaced) has
    enough signal for a neighbour vote: not
    :attr:`~planner.core.whitening.Whitening.noise_dominated`; False under 2 rows."""
    if rows.size < 2:
        return False
    sample = rows[np.linspace(0, rows.size - 1, min(SPECTRUM_SAMPLE, rows.size)).astype(np.intp)]
    return not fit_whitening(embeddings[np.unique(sample)]).noise_dominated
