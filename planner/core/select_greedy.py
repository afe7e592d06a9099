"""The class-balanced batch objective and its lazy greedy maximiser.

Bengar et al. (WACV 2022) choose ``z in {0,1}^n`` with ``sum z = b`` minimising

    f(z) = z^T U + lambda * || P^T z - s ||_1,   U = -uncertainty, P = probs, s = shortfall,

with the L1 norm optionally weighted per class (``w_c``, e.g. the quotas' criticality; 1 in
the paper). Adding item ``i`` when ``r = s - P^T z`` is still to cover lowers ``f`` by exactly

    gain_i = u_i + lambda * sum_c w_c (|r_c| - |r_c - p_ic|)
           = u_i + lambda * sum_c w_c (2 min(p_ic, max(r_c, 0)) - p_ic),

so overshooting a class that is already covered costs as much as covering a short one earns.
That suits class distributions (single-label rows): a row's mass on a covered class is mass
not on a short one. Presence probabilities (detection: several classes in one image) call
for the **one-sided** norm instead, ``2 * sum_c w_c max(s_c - (P^T z)_c, 0)``: there the
L1 overshoot would charge an image for every other object it holds, and once the quotas are
met it would prefer the images with the fewest objects over the most uncertain ones. Since
``|r| = 2 max(r, 0) - r``, the one-sided gain is the L1 gain plus ``lambda * sum_c w_c p_ic``:
the same short class pulls as hard, and a covered class costs nothing.
``r`` only shrinks as picks are added and each term is non-decreasing in ``r_c``, so gains
only shrink (the objective is submodular): an item's gain at the start is an upper bound on
all its later gains. The greedy below is therefore *lazy*: a heap of stale bounds, re-scored
on top, fed from the pool in descending order of starting gain (``np.argpartition`` blocks).
Items whose bound is below the current best are never scored, yet the result is the same as
scoring the whole pool at every step.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_CHUNK = 65_536


@dataclass(frozen=True, slots=True)
class Objective:
    """``value = -uncertainty_total + balance_lambda * balance_penalty`` (lower is better).

    ``balance_penalty = sum_c w_c |expected_c - s_c|``.
    """

    value: float
    uncertainty_total: float
    balance_penalty: float
    expected: FloatArray
    """``(c,)`` expected picks per class, ``P^T z``."""


def open_deficit(residual: FloatArray, *, one_sided: bool) -> FloatArray:
    """Per class, how far ``residual = s - P^T z`` (any shape) is from covered: ``|r|``, or
    ``2 max(r, 0)`` when ``one_sided`` (see the module docstring)."""
    if one_sided:
        out: FloatArray = 2.0 * np.maximum(residual, 0.0)
        return out
    return np.abs(residual)


def objective(
    picked: npt.ArrayLike,
    uncertainty: npt.ArrayLike,
    probs: npt.ArrayLike,
    shortfall: npt.ArrayLike,
    *,
    balance_lambda: float,
    weights: npt.ArrayLike | None = None,
    one_sided: bool = False,
) -> Objective:
    """``f(z)`` for the rows ``picked: (k,)`` of ``uncertainty: (n,)`` and ``probs: (n, c)``;
    ``one_sided``: overshoot costs nothing (presence probabilities)."""
    idx = np.asarray(picked, dtype=np.intp)
    u = np.asarray(uncertainty, dtype=np.float64)
    p = np.asarray(probs)
    s = np.asarray(shortfall, dtype=np.float64)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    expected: FloatArray = np.asarray(p[idx], dtype=np.float64).sum(axis=0)
    u_total = float(u[idx].sum())
    penalty = float(w @ open_deficit(s - expected, one_sided=one_sided))
    return Objective(
        value=-u_total + balance_lambda * penalty,
        uncertainty_total=u_total,
        balance_penalty=penalty,
        expected=expected,
    )


def class_terms(
    rows: npt.NDArray[np.floating[Any]],
    residual: FloatArray,
    weights: FloatArray,
    *,
    one_sided: bool = False,
) -> FloatArray:
    """Per-class decrease of the weighted ``||r||_1`` (or its one-sided form) from adding
    ``rows: (k, c)`` (or ``(c,)``).

    ``w * (|r| - |r - p|)``, same shape as ``rows``.
    """
    out: FloatArray = weights * _decrease(rows, residual, one_sided=one_sided)
    return out


def _decrease(
    rows: npt.NDArray[np.floating[Any]], residual: FloatArray, *, one_sided: bool
) -> FloatArray:
    """``|r| - |r - p|`` per class (``2 max(r, 0) - 2 max(r - p, 0)`` one-sided), in the closed
    form of the module docstring: exactly non-decreasing in ``r`` in floating point, as the
    difference is not (an item's later gain could exceed its stale bound by a rounding, and
    exact ties would no longer go to the lower row)."""
    p = np.asarray(rows, dtype=np.float64)
    covered = 2.0 * np.minimum(p, np.maximum(residual, 0.0))
    out: FloatArray = covered if one_sided else covered - p
    return out


def starting_gains(
    uncertainty: FloatArray,
    probs: npt.NDArray[np.floating[Any]],
    residual: FloatArray,
    available: npt.NDArray[np.bool_],
    *,
    balance_lambda: float,
    weights: FloatArray,
    one_sided: bool = False,
) -> FloatArray:
    """``gain_i`` of every row at ``residual: (c,)``; ``-inf`` where not ``available``. ``(n,)``.

    Row blocks keep temporaries at ``(block, c)``.
    """
    n = uncertainty.shape[0]
    gains = np.full(n, -np.inf)
    for start in range(0, n, _CHUNK):
        block = np.asarray(probs[start : start + _CHUNK], dtype=np.float64)
        end = start + block.shape[0]
        balance = _decrease(block, residual, one_sided=one_sided) @ weights
        gains[start:end] = uncertainty[start:end] + balance_lambda * balance
    gains[~available] = -np.inf
    return gains


def top_k(score: FloatArray, k: int) -> npt.NDArray[np.intp]:
    """Indices of the ``k`` largest finite scores, descending, ties to the lower index."""
    k = min(k, int(np.isfinite(score).sum()))
    if k <= 0:
        return np.zeros(0, np.intp)
    part = np.argpartition(-score, k - 1)[:k]
    threshold = score[part].min()
    above = np.flatnonzero(score > threshold)
    ties = np.flatnonzero(score == threshold)[: k - above.size]
    idx = np.concatenate([above, ties])
    order = np.lexsort((idx, -score[idx]))
    out: npt.NDArray[np.intp] = idx[order]
    return out


def ranked(score: FloatArray, *, first: int) -> Iterator[int]:
    """Row indices in descending ``score`` (ties to the lower index), finite scores only.

    Sorted lazily: blocks of ``first``, then 4x larger, each one ``argpartition`` pass.
    """
    n_valid = int(np.isfinite(score).sum())
    done, k = 0, max(first, 1)
    while done < n_valid:
        k = min(k, n_valid)
        block = top_k(score, k)
        for i in block[done:]:
            yield int(i)
        done, k = k, k * 4


@dataclass(frozen=True, slots=True)
class GreedyPick:
    """A pick of the greedy: row, its uncertainty and per-class balance terms at pick time."""

    row: int
    uncertainty: float
    terms: FloatArray  # (c,) lambda * (|r| - |r - p|)


class LazyGreedy:
    """Greedy on the objective over rows fed in descending starting gain.

    ``residual: (c,)`` is read at every scoring; the caller updates it after each pick.
    ``admit(row)`` decides whether a row may join (diversity, not yet taken); a refused row
    is dropped for good, since picks only accumulate.
    """

    __slots__ = (
        "_bounds",
        "_feed",
        "_heap",
        "_lam",
        "_next",
        "_one_sided",
        "_probs",
        "_stamp",
        "_u",
        "_version",
        "_w",
        "pulled",
        "residual",
        "scored",
    )

    def __init__(
        self,
        uncertainty: FloatArray,
        probs: npt.NDArray[np.floating[Any]],
        residual: FloatArray,
        start_gains: FloatArray,
        *,
        balance_lambda: float,
        weights: FloatArray,
        block: int,
        one_sided: bool = False,
    ) -> None:
        self._w = weights
        self._one_sided = one_sided
        self._u = uncertainty
        self._probs = probs
        self._lam = balance_lambda
        self.residual = residual  # shared: the caller subtracts each pick's probabilities
        self._feed = ranked(start_gains, first=block)
        self._bounds = start_gains
        self._heap: list[tuple[float, int]] = []
        self._next = next(self._feed, -1)
        self.scored = 0
        self.pulled: list[int] = []
        self._stamp = np.full(start_gains.size, -1, np.int64)  # pick count when last scored
        self._version = 0

    def _feed_bound(self) -> float:
        return -np.inf if self._next < 0 else float(self._bounds[self._next])

    def _gains(self, rows: npt.NDArray[np.intp]) -> FloatArray:
        """Current gains of ``rows``, by the same arithmetic as :func:`starting_gains`."""
        self.scored += rows.size
        block = np.asarray(self._probs[rows], dtype=np.float64)
        balance = _decrease(block, self.residual, one_sided=self._one_sided) @ self._w
        out: FloatArray = self._u[rows] + self._lam * balance
        return out

    def _stale_top(self, group: int) -> list[int]:
        """Up to ``group`` rows off the top whose entries are bounds, from heap or feed."""
        stale: list[int] = []
        while len(stale) < group:
            top = self._heap[0] if self._heap else None
            if self._next >= 0 and (top is None or (-self._feed_bound(), self._next) < top):
                stale.append(self._next)
                self.pulled.append(self._next)
                self._next = next(self._feed, -1)
            elif top is not None and self._stamp[top[1]] < self._version:
                stale.append(heapq.heappop(self._heap)[1])
            else:
                break
        return stale

    def pick(self, admit: Callable[[int], bool]) -> GreedyPick | None:
        """The admitted row of largest current gain, or None when the pool is exhausted.

        A heap entry is exact when scored since the last pick, else an upper bound (as are
        the feed's starting gains). An exact entry ahead of every bound is the best row;
        until then the bounds on top are rescored in vectorised groups (16 rows, doubling).
        ``(-gain, row)`` orders everything, so equal gains go to the lower row.
        """
        group = 16
        while True:
            stale = self._stale_top(group)
            if stale:
                rows = np.asarray(stale, dtype=np.intp)
                gains = self._gains(rows)
                self._stamp[rows] = self._version
                for gain, r in zip(gains.tolist(), stale, strict=True):
                    heapq.heappush(self._heap, (-gain, r))
                group = min(2 * group, 4096)
                continue
            if not self._heap:
                return None
            row = heapq.heappop(self._heap)[1]
            if not admit(row):
                continue  # dropped for good: picks only accumulate
            self._version += 1  # the caller now takes the row off the residual
            terms = self._lam * class_terms(
                self._probs[row], self.residual, self._w, one_sided=self._one_sided
            )
            return GreedyPick(row=row, uncertainty=float(self._u[row]), terms=terms)
