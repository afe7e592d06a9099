"""The daemon's one call per cycle: counts, quotas and model scores in, the next batch out.

:func:`plan_batch` is pure (no clock, no I/O, the random source a parameter) and does, in order:

1. quota status from the count table (:func:`planner.core.quotas.deficits`) and the cycle's
   minimum slots (:func:`planner.core.quota_cycle.cycle_plan`);
2. the per-class **shortfall** ``s`` (the objective's target, in items) for the columns of
   ``probs``: ``shortfall_factor`` times the quota deficit, capped at the batch size (one
   batch cannot bring more items; the cap also makes instance or pixel deficits usable as
   item counts), 0 for classes without a quota or with their quota met. The factor (2)
   allows for the model's overconfidence on a class it has seen a few times: the greedy
   stops adding a class's items once their probabilities add up to ``s``, and a handful of
   confident wrong picks would otherwise close it;
3. per-item **uncertainty** (entropy, margin, least confidence, or BALD from MC passes;
   BALD the workers computed, ``bald_scores``, is the uncertainty whenever it is given).
   Once no class is short of its quota (``met_uncertainty``), the batch serves the model:
   the uncertainty is then the most uncertain one-vs-rest class decision, for presence
   probabilities weighted toward the classes with fewer labelled images
   (``met_rarity_power``);
4. the **discovery share**: from ``discovery_known_share`` when every class short of its
   quota has ``discovery_known_after`` labelled images to ``discovery_share`` when none has,
   in proportion to the short classes still under it (:func:`unknown_short_share`);
5. with ``labels`` (the classes of the labelled items among ``ids``) and embeddings whose
   spectrum is not mostly noise, the **labelled neighbours' vote**
   (:mod:`planner.core.vote`, ``vote_neighbours`` nearest labelled images, weighted by
   inverse distance to the power ``vote_distance_power``) for the classes still short,
   which the quota term reads as ``max(model, vote)``;
6. :func:`planner.core.selection.select_batch` with the quotas' criticality as class weights.

It returns the :class:`~planner.core.select_result.Batch` (each pick with its reason) and the
numbers behind it, so a report can show why the batch looks as it does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from planner.core.acquisition import bald, check_probs, one_vs_rest, uncertainty
from planner.core.diversity import check_embeddings
from planner.core.quota_cycle import CyclePlan, cycle_plan
from planner.core.quotas import Quota, QuotaStatus, deficits
from planner.core.select_result import Batch
from planner.core.selection import SelectionOptions, select_batch
from planner.core.table import CountTable
from planner.core.vote import neighbour_vote, vote_candidates, vote_space_ok
from planner.core.whitening import WhitenMode
from planner.errors import InputError

UncertaintyName = Literal["entropy", "margin", "least_confidence", "bald"]
UNCERTAINTY_NAMES: tuple[UncertaintyName, ...] = ("entropy", "margin", "least_confidence", "bald")
FloatArray = npt.NDArray[np.float64]
VOTE_ROWS_PER_SLOT = 20
VOTE_MIN_ROWS = 5_000
"""On a pool larger than ``max(VOTE_ROWS_PER_SLOT * batch_size, VOTE_MIN_ROWS)`` rows the vote
is taken on that many rows nearest the short classes' labelled images
(:func:`planner.core.vote.vote_candidates`); the rest get none."""


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """How one cycle's batch is chosen; the daemon builds it once from the settings."""

    batch_size: int
    uncertainty: UncertaintyName = "entropy"
    exploration_share: float = 0.10
    hard_negative_share: float = 0.05
    discovery_share: float = 0.7
    """Batch share for novelty picks while every quota class that is short has fewer than
    ``discovery_known_after`` labelled images (see selection; graded down to
    ``discovery_known_share`` as they pass it). Until then the model's probabilities for a
    class are unreliable (on digits 50:1 the greedy's picks for a class with one to four
    labels held none of it), so most of the batch searches."""
    discovery_known_share: float = 0.2
    """The discovery share once every short class has ``discovery_known_after`` labelled
    images: the quota term then finds more of each (about 55% of its picks on digits 10:1)
    than novelty does (about 20%)."""
    discovery_known_after: int = 8
    discovery_short_weight: float = 1.0
    """Discovery's novelty is multiplied by ``1 + this * P(short class)`` (see
    :class:`planner.core.selection.SelectionOptions`)."""
    shortfall_factor: float = 2.0
    """The objective's shortfall is this times the quota deficit (capped at the batch size):
    on digits 10:1 and 100:1 of ``bench/effectiveness`` 2 met the quotas with fewer labels
    than 1 (docs/effectiveness.md)."""
    vote_neighbours: int = 5
    """Labelled neighbours in the vote the quota term reads (0: no vote; see
    :mod:`planner.core.vote`)."""
    vote_distance_power: float = 3.0
    """Each neighbour's vote weighs ``d ** -power``, ``d`` its cosine distance (0: a plain
    count). On the digits sets of ``bench/effectiveness`` (15 seeds) 5 neighbours weighted
    so met the quotas with 219 / 160 / 148 labels at 10:1 / 50:1 / 100:1, against 235 / 164
    / 161 for a count of 2 (docs/effectiveness.md)."""
    met_uncertainty: bool = True
    """Once no class is short of its quota, the uncertainty is the most uncertain one-vs-rest
    class decision (:func:`planner.core.acquisition.one_vs_rest`) instead of
    ``uncertainty`` (BALD excepted): the batch then serves the model, and on every set of
    ``bench/effectiveness`` it raised macro-F1 at 400 labels (docs/effectiveness.md)."""
    met_rarity_power: float = 1.0
    """With ``multilabel``, that decision's entropy is weighted per class by
    ``(most labelled images of a class / this class's) ** power`` (0: unweighted): on the
    shapes set of ``bench/effectiveness`` it raised macro-F1 at 400 labels from 0.967 to
    0.972 (15 seeds). Class distributions are left unweighted: there their rare classes had
    more labels than the head by then, and weighting cost macro-F1 on the digits."""
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
        if not (math.isfinite(self.shortfall_factor) and self.shortfall_factor >= 1.0):
            raise InputError(f"shortfall_factor must be >= 1, got {self.shortfall_factor}")
        votes = self.vote_neighbours
        if isinstance(votes, bool) or not isinstance(votes, int) or votes < 0:
            raise InputError(f"vote_neighbours must be an int >= 0, got {votes!r}")
        for name in ("vote_distance_power", "met_rarity_power"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be finite and >= 0, got {value}")
        if self.uncertainty not in UNCERTAINTY_NAMES:
            raise InputError(
                f"uncertainty must be one of {UNCERTAINTY_NAMES}, got {self.uncertainty!r}"
            )
        self.selection()  # validates the shares and lambda with the selector's own messages

    def selection(self, *, unknown: float = 1.0) -> SelectionOptions:
        """The selector's options for these settings; ``unknown``: the share of short
        classes with fewer than ``discovery_known_after`` labelled items (see
        :func:`unknown_short_share`), which sets the discovery share between
        ``discovery_known_share`` (0) and ``discovery_share`` (1)."""
        low, high = self.discovery_known_share, self.discovery_share
        return SelectionOptions(
            exploration_share=self.exploration_share,
            hard_negative_share=self.hard_negative_share,
            discovery_share=min(1.0, max(0.0, low + (high - low) * unknown)),
            discovery_whiten=self.discovery_whiten,
            discovery_short_weight=self.discovery_short_weight,
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
    """The objective's target per class: ``min(shortfall_factor * deficit, batch_size)``."""
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
    status: QuotaStatus, cycle: CyclePlan, classes: tuple[str, ...], options: PlanOptions
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64], FloatArray]:
    """Shortfall, need, min slots and weights for the ``classes`` columns of ``probs``."""
    c = len(classes)
    shortfall, need, weights = np.zeros(c), np.zeros(c), np.ones(c)
    slots = np.zeros(c, np.int64)
    for s in status.statuses:
        if s.class_name not in classes:
            continue
        i = classes.index(s.class_name)
        shortfall[i] = min(options.shortfall_factor * s.deficit, options.batch_size)
        need[i] = s.need
        weights[i] = s.quota.criticality
        if s.in_table:
            slots[i] = cycle.slots[status.classes.index(s.class_name)]
    return shortfall, need, slots, weights


