"""Near-duplicate control for a batch: no two picks closer than a radius in embedding space.

A batch is built one pick at a time; :class:`NearDuplicateGuard` admits a candidate only if
its nearest already-picked neighbour is farther than ``radius``, so two rows within the
radius of each other (near-duplicate frames, re-uploads) are never both picked. Each check
costs one ``(picked, d)`` product: nothing ``(n, n)`` or ``(n, d)`` is ever built.

Distances: ``cosine`` (default) is ``1 - cos(u, v)`` in [0, 2], the usual metric for CLIP or
DINO style embeddings; ``euclidean`` is the L2 distance. The default radius is
``radius_fraction`` (0.05) times the median distance between random pairs of the eligible
pool, so it scales with whatever embedding space it is given; for random directions in many
dimensions that median is about 1 and the radius means cosine similarity >= 0.95.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from planner.core.whitening import Whitening, WhitenMode, fit_whitening
from planner.errors import InputError

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[Metric, ...] = ("cosine", "euclidean")
RADIUS_FRACTION = 0.05
"""Default radius as a share of the median pairwise distance."""
EXACT = 1e-9
"""Distances up to this are exact duplicates, whatever the radius: a cosine distance of twin
rows comes out of the dot product as a rounding error of about 1e-16, not 0."""
RADIUS_SAMPLE = 1_000
"""Random pairs measured to estimate the median distance."""
_CHUNK = 65_536


def check_embeddings(
    embeddings: npt.ArrayLike, n_items: int, *, metric: Metric = "cosine"
) -> npt.NDArray[np.floating[Any]]:
    """Validate ``embeddings: (n, d)`` float rows (finite; non-zero for cosine), without copying.

    Checked in row blocks, so validation needs only ``(block, d)`` temporaries.
    """
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
    array = np.asarray(embeddings)
    if array.dtype.kind != "f":
        raise InputError(f"embeddings must be float (float32 is enough), got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[0] != n_items or array.shape[1] == 0:
        raise InputError(
            f"embeddings must have shape ({n_items}, d) with d >= 1, got {array.shape}"
        )
    for start in range(0, n_items, _CHUNK):
        block = array[start : start + _CHUNK]
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise InputError(f"embeddings row {row} has NaN or inf; re-embed or drop the item")
        if metric == "cosine":
            zero = ~block.any(axis=1)
            if zero.any():
                row = start + int(np.flatnonzero(zero)[0])
                raise InputError(
                    f"embeddings row {row} is all zeros, which has no cosine direction; "
                    "use metric='euclidean' or drop the item"
                )
    return array


def unit_rows(rows: npt.NDArray[np.floating[Any]], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """``rows`` (or one row) scaled to unit length as ``dtype``; a zero row stays zero."""
    out = np.asarray(rows, dtype=dtype)
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    unit: npt.NDArray[Any] = out / np.where(norm > 0, norm, 1.0)
    return unit


def _prepare(rows: npt.NDArray[np.floating[Any]], metric: Metric) -> npt.NDArray[np.float64]:
    if metric == "cosine":
        # a zero row (only after whitening: inputs are checked) stays zero, at distance 1
        unit: npt.NDArray[np.float64] = unit_rows(rows, np.float64)
        return unit
    return np.asarray(rows, dtype=np.float64)


def pair_distances(
    a: npt.NDArray[np.floating[Any]], b: npt.NDArray[np.floating[Any]], *, metric: Metric
) -> npt.NDArray[np.float64]:
    """Row-wise distances between ``a: (m, d)`` and ``b: (m, d)``; ``(m,)``."""
    pa, pb = _prepare(a, metric), _prepare(b, metric)
    if metric == "cosine":
        out: npt.NDArray[np.float64] = np.clip(1.0 - (pa * pb).sum(axis=1), 0.0, 2.0)
        return out
    dist: npt.NDArray[np.float64] = np.linalg.norm(pa - pb, axis=1)
    return dist


def estimate_radius(
    embeddings: npt.NDArray[np.floating[Any]],
    pool: npt.NDArray[np.intp],
    *,
    rng: np.random.Generator,
    metric: Metric = "cosine",
    fraction: float = RADIUS_FRACTION,
    sample: int = RADIUS_SAMPLE,
) -> float:
    """``fraction`` times the median distance of ``sample`` random pairs drawn from ``pool``.

    ``pool: (k,)`` row indices of ``embeddings: (n, d)``. Fewer than two rows: radius 0
    (only exact duplicates are then refused).
    """
    if not 0.0 <= fraction <= 2.0:
        raise InputError(f"radius fraction must lie in [0, 2], got {fraction}")
    if pool.size < 2:
        return 0.0
    first = rng.integers(0, pool.size, size=sample)
    # A shift in [1, k) never pairs a row with itself.
    second = (first + rng.integers(1, pool.size, size=sample)) % pool.size
    dist = pair_distances(embeddings[pool[first]], embeddings[pool[second]], metric=metric)
    return float(fraction * np.median(dist))


class NearDuplicateGuard:
    """Admits a row only if no admitted row lies within ``radius`` (distance <= radius).

    ``embeddings: (n, d)`` is read one row at a time; the guard keeps the admitted rows,
    ``(capacity, d)`` at most.
    """

    __slots__ = ("_count", "_emb", "_metric", "_picked", "_radius")

    def __init__(
        self,
        embeddings: npt.NDArray[np.floating[Any]],
        *,
        radius: float,
        capacity: int,
        metric: Metric = "cosine",
    ) -> None:
        if not math.isfinite(radius) or radius < 0:
            raise InputError(f"diversity radius must be finite and >= 0, got {radius}")
        if metric not in METRICS:
            raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
        self._emb = embeddings
        self._metric: Metric = metric
        self._radius = radius
        self._picked = np.zeros((max(capacity, 1), embeddings.shape[1]), np.float64)
        self._count = 0

    @property
    def radius(self) -> float:
        return self._radius

    def nearest(self, row: int, *, ignore: int | None = None) -> float:
        """Distance from ``row`` to its nearest admitted row (inf when there is none).

        ``ignore``: the position (in admission order) of one admitted row to leave out.
        """
        if self._count == 0:
            return math.inf
        v = _prepare(self._emb[row], self._metric)
        picked = self._picked[: self._count]
        if self._metric == "cosine":
            dist = np.maximum(1.0 - picked @ v, 0.0)
        else:
            dist = np.sqrt(((picked - v) ** 2).sum(axis=1))
        if ignore is not None:
            dist[ignore] = math.inf
        return float(dist.min())

    def admits(self, row: int, *, ignore: int | None = None) -> bool:
        """Whether ``row`` is farther than the radius from every admitted row (but ``ignore``)."""
        return self.nearest(row, ignore=ignore) > max(self._radius, EXACT)

    def add(self, row: int) -> None:
        """Record ``row`` as picked (the caller checked :meth:`admits`)."""
        if self._count == self._picked.shape[0]:
            grown: Any = np.concatenate([self._picked, np.zeros_like(self._picked)])
            self._picked = grown
        self._picked[self._count] = _prepare(self._emb[row], self._metric)
        self._count += 1

    def replace(self, position: int, row: int) -> None:
        """Put ``row`` in place of the row admitted at ``position`` (a swap in the batch)."""
        if not 0 <= position < self._count:
            raise IndexError(position)
        self._picked[position] = _prepare(self._emb[row], self._metric)


ISOLATION_SAMPLE = 4_096
"""Rows sampled as candidates and as reference when scoring isolation."""
KNOWN_SAMPLE = 16_384
"""Labelled rows, at most, that novelty is measured against."""


def isolation(
    embeddings: npt.NDArray[np.floating[Any]],
    rows: npt.NDArray[np.intp],
    reference: npt.NDArray[np.intp],
    *,
    k: int = 10,
    metric: Metric = "cosine",
) -> npt.NDArray[np.float64]:
    """Mean distance from each of ``rows`` to its ``k`` nearest ``reference`` rows; ``(rows,)``.

    A row is never its own neighbour. High isolation marks items in sparse regions: a class
    the model has never seen has few members, so its items have few close neighbours (the
    density cue of rare-category detection). Costs ``len(rows) x len(reference)`` distances,
    computed in row blocks.
    """
    ref = _prepare(embeddings[reference], metric)
    k = max(1, min(k, reference.size - 1))
    out = np.zeros(rows.size, np.float64)
    for start in range(0, rows.size, 1024):
        part = rows[start : start + 1024]
        q = _prepare(embeddings[part], metric)
        if metric == "cosine":
            dist = np.maximum(1.0 - q @ ref.T, 0.0)
        else:
            sq = (q**2).sum(1)[:, None] + (ref**2).sum(1)[None, :] - 2.0 * q @ ref.T
            dist = np.sqrt(np.maximum(sq, 0.0))
        dist[part[:, None] == reference[None, :]] = np.inf
        out[start : start + part.size] = np.sort(dist, axis=1)[:, :k].mean(axis=1)
    return out


def nearest_distance(
    embeddings: npt.NDArray[np.floating[Any]],
    rows: npt.NDArray[np.intp],
    reference: npt.NDArray[np.intp],
    *,
    metric: Metric = "cosine",
) -> npt.NDArray[np.float64]:
    """Distance from each of ``rows`` to its nearest ``reference`` row; ``(rows,)``
    (``inf`` without reference rows). Computed in ``1024 x 1024`` blocks."""
    out = np.full(rows.size, np.inf)
    for r0 in range(0, reference.size, 1024):
        ref = _prepare(embeddings[reference[r0 : r0 + 1024]], metric)
        for start in range(0, rows.size, 1024):
            q = _prepare(embeddings[rows[start : start + 1024]], metric)
            if metric == "cosine":
                dist = np.maximum(1.0 - q @ ref.T, 0.0)
            else:
                sq = (q**2).sum(1)[:, None] + (ref**2).sum(1)[None, :] - 2.0 * q @ ref.T
                dist = np.sqrt(np.maximum(sq, 0.0))
            part = out[start : start + q.shape[0]]
            np.minimum(part, dist.min(axis=1), out=part)
    return out


class NoveltySearch:
    """Discovery keys: isolation in the pool times the distance to the nearest *known* row.

    ``known`` rows (labelled or in flight) and every row picked through :meth:`add` count as
    known, so a batch's discovery picks spread over regions nothing labelled covers yet,
    instead of returning to the near-duplicates of isolated items already labelled. Scores
    up to ``sample`` random open rows against another random sample (``sample^2`` distances)
    and at most ``KNOWN_SAMPLE`` known rows. With ``whiten`` distances are measured
    after partial PCA whitening fitted on the reference sample
    (:func:`planner.core.whitening.fit_whitening`); ``"auto"`` whitens unless the sample's
    spectrum says the kept directions are mostly noise (:attr:`Whitening.noise_dominated`).
    Only the sampled rows are transformed, ``(2 sample + KNOWN_SAMPLE, k)`` at most.
    """

    __slots__ = ("_emb", "_iso", "_metric", "_n", "_near", "_white", "_z", "fitted", "rows")

    def __init__(
        self,
        embeddings: npt.NDArray[np.floating[Any]],
        open_rows: npt.NDArray[np.intp],
        known: npt.NDArray[np.intp],
        *,
        rng: np.random.Generator,
        metric: Metric = "cosine",
        sample: int = ISOLATION_SAMPLE,
        whiten: WhitenMode = False,
    ) -> None:
        self._emb, self._metric, self._n = embeddings, metric, embeddings.shape[0]
        self.rows = rng.choice(open_rows, min(sample, open_rows.size), replace=False)
        reference = rng.choice(open_rows, min(sample, open_rows.size), replace=False)
        if known.size > KNOWN_SAMPLE:
            known = rng.choice(known, KNOWN_SAMPLE, replace=False)
        self.fitted: Whitening | None = None
        """The whitening fitted for ``whiten`` (also when ``auto`` then left it out)."""
        if whiten is not False and reference.size >= 2:
            self.fitted = fit_whitening(embeddings[reference])
        self._white = self.fitted
        if whiten == "auto" and self.fitted is not None and self.fitted.noise_dominated:
            self._white = None
        # the sampled rows, in the space distances are measured in, and their positions there
        union = np.union1d(np.union1d(self.rows, reference), known)
        self._z = self._space(embeddings[union])
        rows, ref, kn = (np.searchsorted(union, a) for a in (self.rows, reference, known))
        self._iso: npt.NDArray[np.float64]
        if open_rows.size < 2:
            self._iso = np.ones(self.rows.size)
        else:
            self._iso = isolation(self._z, rows, ref, metric=metric)
        self._near = nearest_distance(self._z, rows, kn, metric=metric)
        self._z = self._z[rows]  # only the scored rows are needed from here on

    @property
    def whitened(self) -> bool:
        """Whether distances are measured in the whitened space."""
        return self._white is not None

    def _space(self, rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        if self._white is None:
            return np.asarray(rows, np.float64)
        return self._white.apply(rows)

    def keys(self, weight: npt.NDArray[np.float64] | None = None) -> npt.NDArray[np.float64]:
        """``(n,)`` isolation x nearest-known distance of the scored rows (``-inf`` elsewhere);
        plain isolation while nothing is known; times ``weight: (n,)`` when given (read
        only at the scored rows)."""
        out = np.full(self._n, -np.inf)
        near = self._near
        key = self._iso if np.isinf(near).all() else self._iso * near
        out[self.rows] = key if weight is None else key * weight[self.rows]
        return out

    def add(self, row: int) -> None:
        """Count ``row`` (just picked) as known."""
        v = _prepare(self._space(self._emb[row]), self._metric)
        z = _prepare(self._z, self._metric)
        if self._metric == "cosine":
            dist = np.maximum(1.0 - z @ v, 0.0)
        else:
            dist = np.sqrt(((z - v) ** 2).sum(axis=1))
        np.minimum(self._near, dist, out=self._near)
