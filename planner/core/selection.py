"""Batch selection: which pool items to send for annotation next, and why each one.

:func:`select_batch` fills a batch of ``b`` in four phases, every pick passing the same
checks (eligible, not yet picked, and, with diversity on, no picked row within the radius of
:mod:`planner.core.diversity`):

1. **Minimum slots** (optional ``min_slots: (c,)``, the quota module's cycle targets): for
   each class in descending weighted shortfall, the items most likely of that class
   (``p_ic > 0``). Capped at the greedy share of the batch; what cannot be met is reported.
2. **Greedy** on the class-balanced objective of Bengar et al. (WACV 2022), see
   :mod:`planner.core.select_greedy`: each pick maximises
   ``u_i + lambda * sum_c w_c (|r_c| - |r_c - p_ic|)`` with ``r`` the shortfall still open
   (with a ``vote``, ``p`` is ``max(probs, vote)`` here and in phases 1 and 3). With
   ``multilabel=True`` (presence probabilities) the norm is one-sided, ``2 max(r_c, 0)``:
   overshooting a covered class costs nothing, so an image is not marked down for holding
   other objects, nor, once the quotas are met, preferred for holding few.
   The pool is read in ``np.argpartition`` blocks of ``block_factor * b`` rows by starting
   gain, a bound on all later gains, so the lazy greedy equals a greedy over the whole pool
   while scoring a few ``b`` rows. Then ``swap_passes`` of 1-swap local search replace a pick
   by one of the best remaining rows whenever that lowers the objective.
3. **Hard negatives** (``hard_negative_share``): items the model assigns to another class
   with ``p_(1) >= hard_negative_confidence`` while their runner-up class is a class still
   short (``w_c s_c > 0``): confident look-alikes, labelled to fix false positives. Classes
   take turns in descending weighted shortfall; within a class the highest runner-up
   probability goes first. Slots nobody qualifies for go back to the greedy.
4. **Exploration** (``exploration_share``): uniform random picks from the eligible rest.
   While a class with a quota is short, ``discovery_share`` of the batch goes first to
   *novel* items (:class:`planner.core.diversity.NoveltySearch`, needs embeddings; without
   them a random draw weighted by the lean below, with a note): isolated in the pool (a
   class with few members has few close neighbours) and far from everything labelled, in
   flight or discovered earlier in the batch (distances in
   the embedding space, or after partial PCA whitening: ``discovery_whiten`` ``True``, or
   ``"auto"`` unless the pool's spectrum is dominated by noise, see
   :mod:`planner.core.whitening`; the batch's notes say which space was used). Not only
   while the class is unseen: a rare class is often several separate modes (digit styles,
   viewpoints), and a model shown one of them gives the others almost no probability.
   Novelty is weighted by ``1 + discovery_short_weight * P(short class)`` (the quota term's
   probabilities): among novel items, those the evidence leans to a short class first.

Shares are rounded half up: ``round(0.10 * 45) = 5``. Each pick states a reason: ``rare_class``
when its best class term ``lambda w_X (|r_X| - |r_X - p_iX|)`` exceeds its uncertainty (X is
that class; min-slot picks too), else ``uncertain``; ``hard_negative`` (X the short class it
resembles); ``exploration``. Ranks run 1..b in pick order (a swapped-in row takes the rank of
the row it replaced). Ties go to the lower row; the same inputs and seed give the same batch.

Memory: passes over the pool are ``O(n c)`` in row blocks; embeddings are read row by row, so
nothing ``(n, n)`` or ``(n, d)`` is copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, partial
from typing import Any

import numpy as np
import numpy.typing as npt

from planner.core.acquisition import check_need, check_probs
from planner.core.diversity import (
    METRICS,
    RADIUS_FRACTION,
    Metric,
    NearDuplicateGuard,
    NoveltySearch,
    check_embeddings,
    estimate_radius,
)
from planner.core.select_greedy import objective
from planner.core.select_phases import Phases
from planner.core.select_result import REASONS, Batch, Pick, PickReason
from planner.core.whitening import WHITEN_MODES, WhitenMode
from planner.errors import InputError

__all__ = [
    "REASONS",
    "Batch",
    "Pick",
    "PickReason",
    "SelectionOptions",
    "select_batch",
]


@dataclass(frozen=True, slots=True)
class SelectionOptions:
    """How a batch is composed; defaults match the planner's settings."""

    exploration_share: float = 0.10
    hard_negative_share: float = 0.05
    balance_lambda: float = 1.0
    diversity: bool = True
    diversity_radius: float | None = None
    """``None``: ``radius_fraction`` x median random-pair distance of the eligible pool."""
    radius_fraction: float = RADIUS_FRACTION
    metric: Metric = "cosine"
    hard_negative_confidence: float = 0.5
    block_factor: int = 4
    """The greedy's first candidate block is ``block_factor * b`` rows of the pool."""
    swap_passes: int = 2
    """Passes of 1-swap local search after the greedy (0: plain greedy)."""
    discovery_share: float = 0.0
    """Share of the batch for novelty picks while a quota class is short (0: off;
    :class:`planner.core.plan.PlanOptions` turns it on)."""
    discovery_whiten: WhitenMode = False
    """Measure novelty after partial PCA whitening (:mod:`planner.core.whitening`), in
    ``metric`` around the pool's mean; False: in the raw embedding space; ``"auto"``:
    whitened unless the pool's spectrum is mostly noise."""
    discovery_short_weight: float = 0.0
    """Novelty is multiplied by ``1 + discovery_short_weight * P(short class)``, the
    probability (model or vote) that the row holds a class still short of its quota: of two
    equally novel rows the one the evidence leans to a short class goes first. While no
    short class has been seen that probability is 0 everywhere and novelty alone decides."""

    def __post_init__(self) -> None:
        for name in ("exploration_share", "hard_negative_share", "discovery_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {value}")
        if not (isinstance(self.discovery_whiten, bool) or self.discovery_whiten == "auto"):
            raise InputError(
                f"discovery_whiten must be one of {WHITEN_MODES}, got {self.discovery_whiten!r}"
            )
        for name in ("balance_lambda", "discovery_short_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be finite and >= 0, got {value}")
        if self.exploration_share + self.hard_negative_share > 1.0:
            raise InputError("exploration_share + hard_negative_share must not exceed 1")
        self._check_diversity()
        if not 0.0 <= self.hard_negative_confidence <= 1.0:
            raise InputError("hard_negative_confidence must lie in [0, 1]")
        if self.swap_passes < 0:
            raise InputError(f"swap_passes must be >= 0, got {self.swap_passes}")
        if self.block_factor < 1:
            raise InputError(f"block_factor must be >= 1, got {self.block_factor}")

    def _check_diversity(self) -> None:
        if self.diversity_radius is not None and not (
            math.isfinite(self.diversity_radius) and self.diversity_radius >= 0
        ):
            raise InputError(
                f"diversity_radius must be finite and >= 0, got {self.diversity_radius}"
            )
        if not 0.0 <= self.radius_fraction <= 2.0:
            raise InputError(f"radius_fraction must lie in [0, 2], got {self.radius_fraction}")
        if self.metric not in METRICS:
            raise InputError(f"metric must be one of {METRICS}, got {self.metric!r}")


