"""The labelled neighbours' vote: how many of an item's nearest labelled images hold a class.

A model trained on a handful of images of a rare class gives it low, overconfident
probabilities, and ranks the class's obvious look-alikes (near-duplicate frames, the same
object from another angle) far down. The images labelled so far know better: an item whose
nearest labelled images hold the class most likely holds it too. This is the k-nearest-
neighbour model of active search (Garnett et al., ICML 2012) and of SEALS (Coleman et al.,
AAAI 2022), which restricts candidates to the labelled set's neighbours.

:func:`neighbour_vote` returns, for every row, the share of its ``k`` nearest labelled rows
(cosine distance) that hold each class, ``0`` for labelled rows themselves; fewer than ``k``
labelled rows still divide by ``k``, so a vote from one or two images stays modest. With
``power > 0`` the share is weighted by inverse distance (``d ** -power``, Shepard's
interpolation): a near-duplicate of a labelled image takes that image's classes, while a
plain count of two neighbours gave it 0.5 whenever its second neighbour held another
class, as it gave an image with only a distant labelled look-alike. The planner's quota
term reads ``max(model, vote)`` (:func:`planner.core.plan.plan_batch`); uncertainty stays
the model's.

The vote needs embeddings in which neighbours mean something: on embeddings whose spectrum
is mostly noise (:attr:`planner.core.whitening.Whitening.noise_dominated`) the nearest
labelled image is a matter of noise, and :func:`vote_space_ok` says to leave it out.

Cost: the vote of ``r`` candidate rows against ``m`` labelled rows is ``O(r m d)``, in blocks
of at most ``BLOCK`` rows and ``BLOCK_ELEMENTS`` similarities (memory
``O(BLOCK_ELEMENTS + n c)``). On a large pool :func:`vote_candidates` first
keeps the ``r`` rows most similar to (a sample of at most ``ANCHOR_SAMPLE``) labelled images
of the classes that are voted for, ``O(n ANCHOR_SAMPLE d)``: rows far from all of them get no
vote for those classes anyway, unless no labelled image at all lies near them.
``bench/vote_bench.py`` measures what the vote adds to a planning call on a million rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from planner.core.diversity import unit_rows
from planner.core.whitening import noise_dominated
from planner.errors import InputError

FloatArray = npt.NDArray[np.float64]
BLOCK = 4_096
"""Rows per block of the distance computation, at most."""
BLOCK_ELEMENTS = 4_000_000
"""Row x labelled-row similarities per block, at most (16 MB of float32, 32 MB of indices)."""
SPECTRUM_SAMPLE = 2_048
"""Rows sampled to decide from the spectrum whether neighbours mean something."""
MIN_DISTANCE = 1e-6
"""Cosine distances below this count as this in a distance-weighted vote (a duplicate's
weight stays finite)."""
ANCHOR_SAMPLE = 512
"""At most this many labelled rows (evenly spaced) choose the candidates of a large pool."""


def _unit(rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
    unit: npt.NDArray[np.float32] = unit_rows(rows, np.float32)  # float32: half the bytes
    return unit


def neighbour_vote(
    embeddings: npt.NDArray[np.floating[Any]],
    labelled_rows: npt.NDArray[np.intp],
    labelled_classes: npt.NDArray[np.floating[Any]],
    *,
    k: int = 3,
    candidates: npt.NDArray[np.intp] | None = None,
    power: float = 0.0,
) -> npt.NDArray[np.float32]:
    """``(n, c)``: per row, the share of its ``k`` nearest labelled rows holding each class.

    ``embeddings: (n, d)`` (checked by the caller); ``labelled_rows: (m,)`` distinct rows of
    it; ``labelled_classes: (m, c)`` 0/1 presence of each class in each labelled row (one 1
    per row for single-label data); ``candidates``: the rows to vote on (default all; the
    rest get 0, see :func:`vote_candidates`). Labelled rows get 0 (they are not candidates).
    ``power``: each neighbour's vote weighs ``d ** -power``, ``d`` its cosine distance (at
    least ``MIN_DISTANCE``), the weights of a row's ``k`` neighbours summing to 1 (to
    ``m / k`` with ``m < k`` labelled rows); 0 (the default) is a plain count.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    if not (math.isfinite(power) and power >= 0):
        raise InputError(f"power must be finite and >= 0, got {power}")
    rows = np.asarray(labelled_rows, dtype=np.intp)
    marks = np.asarray(labelled_classes, dtype=np.float64)
    if marks.ndim != 2 or marks.shape[0] != rows.size:
        raise InputError(
            f"labelled_classes must be ({rows.size}, c), one row per labelled row, "
            f"got {marks.shape}"
        )
    n, c = embeddings.shape[0], marks.shape[1]
    out = np.zeros((n, c), np.float32)  # shares of k: float32 is exact enough
    if rows.size == 0:
        return out
    anchors = _unit(embeddings[rows])
    take = min(k, rows.size)
    targets = np.arange(n) if candidates is None else np.asarray(candidates, np.intp)
    step = max(1, min(BLOCK, BLOCK_ELEMENTS // rows.size))
    for start in range(0, targets.size, step):
        block = targets[start : start + step]
        sim = _unit(embeddings[block]) @ anchors.T
        if take < rows.size:
            nearest = np.argpartition(sim, -take, axis=1)[:, -take:]
        else:
            nearest = np.broadcast_to(np.arange(rows.size), (block.size, rows.size))
        if power == 0:
            out[block] = marks[nearest].sum(axis=1) / k
            continue
        near = np.take_along_axis(sim, nearest, axis=1).astype(np.float64)
        weight = np.maximum(1.0 - near, MIN_DISTANCE) ** -power
        weight *= (take / k) / weight.sum(axis=1, keepdims=True)
        out[block] = np.einsum("rk,rkc->rc", weight, marks[nearest])
    out[rows] = 0.0
    return out


def vote_candidates(
    embeddings: npt.NDArray[np.floating[Any]], anchor_rows: npt.NDArray[np.intp], *, limit: int
) -> npt.NDArray[np.intp]:
    """The ``limit`` rows (sorted) most cosine-similar to any of ``anchor_rows`` (the labelled
    rows of the classes voted for; at most ``ANCHOR_SAMPLE`` of them, evenly spaced); every
    row when there are no more than ``limit``."""
    n = embeddings.shape[0]
    if n <= limit:
        return np.arange(n)
    anchors = np.asarray(anchor_rows, np.intp)
    if anchors.size > ANCHOR_SAMPLE:
        anchors = anchors[np.linspace(0, anchors.size - 1, ANCHOR_SAMPLE).astype(np.intp)]
    unit = _unit(embeddings[anchors])
    best = np.empty(n, np.float32)
    for start in range(0, n, BLOCK):
        best[start : start + BLOCK] = (_unit(embeddings[start : start + BLOCK]) @ unit.T).max(1)
    best[anchors] = -np.inf  # labelled themselves
    return np.sort(np.argpartition(-best, limit - 1)[:limit])


def vote_space_ok(embeddings: npt.NDArray[np.floating[Any]], rows: npt.NDArray[np.intp]) -> bool:
    """Whether the spectrum of ``rows`` (``SPECTRUM_SAMPLE`` of them, evenly spaced) has
    enough signal for a neighbour vote: not
    :attr:`~planner.core.whitening.Whitening.noise_dominated`; False under 2 rows."""
    if rows.size < 2:
        return False
    sample = rows[np.linspace(0, rows.size - 1, min(SPECTRUM_SAMPLE, rows.size)).astype(np.intp)]
    return not noise_dominated(embeddings[np.unique(sample)])
