"""The daemon's one call per cycle: counts, quotas and model scores in, the next batch out.

:func:`plan_batch` is pure (no clock, no I/O, the random source a parameter) and does, in order:

1. quota status from the count table (:func:`planner.core.quotas.deficits`) and the cycle's
   minimum slots (:func:`planner.core.quota_cycle.cycle_plan`);
2. the per-class **shortfall** ``s`` (the objective's target, in items) for the columns of
   ``probs``: the quota deficit, capped at the batch size (one batch cannot bring more
   items; the cap also makes instance or pixel deficits usable as item counts), 0 for classes
   without a quota or with their quota met;
3. per-item **uncertainty** (entropy, margin, least confidence, or BALD from MC passes;
   BALD the workers computed, ``bald_scores``, is the uncertainty whenever it is given);
4. the **discovery share**: ``discovery_share`` while some class short of its quota has fewer
   than ``discovery_known_after`` labelled images, ``discovery_known_share`` once each has
   (:func:`short_classes_known`);
5. :func:`planner.core.selection.select_batch` with the quotas' criticality as class weights.

It returns the :class:`~planner.core.select_result.Batch` (each pick with its reason) and the
numbers behind it, so a report can show why the batch looks as it does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from planner.core.acquisition import bald, check_probs, uncertainty
from planner.core.quota_cycle import CyclePlan, cycle_plan
from planner.core.quotas import Quota, QuotaStatus, deficits
from planner.core.select_result import Batch
from planner.core.selection import SelectionOptions, select_batch
from planner.core.table import CountTable
from planner.core.whitening import WhitenMode
from planner.errors import InputError

UncertaintyName = Literal["entropy", "margin", "least_confidence", "bald"]
UNCERTAINTY_NAMES: tuple[UncertaintyName, ...] = ("entropy", "margin", "least_confidence", "bald")
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """How one cycle's batch is chosen; the daemon builds it once from the settings."""

    batch_size: int
    uncertainty: UncertaintyName = "entropy"
    exploration_share: float = 0.10
    hard_negative_share: float = 0.05
    discovery_share: float = 0.7
    """Batch share for novelty picks while a quota class is short and has fewer than
    ``discovery_known_after`` labelled images (see selection). Until then the model's
    probabilities for it are unreliable (on digits 50:1 the greedy's picks for a class with
    one to four labels held none of it), so most of the batch searches."""
    discovery_known_share: float = 0.2
    """The discovery share once every short class has ``discovery_known_after`` labelled
    images: the quota term then finds more of each (about 55% of its picks on digits 10:1)
    than novelty does (about 20%)."""
    discovery_known_after: int = 8
    discovery_whiten: WhitenMode = "auto"
    """Novelty in a partially whitened space (see selection); ``"auto"``: unless the pool's
    spectrum is mostly noise (:mod:`planner.core.whitening`). On the digits sets of
    ``bench/effectiveness`` whitening cut labels and raised macro-F1; on the shapes set,
    whose embeddings are mostly pixel noise, it cost 60% more labels, and ``auto`` leaves
    it out there (docs/effectiveness.md)."""
    diversity: bool = True
    balance_lambda: float = 3.0
    """Weight of the quota term against uncertainty; 3 met the quotas with fewer labels than
    1 on every set of ``bench/effectiveness`` at equal or better macro-F1."""
    multilabel: bool = False
    """``probs`` are per-class presence probabilities (detection), not a distribution."""

    def __post_init__(self) -> None:
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"batch_size must be a positive int, got {size!r}")
        after = self.discovery_known_after
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InputError(f"discovery_known_after must be an int >= 0, got {after!r}")
        if not 0.0 <= self.discovery_known_share <= 1.0:
            raise InputError(
                f"discovery_known_share must lie in [0, 1], got {self.discovery_known_share}"
            )
        if self.uncertainty not in UNCERTAINTY_NAMES:
            raise InputError(
                f"uncertainty must be one of {UNCERTAINTY_NAMES}, got {self.uncertainty!r}"
            )
        self.selection()  # validates the shares and lambda with the selector's own messages

    def selection(self, *, known: bool = False) -> SelectionOptions:
        """The selector's options for these settings; ``known``: every short class has
        ``discovery_known_after`` labelled items (see :func:`short_classes_known`)."""
        return SelectionOptions(
            exploration_share=self.exploration_share,
            hard_negative_share=self.hard_negative_share,
            discovery_share=self.discovery_known_share if known else self.discovery_share,
            discovery_whiten=self.discovery_whiten,
            balance_lambda=self.balance_lambda,
            diversity=self.diversity,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """A cycle's batch and the numbers it was chosen from (all ``(c,)`` in ``classes`` order)."""

    batch: Batch
    status: QuotaStatus
    cycle: CyclePlan
    classes: tuple[str, ...]
    """The columns of ``probs``."""
    shortfall: FloatArray
    """Items still wanted per class this batch: ``min(deficit, batch_size)``."""
    need: FloatArray
    """``criticality * deficit / target`` per class (0 without a quota)."""
    min_slots: npt.NDArray[np.int64]
    weights: FloatArray
    """Class weights of the balance term: the quota's criticality, 1 without a quota."""
    uncertainty: FloatArray
    """``(n,)`` the uncertainty score of every candidate."""

    def as_dict(self) -> dict[str, Any]:
        per_class = {
            name: {
                "shortfall": float(self.shortfall[i]),
                "need": float(self.need[i]),
                "min_slots": int(self.min_slots[i]),
                "weight": float(self.weights[i]),
            }
            for i, name in enumerate(self.classes)
        }
        return {
            "batch": self.batch.as_dict(),
            "quotas": self.status.as_dict(),
            "cycle": self.cycle.as_dict(),
            "classes": per_class,
        }


def _columns(
    status: QuotaStatus, cycle: CyclePlan, classes: tuple[str, ...], batch_size: int
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64], FloatArray]:
    """Shortfall, need, min slots and weights for the ``classes`` columns of ``probs``."""
    c = len(classes)
    shortfall, need, weights = np.zeros(c), np.zeros(c), np.ones(c)
    slots = np.zeros(c, np.int64)
    for s in status.statuses:
        if s.class_name not in classes:
            continue
        i = classes.index(s.class_name)
        shortfall[i] = min(s.deficit, batch_size)
        need[i] = s.need
        weights[i] = s.quota.criticality
        if s.in_table:
            slots[i] = cycle.slots[status.classes.index(s.class_name)]
    return shortfall, need, slots, weights