def unknown_short_share(
    status: QuotaStatus, table: CountTable, classes: tuple[str, ...], *, after: int
) -> float:
    """The share of the classes of ``classes`` short of their quota that have fewer than
    ``after`` labelled images (0 when no class is short).

    Below ``after`` the model's probabilities for a class are unreliable and discovery finds
    it sooner than the quota term; :class:`PlanOptions` grades the discovery share by this.
    """
    labelled = table.totals("images")
    short = unknown = 0
    for s in status.statuses:
        if s.class_name not in classes or s.deficit <= 0:
            continue
        short += 1
        count = int(labelled[table.classes.index(s.class_name)]) if s.in_table else 0
        unknown += count < after
    return unknown / short if short else 0.0


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
        # uncertain class speaks for the item.
        return one_vs_rest(probs, multilabel=True)
    return uncertainty(probs, method=method)


def rarity_weights(table: CountTable, classes: tuple[str, ...], *, power: float) -> FloatArray:
    """``(c,)`` per class of ``classes``: ``(most labelled images of a class / its own) **
    power`` (a count of 0 counts as 1; classes outside the table have 0)."""
    labelled = table.totals("images")
    counts = np.array(
        [labelled[table.classes.index(n)] if n in table.classes else 0 for n in classes],
        dtype=np.float64,
    )
    counts = np.maximum(counts, 1.0)
    out: FloatArray = (counts.max() / counts) ** power
    return out


