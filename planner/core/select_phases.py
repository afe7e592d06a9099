"""The phases of a batch (minimum slots, greedy, hard negatives, exploration) over one state.

Used by :func:`planner.core.selection.select_batch`; every phase adds picks through the same
admission check (eligible, not taken, not a near-duplicate of a pick) and keeps the open
shortfall ``residual = s - P^T z`` current, so later phases see what earlier ones covered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from planner.core.acquisition import top_two
from planner.core.select_greedy import (
    LazyGreedy,
    class_terms,
    open_deficit,
    ranked,
    starting_gains,
    top_k,
)

if TYPE_CHECKING:
    from planner.core.diversity import NearDuplicateGuard

FloatArray = npt.NDArray[np.float64]
SWAP_BUDGET = 200_000_000
"""Bound on picks x swap candidates x classes per pass: keeps large batches' swaps cheap."""
Reason = Literal["uncertain", "rare_class", "hard_negative", "exploration"]


@dataclass(frozen=True, slots=True)
class PickInfo:
    """Why a row was picked: the reason, its class, its balance gain at pick time."""

    reason: Reason
    class_index: int
    balance_gain: float


class Phases:
    """Mutable state of one batch being built: picked rows in order, taken mask, residual."""

    __slots__ = (
        "_elig",
        "_guard",
        "_lam",
        "_need",
        "_one_sided",
        "_p",
        "_u",
        "_w",
        "infos",
        "rejected",
        "residual",
        "rows",
        "scored",
        "taken",
    )

    def __init__(
        self,
        uncertainty: FloatArray,
        probs: npt.NDArray[np.floating[Any]],
        shortfall: FloatArray,
        eligible: npt.NDArray[np.bool_],
        *,
        weights: FloatArray,
        guard: NearDuplicateGuard | None,
        balance_lambda: float,
        one_sided: bool = False,
    ) -> None:
        self._w = weights
        self._one_sided = one_sided
        """Overshoot costs nothing (presence probabilities; see :mod:`select_greedy`)."""
        self._u = uncertainty
        self._p = probs
        self._need = weights * shortfall  # the order in which short classes take turns
        self._elig = eligible
        self._guard = guard
        self._lam = balance_lambda
        self.residual = shortfall.astype(np.float64)
        self.taken = np.zeros(eligible.size, bool)
        self.rows: list[int] = []
        self.infos: list[PickInfo] = []
        self.rejected = 0
        self.scored = 0

    def _admit(self, row: int) -> bool:
        if self.taken[row] or not self._elig[row]:
            return False
        if self._guard is not None and not self._guard.admits(row):
            self.rejected += 1
            return False
        return True

    def _terms(self, row: int) -> FloatArray:
        return self._lam * class_terms(
            self._p[row], self.residual, self._w, one_sided=self._one_sided
        )

    def _deficit(self, residual: FloatArray) -> FloatArray:
        return open_deficit(residual, one_sided=self._one_sided)

    def _add(self, row: int, reason: Reason, class_index: int, terms: FloatArray) -> None:
        self.taken[row] = True
        self.rows.append(row)
        self.infos.append(PickInfo(reason, class_index, float(terms.sum())))
        self.residual -= np.asarray(self._p[row], dtype=np.float64)
        if self._guard is not None:
            self._guard.add(row)

    def open_rows(self) -> npt.NDArray[np.bool_]:
        """``(n,)`` eligible and not yet picked."""
        out: npt.NDArray[np.bool_] = self._elig & ~self.taken
        return out

    def _by_need(self) -> list[int]:
        """Classes with need > 0, largest need first, ties to the lower index."""
        order = np.lexsort((np.arange(self._need.size), -self._need))
        return [int(c) for c in order if self._need[c] > 0]

    def min_slots(self, slots: npt.NDArray[np.int64], *, budget: int) -> npt.NDArray[np.int64]:
        """Fill each class's minimum slots with its likeliest items; returns ``(c,)`` unmet."""
        unmet = slots.copy()
        order = np.lexsort((np.arange(slots.size), -self._need))
        for c in (int(k) for k in order if slots[k] > 0):
            score = np.asarray(self._p[:, c], dtype=np.float64).copy()
            score[~self.open_rows() | (score <= 0)] = -np.inf
            for row in ranked(score, first=2 * int(slots[c])):
                if unmet[c] == 0 or len(self.rows) >= budget:
                    break
                if self._admit(row):
                    self._add(row, "rare_class", c, self._terms(row))
                    unmet[c] -= 1
        return unmet

    def greedy(self, k: int, *, block: int, swap_passes: int) -> None:
        """Add up to ``k`` picks by lazy greedy on the balanced objective, then improve them
        by swaps with the ``block`` rows of best starting gain and the rows the greedy saw."""
        if k <= 0:
            return
        gains = starting_gains(
            self._u,
            self._p,
            self.residual,
            self.open_rows(),
            balance_lambda=self._lam,
            weights=self._w,
            one_sided=self._one_sided,
        )
        solver = LazyGreedy(
            self._u,
            self._p,
            self.residual,
            gains,
            balance_lambda=self._lam,
            weights=self._w,
            block=block,
            one_sided=self._one_sided,
        )
        first = len(self.rows)
        for _ in range(k):
            pick = solver.pick(self._admit)
            if pick is None:
                break
            self._add(pick.row, *self._why(pick.row, pick.terms), pick.terms)
        self.scored += solver.scored
        if swap_passes > 0 and len(self.rows) > first:
            pool = np.union1d(top_k(gains, block), np.asarray(solver.pulled, np.intp))
            k_done = len(self.rows) - first
            limit = min(block, max(64, SWAP_BUDGET // (k_done * self._w.size)))
            self._swap(range(first, len(self.rows)), pool, passes=swap_passes, limit=limit)

    def _why(self, row: int, terms: FloatArray) -> tuple[Reason, int]:
        """``rare_class`` X when X's balance term beats the uncertainty, else ``uncertain``."""
        best = int(np.argmax(terms))
        if terms[best] > self._u[row]:
            return "rare_class", best
        return "uncertain", int(np.argmax(self._p[row]))

    def _swap(
        self, positions: range, pool: npt.NDArray[np.intp], *, passes: int, limit: int
    ) -> None:
        """1-swap local search: replace a pick by a pool row while that lowers the objective.

        Each swap lowers the objective, so it stops; ``passes`` bounds the work at
        ``passes * len(positions)`` vectorised ``(limit, c)`` steps.
        """
        pool = pool[self._elig[pool]]  # picked rows stay: swapped out, they may come back
        cand_p = np.asarray(self._p[pool], dtype=np.float64)
        cand_u = self._u[pool]
        if pool.size > limit:
            # Keep the rows the greedy would have taken next: best gain at the final residual.
            gain = cand_u - self._lam * (self._deficit(self.residual - cand_p) @ self._w)
            gain[self.taken[pool]] = -np.inf  # picked rows always stay in (their gain is moot)
            keep = np.sort(np.argsort(-gain, kind="stable")[:limit])
            keep = np.union1d(keep, np.flatnonzero(self.taken[pool]))
            pool, cand_p, cand_u = pool[keep], cand_p[keep], cand_u[keep]
        for _ in range(passes):
            changed = False
            for pos in positions:
                old = self.rows[pos]
                without = self.residual + np.asarray(self._p[old], dtype=np.float64)
                now = -self._u[old] + self._lam * float(self._w @ self._deficit(self.residual))
                delta = -cand_u + self._lam * (self._deficit(without - cand_p) @ self._w) - now
                delta[self.taken[pool]] = np.inf
                better = np.flatnonzero(delta < -1e-9 * (1.0 + abs(now)))
                for i in better[np.lexsort((better, delta[better]))]:
                    row = int(pool[i])
                    if self._guard is None or self._guard.admits(row, ignore=pos):
                        self._replace(pos, row, without)
                        changed = True
                        break
            if not changed:
                return

    def _replace(self, pos: int, row: int, without: FloatArray) -> None:
        self.taken[self.rows[pos]] = False
        self.taken[row] = True
        self.rows[pos] = row
        terms = self._lam * class_terms(self._p[row], without, self._w, one_sided=self._one_sided)
        self.infos[pos] = PickInfo(*self._why(row, terms), float(terms.sum()))
        self.residual[:] = without - np.asarray(self._p[row], dtype=np.float64)
        if self._guard is not None:
            self._guard.replace(pos, row)

    def hard_negatives(self, k: int, *, confidence: float) -> None:
        """Add up to ``k`` confident look-alikes of short classes, classes taking turns."""
        short = self._by_need()
        if k <= 0 or not short:
            return
        top1, p1, top2, p2 = top_two(self._p)
        fit = self.open_rows() & (p1 >= confidence) & (p2 > 0) & (top1 != top2)
        rows = np.flatnonzero(fit)
        # Group by runner-up class, strongest look-alike first, ties to the lower row.
        rows = rows[np.lexsort((rows, -p2[rows], top2[rows]))]
        starts = np.searchsorted(top2[rows], np.arange(self._need.size + 1))
        cursor = {c: int(starts[c]) for c in short}
        while k > 0 and cursor:
            for c in list(cursor):
                while cursor[c] < starts[c + 1] and not self._admit(int(rows[cursor[c]])):
                    cursor[c] += 1
                if cursor[c] == starts[c + 1]:
                    del cursor[c]
                    continue
                row = int(rows[cursor[c]])
                self._add(row, "hard_negative", c, self._terms(row))
                k -= 1
                if k == 0:
                    return

    def short_probability(self) -> FloatArray:
        """``(n,)`` how likely each row holds a class still short of its quota, by the
        probabilities the quota term reads (the model's, or the labelled neighbours' vote):
        their sum for a class distribution, ``1 - prod(1 - p)`` for presence."""
        p = np.asarray(self._p[:, self._need > 0], dtype=np.float64)
        if self._one_sided:
            out: FloatArray = 1.0 - np.prod(1.0 - p, axis=1)
            return out
        total: FloatArray = np.minimum(p.sum(axis=1), 1.0)
        return total

    def short(self) -> bool:
        """Whether some class with a quota still lacks items (weighted shortfall > 0)."""
        return bool((self._need > 0).any())

    @property
    def known(self) -> npt.NDArray[np.intp]:
        """Rows not eligible (labelled or in flight): what novelty is measured against."""
        out: npt.NDArray[np.intp] = np.flatnonzero(~self._elig)
        return out

    def explore(self, k: int, *, rng: np.random.Generator, keys: FloatArray | None = None) -> None:
        """Add up to ``k`` picks from the eligible rest: by descending ``keys: (n,)`` when
        given (``-inf`` = not a candidate), else uniformly at random."""
        if k <= 0:
            return
        keys = rng.random(self.taken.size) if keys is None else keys.copy()
        keys[~self.open_rows()] = -np.inf
        for row in ranked(keys, first=2 * k):
            if k == 0:
                break
            if self._admit(row):
                self._add(row, "exploration", int(np.argmax(self._p[row])), self._terms(row))
                k -= 1