def short_classes_known(
    status: QuotaStatus, table: CountTable, classes: tuple[str, ...], *, after: int
) -> bool:
    """Whether every class of ``classes`` short of its quota has ``after`` labelled images.

    Then the model has seen each short class often enough for the quota term to find it, and
    :class:`PlanOptions` lowers the discovery share. ``True`` when no class is short.
    """
    labelled = table.totals("images")
    for s in status.statuses:
        if s.class_name not in classes or s.deficit <= 0:
            continue
        count = int(labelled[table.classes.index(s.class_name)]) if s.in_table else 0
        if count < after:
            return False
    return True


def _bald_scores(values: npt.ArrayLike, n: int) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,) or not np.isfinite(array).all():
        raise InputError(f"bald_scores must be ({n},) finite values, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise InputError("bald_scores must lie in [0, 1] (normalised BALD, as bald() returns)")
    return array


def _scores(
    probs: npt.NDArray[np.floating[Any]],
    mc_probs: npt.ArrayLike | None,
    method: UncertaintyName,
    multilabel: bool,
    bald_scores: npt.ArrayLike | None = None,
) -> FloatArray:
    if bald_scores is not None:
        return _bald_scores(bald_scores, probs.shape[0])
    if method == "bald":
        if mc_probs is None:
            raise InputError(
                "uncertainty 'bald' needs mc_probs (passes, items, classes) or bald_scores"
            )
        mc = np.asarray(mc_probs)
        if mc.ndim != 3 or mc.shape[1:] != probs.shape:
            raise InputError(f"mc_probs must have shape (T, {probs.shape}), got {mc.shape}")
        return bald(mc)
    if multilabel:
        # Presence probabilities: each class is its own yes/no question; the most
        # uncertain class speaks for the item (binary entropy in bits is in [0, 1]).
        p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
        h = -(p * np.log(p) + (1 - p) * np.log(1 - p)) / math.log(2)
        out: FloatArray = np.clip(h.max(axis=1), 0.0, 1.0)
        return out
    return uncertainty(probs, method=method)


def plan_batch(
    table: CountTable,
    quotas: Sequence[Quota],
    ids: npt.ArrayLike,
    probs: npt.ArrayLike,
    *,
    options: PlanOptions,
    rng: np.random.Generator | int,
    classes: Sequence[str] | None = None,
    mc_probs: npt.ArrayLike | None = None,
    bald_scores: npt.ArrayLike | None = None,
    embeddings: npt.ArrayLike | None = None,
    exclude: npt.ArrayLike | None = None,
) -> Plan:
    """Choose the next batch; see the module docstring.

    ``table``: labelled counts; ``quotas``: the project's quotas; ``ids: (n,)`` candidates;
    ``probs: (n, c)`` with columns ``classes`` (default: the table's classes);
    ``mc_probs: (t, n, c)`` stochastic passes (for ``bald``); ``bald_scores: (n,)`` BALD in
    [0, 1] already computed from such passes (the workers store it per item; when given it is
    the uncertainty, whatever ``options.uncertainty`` says); ``embeddings: (n, d)``
    for the diversity guard; ``exclude``: ids in flight or otherwise not to pick (with
    embeddings, labelled ones too: discovery prefers items far from them).
    """
    names = tuple(classes) if classes is not None else table.classes
    if len(set(names)) != len(names):
        raise InputError(f"classes repeat in {names}")
    p = check_probs(probs, multilabel=options.multilabel)
    if p.shape[1] != len(names):
        raise InputError(
            f"probs has {p.shape[1]} columns but there are {len(names)} classes {names}; "
            "pass classes= naming the columns"
        )
    status = deficits(quotas, table)
    cycle = cycle_plan(status, batch_size=options.batch_size)
    shortfall, need, slots, weights = _columns(status, cycle, names, options.batch_size)
    u = _scores(p, mc_probs, options.uncertainty, options.multilabel, bald_scores)
    batch = select_batch(
        ids,
        u,
        p,
        shortfall,
        batch_size=options.batch_size,
        rng=rng,
        exclude=exclude,
        embeddings=embeddings,
        min_slots=slots,
        class_weights=weights,
        classes=names,
        multilabel=options.multilabel,
        options=options.selection(
            known=short_classes_known(status, table, names, after=options.discovery_known_after)
        ),
    )
    return Plan(
        batch=batch,
        status=status,
        cycle=cycle,
        classes=names,
        shortfall=shortfall,
        need=need,
        min_slots=slots,
        weights=weights,
        uncertainty=u,
    )