def _met_scores(
    probs: npt.NDArray[np.floating[Any]],
    table: CountTable,
    classes: tuple[str, ...],
    status: QuotaStatus,
    options: PlanOptions,
    *,
    bald: bool,
) -> tuple[FloatArray | None, str | None]:
    """The uncertainty once every quota is met (see ``PlanOptions.met_uncertainty``) and a
    note; ``None`` with a note while a class short of its quota has no column in ``probs``
    (nothing in the batch can aim at it); ``None`` while a class is short, with BALD, or
    when the option is off."""
    blind = [s.class_name for s in status.statuses if not s.met and s.class_name not in classes]
    if blind:
        return None, (
            f"short of quota but not scored by the model: {', '.join(blind)}; give the "
            "model a column for each class with a quota"
        )
    if bald or options.uncertainty == "bald" or not options.met_uncertainty:
        return None, None
    if not status.all_met:
        return None, None
    note = "every quota is met: uncertainty is the most uncertain one-vs-rest class decision"
    weights = None
    if options.multilabel and options.met_rarity_power > 0:
        weights = rarity_weights(table, classes, power=options.met_rarity_power)
        note += ", classes with fewer labelled images weighing more"
    return one_vs_rest(probs, class_weights=weights, multilabel=options.multilabel), note


def _labelled(
    ids: npt.NDArray[Any], labels: Mapping[Any, Sequence[str]] | None, classes: tuple[str, ...]
) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Rows of ``ids`` that ``labels`` names and their ``(m, c)`` 0/1 class marks."""
    empty = np.zeros(0, np.intp), np.zeros((0, len(classes)))
    if labels is None:
        return empty
    if not isinstance(labels, Mapping):
        raise InputError("labels must map labelled ids to their class names")
    position = {v: i for i, v in enumerate(ids.tolist())}
    column = {name: j for j, name in enumerate(classes)}
    rows, marks = [], []
    for item, names in labels.items():
        if isinstance(names, str):
            raise InputError(f"labels[{item!r}] must be a list of class names, got a string")
        row = position.get(item.item() if isinstance(item, np.generic) else item)
        if row is None:
            continue
        mark = np.zeros(len(classes))
        mark[[column[name] for name in names if name in column]] = 1.0
        rows.append(row)
        marks.append(mark)
    if not rows:
        return empty
    return np.asarray(rows, np.intp), np.asarray(marks)


def _vote(
    embeddings: npt.ArrayLike | None,
    *,
    n: int,
    rows: npt.NDArray[np.intp],
    marks: FloatArray,
    shortfall: FloatArray,
    k: int,
    power: float,
    batch_size: int,
) -> tuple[npt.NDArray[np.float32] | None, str | None]:
    """The neighbours' vote for the short classes (0 elsewhere) and a note; ``None`` when
    there is nothing to vote with or the embeddings' spectrum is mostly noise."""
    short = shortfall > 0
    if embeddings is None or k == 0 or rows.size == 0 or not short.any():
        return None, None
    anchors = rows[marks[:, short].any(axis=1)]
    if anchors.size == 0:  # no labelled image of a short class: nothing to vote for
        return None, None
    emb = check_embeddings(embeddings, n)
    if not vote_space_ok(emb, np.arange(n)):
        return None, "no neighbour vote: the embeddings' spectrum is mostly noise"
    limit = max(VOTE_ROWS_PER_SLOT * batch_size, VOTE_MIN_ROWS)
    candidates = vote_candidates(emb, anchors, limit=limit)
    vote = neighbour_vote(emb, rows, marks, k=k, candidates=candidates, power=power)
    vote[:, ~short] = 0.0
    note = f"the quota term read the vote of the {k} nearest of {rows.size} labelled images"
    if power > 0:
        note += f" (weighted by distance ** -{power:g})"
    return vote, note


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
    labels: Mapping[Any, Sequence[str]] | None = None,
) -> Plan:
    """Choose the next batch; see the module docstring.

    ``table``: labelled counts; ``quotas``: the project's quotas; ``ids: (n,)`` candidates;
    ``probs: (n, c)`` with columns ``classes`` (default: the table's classes);
    ``mc_probs: (t, n, c)`` stochastic passes (for ``bald``); ``bald_scores: (n,)`` BALD in
    [0, 1] already computed from such passes (the workers store it per item; when given it is
    the uncertainty, whatever ``options.uncertainty`` says); ``embeddings: (n, d)``
    for the diversity guard; ``exclude``: ids in flight or otherwise not to pick (with
    embeddings, labelled ones too: discovery prefers items far from them); ``labels``: the
    class names of labelled items among ``ids`` (never picked; with embeddings they vote,
    see the module docstring; names outside ``classes`` and ids outside ``ids`` are left
    out, an image labelled with none of the classes votes for none).
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
    shortfall, need, slots, weights = _columns(status, cycle, names, options)
    u, met_note = _met_scores(p, table, names, status, options, bald=bald_scores is not None)
    if u is None:
        u = _scores(p, mc_probs, options.uncertainty, options.multilabel, bald_scores)
    id_array = np.asarray(ids)
    labelled_rows, marks = _labelled(id_array, labels, names)
    if labelled_rows.size:
        extra = id_array[labelled_rows]
        exclude = extra if exclude is None else np.concatenate([np.ravel(exclude), extra])
    vote, vote_note = _vote(
        embeddings,
        n=id_array.size,
        rows=labelled_rows,
        marks=marks,
        shortfall=shortfall,
        k=options.vote_neighbours,
        power=options.vote_distance_power,
        batch_size=options.batch_size,
    )
    batch = select_batch(
        id_array,
        u,
        p,
        shortfall,
        batch_size=options.batch_size,
        rng=rng,
        exclude=exclude,
        embeddings=embeddings,
        vote=vote,
        min_slots=slots,
        class_weights=weights,
        classes=names,
        multilabel=options.multilabel,
        options=options.selection(
            unknown=unknown_short_share(status, table, names, after=options.discovery_known_after)
        ),
    )
    notes = tuple(note for note in (met_note, vote_note) if note is not None)
    if notes:
        batch = dataclasses.replace(batch, notes=(*batch.notes, *notes))
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