def _check_ids(ids: npt.ArrayLike, exclude: npt.ArrayLike | None) -> tuple[Any, Any]:
    array = np.asarray(ids)
    if array.shape == (0,):  # an empty list is float64 to numpy: an empty pool all the same
        array = array.astype(np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iuU":
        raise InputError(
            f"ids must be a 1-d array of ints or strings, got {array.dtype} {array.shape}"
        )
    ordered = np.sort(array)  # a sort beats np.unique's hashing on a million ints
    repeats = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeats.size:
        raise InputError(
            f"ids repeat ({repeats.size} duplicate(s), e.g. {repeats[0].item()!r}); "
            "each pool item must appear once"
        )
    if exclude is None:
        return array, np.ones(array.size, bool)
    excluded = np.asarray(exclude)
    if excluded.size and (excluded.dtype.kind in "iu") != (array.dtype.kind in "iu"):
        raise InputError(f"exclude holds {excluded.dtype} values but ids are {array.dtype}")
    return array, ~np.isin(array, excluded.ravel())


def _check_scores(uncertainty: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
    array = np.asarray(uncertainty, dtype=np.float64)
    if array.shape != (n,):
        raise InputError(f"uncertainty must have shape ({n},), got {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        raise InputError(
            f"uncertainty is NaN or inf at {bad.sum()} item(s), first row {int(np.argmax(bad))}"
        )
    return array


def _check_slots(min_slots: npt.ArrayLike | None, c: int) -> npt.NDArray[np.int64]:
    if min_slots is None:
        return np.zeros(c, np.int64)
    array = np.asarray(min_slots)
    if array.shape != (c,) or array.dtype.kind not in "iu" or (array < 0).any():
        raise InputError(
            f"min_slots must be ({c},) non-negative ints, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64)


def _share(share: float, b: int) -> int:
    # the decimal the user wrote, exactly: 0.7 * 45 is 31.499999999999996 in floats, so a
    # float floor(x + 0.5) rounds 31.5 down
    return min(b, math.floor(Fraction(repr(share)) * b + Fraction(1, 2)))


def _with_vote(
    probs: npt.NDArray[np.floating[Any]], vote: npt.ArrayLike | None
) -> npt.NDArray[np.floating[Any]]:
    """``max(probs, vote)``, the probabilities the quota term reads; ``probs`` without a vote."""
    if vote is None:
        return probs
    v = check_probs(vote, name="vote", multilabel=True)
    if v.shape != probs.shape:
        raise InputError(f"vote must have the shape of probs {probs.shape}, got {v.shape}")
    lifted: npt.NDArray[np.floating[Any]] = np.maximum(probs, v)
    return lifted


def _check_weights(weights: npt.ArrayLike | None, c: int) -> npt.NDArray[np.float64]:
    if weights is None:
        return np.ones(c, np.float64)
    return check_need(weights, c, name="class_weights")


def _checked_once(
    embeddings: npt.ArrayLike | None, n: int, metric: Metric
) -> Callable[[], npt.NDArray[np.floating[Any]]] | None:
    """``embeddings`` validated on first use and only then (a pass over the whole pool:
    0.15 s for 1,000,000 x 128), however many phases read them; None without embeddings."""
    if embeddings is None:
        return None
    return cache(partial(check_embeddings, embeddings, n, metric=metric))


def _guard(
    emb: npt.NDArray[np.floating[Any]],
    eligible: npt.NDArray[np.bool_],
    b: int,
    opts: SelectionOptions,
    gen: np.random.Generator,
) -> NearDuplicateGuard:
    radius = opts.diversity_radius
    if radius is None:
        radius = estimate_radius(
            emb,
            np.flatnonzero(eligible),
            rng=gen,
            metric=opts.metric,
            fraction=opts.radius_fraction,
        )
    return NearDuplicateGuard(emb, radius=radius, capacity=b, metric=opts.metric)


def _explore(
    phases: Phases,
    n_explore: int,
    n_discover: int,
    *,
    embeddings: Callable[[], npt.NDArray[np.floating[Any]]] | None,
    opts: SelectionOptions,
    gen: np.random.Generator,
) -> str | None:
    """Discovery picks first when asked and possible, then uniform; returns a note on the
    space novelty was measured in when ``discovery_whiten`` is ``"auto"``.

    Discovery picks one row at a time by :class:`planner.core.diversity.NoveltySearch`
    (isolation in the pool x distance to the nearest labelled, in-flight or already
    discovered row) times ``1 + discovery_short_weight * P(short class)``; slots it cannot
    fill go to the uniform picks. Without embeddings novelty cannot be measured: discovery
    draws at random with that lean as each row's weight (weighted sampling without
    replacement, Efraimidis and Spirakis), and says so.
    """
    note = None
    if n_discover and embeddings is None:
        lean = 1.0 + opts.discovery_short_weight * phases.short_probability()
        before = len(phases.rows)
        phases.explore(n_discover, rng=gen, keys=np.log1p(-gen.random(lean.size)) / lean)
        drawn = len(phases.rows) - before
        n_explore -= drawn
        note = (
            f"discovery without embeddings: {drawn} slot(s) drawn at random, weighted towards "
            "items likely to hold a short class (give embeddings to search by novelty)"
        )
    elif n_discover and embeddings is not None:
        emb = embeddings()
        open_rows = np.flatnonzero(phases.open_rows())
        search = NoveltySearch(
            emb,
            open_rows,
            phases.known,
            rng=gen,
            metric=opts.metric,
            whiten=opts.discovery_whiten,
        )
        note = _whitening_note(search) if opts.discovery_whiten == "auto" else None
        lean = 1.0 + opts.discovery_short_weight * phases.short_probability()
        for _ in range(n_discover):
            before = len(phases.rows)
            phases.explore(1, rng=gen, keys=search.keys(lean))
            if len(phases.rows) == before:
                break
            search.add(phases.rows[-1])
            n_explore -= 1
    phases.explore(n_explore, rng=gen)
    return note


def _whitening_note(search: NoveltySearch) -> str | None:
    white = search.fitted
    if white is None:
        return None
    counts = f"{white.signal} of {white.kept} principal directions above the noise floor"
    if search.whitened:
        return f"discovery measured novelty after whitening ({counts})"
    return f"discovery measured novelty in the raw embedding space (only {counts})"


def select_batch(
    ids: npt.ArrayLike,
    uncertainty: npt.ArrayLike,
    probs: npt.ArrayLike,
    shortfall: npt.ArrayLike,
    *,
    batch_size: int,
    rng: np.random.Generator | int,
    exclude: npt.ArrayLike | None = None,
    embeddings: npt.ArrayLike | None = None,
    min_slots: npt.ArrayLike | None = None,
    class_weights: npt.ArrayLike | None = None,
    classes: Sequence[str] | None = None,
    multilabel: bool = False,
    options: SelectionOptions | None = None,
    vote: npt.ArrayLike | None = None,
) -> Batch:
    """Select up to ``batch_size`` items of the pool; see the module docstring.

    ``ids: (n,)`` unique ints or strings; ``uncertainty: (n,)`` higher = more uncertain
    (e.g. :func:`planner.core.acquisition.entropy`); ``probs: (n, c)`` class probabilities,
    or per-class presence with ``multilabel=True`` (e.g. from
    :func:`planner.core.acquisition.aggregate_boxes`); ``shortfall: (c,)`` the items each
    class still lacks (quota deficits, 0 when met), the ``s`` of the objective;
    ``exclude``: ids never to return (labelled, in flight); ``embeddings: (n, d)`` for
    diversity; ``min_slots: (c,)`` ints (cycle targets); ``class_weights: (c,)`` weights of
    the per-class L1 terms (e.g. criticality; default 1); ``classes``: ``c`` names for the
    reasons; ``vote: (n, c)`` in [0, 1], the labelled neighbours' vote
    (:func:`planner.core.vote.neighbour_vote`): minimum slots, the quota term and hard
    negatives then read ``max(probs, vote)``, uncertainty stays as given. With fewer than
    ``batch_size`` eligible items all are returned, ranked, and ``notes`` says so.
    """
    opts = options or SelectionOptions()
    if isinstance(rng, bool) or not isinstance(rng, np.random.Generator | int):
        raise InputError("rng must be a numpy Generator or an int seed")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    p = check_probs(probs, multilabel=multilabel)
    n, c = p.shape
    p = _with_vote(p, vote)
    id_array, eligible = _check_ids(ids, exclude)
    if id_array.size != n:
        raise InputError(f"ids has {id_array.size} items but probs has {n} rows")
    u = _check_scores(uncertainty, n)
    s = check_need(shortfall, c, name="shortfall")
    weights = _check_weights(class_weights, c)
    slots = _check_slots(min_slots, c)
    names = tuple(classes) if classes is not None else tuple(str(i) for i in range(c))
    if len(names) != c:
        raise InputError(f"classes names {len(names)} classes but probs has {c} columns")
    notes: list[str] = []
    n_eligible = int(eligible.sum())
    b = min(batch_size, n_eligible)
    if b < batch_size:
        notes.append(
            f"only {n_eligible} eligible item(s) for a batch of {batch_size}: all returned"
        )
    guard = None
    checked = _checked_once(embeddings, n, opts.metric)
    if opts.diversity and checked is None:
        notes.append("diversity off: no embeddings given")
    elif opts.diversity and checked is not None and b > 0:
        guard = _guard(checked(), eligible, b, opts, gen)
    phases = Phases(
        u,
        p,
        s,
        eligible,
        weights=weights,
        guard=guard,
        balance_lambda=opts.balance_lambda,
        one_sided=multilabel,
    )
    n_discover = _share(opts.discovery_share, b) if phases.short() else 0
    n_explore = max(_share(opts.exploration_share, b), n_discover)
    n_hard = min(_share(opts.hard_negative_share, b), b - n_explore)
    n_greedy = b - n_explore - n_hard
    block = opts.block_factor * max(b, 1)
    unmet = phases.min_slots(slots, budget=n_greedy)
    phases.greedy(n_greedy - len(phases.rows), block=block, swap_passes=opts.swap_passes)
    phases.hard_negatives(n_hard, confidence=opts.hard_negative_confidence)
    # hard-negative slots nobody qualified for go back to the greedy
    phases.greedy(b - n_explore - len(phases.rows), block=block, swap_passes=opts.swap_passes)
    note = _explore(phases, n_explore, n_discover, embeddings=checked, opts=opts, gen=gen)
    if note is not None:
        notes.append(note)
    if len(phases.rows) < b:
        notes.append(
            f"{b - len(phases.rows)} slot(s) left empty: the rest of the eligible pool lies "
            "within the diversity radius of picked items"
        )
    if unmet.any():
        notes.append("min_slots not met for " + ", ".join(names[i] for i in np.flatnonzero(unmet)))
    value = objective(
        phases.rows,
        u,
        p,
        s,
        balance_lambda=opts.balance_lambda,
        weights=weights,
        one_sided=multilabel,
    )
    picks = tuple(
        Pick(
            id=id_array[row].item(),
            rank=rank,
            reason=info.reason,
            class_index=info.class_index,
            class_name=names[info.class_index],
            probability=float(p[row, info.class_index]),
            uncertainty=float(u[row]),
            balance_gain=info.balance_gain,
            gain=float(u[row]) + info.balance_gain,
            row=row,
        )
        for rank, (row, info) in enumerate(zip(phases.rows, phases.infos, strict=True), start=1)
    )
    return Batch(
        picks=picks,
        classes=names,
        requested=batch_size,
        eligible=n_eligible,
        objective=value.value,
        uncertainty_total=value.uncertainty_total,
        balance_penalty=value.balance_penalty,
        balance_lambda=opts.balance_lambda,
        shortfall=s,
        expected=value.expected,
        min_slots_unmet=unmet,
        diversity_radius=None if guard is None else guard.radius,
        rejected_near_duplicates=phases.rejected,
        scored=phases.scored,
        notes=tuple(notes),
    )
