"""Stratified train/val/test assignment of newly labelled items, counting what is assigned.

Iterative stratification in the spirit of Sechidis et al. (2011), made incremental:

* Demand of split ``s`` for class ``c``: ``ratio_s * total_c - count_{s,c}``, where ``total_c``
  counts the items already assigned and the new ones together. The overall demand of ``s`` is
  ``ratio_s * all items - items in s``.
* While labelled items remain, take the class with the fewest unassigned new items (ties: the
  first class) and put each of its items in the split with the largest demand for that class;
  ties go to the larger overall demand, then to the split listed first. Every class of the item
  and the overall demand are debited.
* Items with no class go, one by one, to the split with the largest overall demand.

**Rare classes fill train first.** A class too rare to give every split a share keeps train's
demand the largest: at 0.8 / 0.1 / 0.1 three items of a new class go 3 / 0 / 0 (demands 2.4 /
0.3 / 0.3 leave train ahead to the end), a fourth goes to val, and ten go 8 / 1 / 1.

Items are processed in the order of a stable hash of ``(seed, id)`` (``hashlib``), so the result
does not depend on the order items are passed in nor on ``PYTHONHASHSEED``. An item once
assigned never moves: ids in ``existing`` keep their split and are assumed already counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from planner.core.table import CountTable
from planner.errors import InputError

__all__ = [
    "DEFAULT_RATIOS",
    "Assignments",
    "ItemId",
    "SplitAssignment",
    "assign_splits",
    "training_split",
    "validate_ratios",
]

ItemId = int | str
Assignments = Mapping[int, str] | Mapping[str, str] | Mapping[ItemId, str]
"""id -> split; a mapping with only int or only str keys is accepted as it is."""
DEFAULT_RATIOS: Mapping[str, float] = MappingProxyType({"train": 0.8, "val": 0.1, "test": 0.1})
_SUM_TOLERANCE = 1e-6


def validate_ratios(ratios: Mapping[str, float]) -> tuple[tuple[str, ...], npt.NDArray[np.float64]]:
    """Split names in order and their ``(S,)`` ratios; each positive and finite, summing to 1."""
    if not isinstance(ratios, Mapping) or not ratios:
        raise InputError(f"split ratios must be a non-empty mapping name -> ratio, got {ratios!r}")
    for name, value in ratios.items():
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"split name {name!r} must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise InputError(f"ratio of split {name!r} must be a number, got {value!r}")
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"ratio of split {name!r} must be positive and finite, got {value}")
    values = np.array(list(ratios.values()), dtype=np.float64)
    if abs(float(values.sum()) - 1.0) > _SUM_TOLERANCE:
        raise InputError(
            f"split ratios {dict(ratios)} sum to {values.sum():.6g}; make them sum to 1"
        )
    return tuple(ratios), values


def training_split(splits: Sequence[str]) -> str:
    """The split a training job learns from: ``train`` when there is one, else the first.

    Split names are free in the settings (``{training = 0.8, validation = 0.2}``), so the
    planner's analysis and the emitted artifacts ask this one rule rather than assume ``train``.
    """
    if not splits:
        raise InputError("no split is named; give at least one, e.g. train")
    return "train" if "train" in splits else splits[0]


@dataclass(frozen=True, slots=True)
class SplitAssignment:
    """New assignments and the per-split figures they lead to.

    ``new`` maps each newly assigned id to its split (in the order the ids were passed);
    ``assignment`` is ``existing`` plus ``new``; ``kept`` the ids passed as new that already had a
    split. ``counts``: ``(S, C)`` items per split containing each class, after assignment;
    ``totals``: ``(S,)`` items per split; ``deviation``: ``(S, C)`` share of class ``c`` in split
    ``s`` minus the ratio of ``s`` (0 for a class with no items).
    """

    splits: tuple[str, ...]
    classes: tuple[str, ...]
    ratios: tuple[float, ...]
    new: Mapping[ItemId, str]
    assignment: Mapping[ItemId, str]
    kept: tuple[ItemId, ...]
    counts: npt.NDArray[np.int64]
    totals: npt.NDArray[np.int64]
    deviation: npt.NDArray[np.float64]

    def max_abs_deviation(self) -> npt.NDArray[np.float64]:
        """``(C,)`` largest absolute deviation from the ratios over the splits, per class."""
        if self.deviation.shape[0] == 0 or self.deviation.shape[1] == 0:
            return np.zeros(self.deviation.shape[1], dtype=np.float64)
        worst: npt.NDArray[np.float64] = np.abs(self.deviation).max(axis=0)
        return worst

    def as_dict(self) -> dict[str, object]:
        """Ratios, new items per split, counts, totals and deviations, keyed by name."""
        new_per_split = dict.fromkeys(self.splits, 0)
        for split in self.new.values():
            new_per_split[split] += 1
        worst = self.max_abs_deviation()
        return {
            "ratios": dict(zip(self.splits, self.ratios, strict=True)),
            "new_per_split": new_per_split,
            "kept": len(self.kept),
            "totals": {s: int(self.totals[i]) for i, s in enumerate(self.splits)},
            "counts": {
                s: {c: int(self.counts[i, j]) for j, c in enumerate(self.classes)}
                for i, s in enumerate(self.splits)
            },
            "deviation": {
                c: {s: float(self.deviation[i, j]) for i, s in enumerate(self.splits)}
                for j, c in enumerate(self.classes)
            },
            "max_abs_deviation": {c: float(worst[j]) for j, c in enumerate(self.classes)},
        }


def _normalise_id(item: object) -> ItemId:
    if isinstance(item, bool | np.bool_) or not isinstance(item, int | str | np.integer):
        raise InputError(f"item id {item!r} must be an int or a str")
    return int(item) if isinstance(item, np.integer) else item


def _order_key(seed: int, item: ItemId) -> tuple[bytes, str, str]:
    tag = "i" if isinstance(item, int) else "s"
    text = f"{seed}\x1f{tag}\x1f{item}".encode("utf-8", "surrogatepass")
    # The full (tag, value) pair breaks the (never seen) digest tie, so the order is total.
    return hashlib.blake2b(text, digest_size=16).digest(), tag, str(item)


def _as_count_array(value: object, name: str, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    array = np.asarray(value)
    if array.size == 0 and int(np.prod(shape)) == 0:
        array = array.reshape(shape)
    if array.shape != shape:
        raise InputError(f"{name} has shape {array.shape}, expected {shape}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputError(f"{name} must hold finite whole numbers")
    elif array.dtype.kind not in "biu":
        raise InputError(f"{name} must be a numeric array of counts, got dtype {array.dtype}")
    if np.any(array < 0):
        raise InputError(f"{name} must not be negative")
    return array.astype(np.int64)


def _ids(
    ids: Sequence[ItemId], existing: Assignments | None, splits: tuple[str, ...]
) -> tuple[list[ItemId], dict[ItemId, str]]:
    old: dict[ItemId, str] = {}
    for key, value in (existing or {}).items():
        old[_normalise_id(key)] = value
    for item, split in old.items():
        if split not in splits:
            raise InputError(f"existing item {item!r} is in split {split!r}, not one of {splits}")
    items = [_normalise_id(i) for i in ids]
    if len(set(items)) != len(items):
        raise InputError("ids repeat; pass each new item once")
    return items, old


def _class_inputs(
    counts: CountTable | npt.ArrayLike | None,
    classes: Sequence[str] | None,
    membership: npt.ArrayLike,
    n_items: int,
    splits: tuple[str, ...],
) -> tuple[npt.NDArray[np.int64] | None, tuple[str, ...], npt.NDArray[np.bool_]]:
    """Existing ``(S, C)`` counts in ratio order (None if not given), class names, membership."""
    names = None if classes is None else tuple(classes)
    base = None
    if isinstance(counts, CountTable):
        if sorted(counts.splits) != sorted(splits):
            raise InputError(
                f"count table splits {counts.splits} differ from the ratio splits {splits}; "
                "give a ratio for every split of the table"
            )
        if names is not None and names != counts.classes:
            raise InputError(f"classes {names} differ from the table's {counts.classes}")
        names = counts.classes
        base = counts.images[[counts.splits.index(s) for s in splits]].astype(np.int64)
    elif counts is not None:
        array = np.asarray(counts)
        width = len(names) if names is not None else array.shape[-1] if array.ndim == 2 else 0
        base = _as_count_array(array, "counts", (len(splits), width))
    known_width: int | None = (
        int(base.shape[1]) if base is not None else None if names is None else len(names)
    )
    member = _membership(membership, n_items, known_width)
    names = names if names is not None else tuple(str(c) for c in range(member.shape[1]))
    if len(set(names)) != len(names):
        raise InputError(f"class names repeat in {names}")
    return base, names, member


def _totals(
    totals: Mapping[str, int] | npt.ArrayLike | None,
    old: Mapping[ItemId, str],
    splits: tuple[str, ...],
) -> npt.NDArray[np.int64]:
    if totals is None:
        per_split = dict.fromkeys(splits, 0)
        for split in old.values():
            per_split[split] += 1
        return np.array([per_split[s] for s in splits], np.int64)
    if isinstance(totals, Mapping):
        if set(totals) != set(splits):
            raise InputError(f"totals name splits {sorted(totals)}, expected {list(splits)}")
        totals = [totals[s] for s in splits]
    return _as_count_array(totals, "totals", (len(splits),))


def _membership(
    membership: npt.ArrayLike, n_items: int, n_classes: int | None
) -> npt.NDArray[np.bool_]:
    array = np.asarray(membership)
    if array.size == 0 and n_items == 0:
        width = n_classes if n_classes is not None else array.shape[1] if array.ndim == 2 else 0
        return np.zeros((0, width), np.bool_)
    if array.ndim != 2 or array.shape[0] != n_items:
        raise InputError(
            f"membership has shape {array.shape}, expected ({n_items}, classes): one row per id, "
            "a one-hot row for single-label items"
        )
    if n_classes is not None and array.shape[1] != n_classes:
        raise InputError(f"membership has {array.shape[1]} class columns, expected {n_classes}")
    if array.dtype.kind not in "biu":
        raise InputError(f"membership must be a bool or int matrix, got dtype {array.dtype}")
    if np.any(array < 0):
        raise InputError("membership must not be negative (use 0/1 or per-class counts)")
    member: npt.NDArray[np.bool_] = array > 0
    return member


def _pick(class_demand: npt.NDArray[np.float64], overall: npt.NDArray[np.float64]) -> int:
    """Largest class demand, then largest overall demand, then first split (float ties kept)."""
    best = float(class_demand.max())
    candidates = class_demand >= best - 1e-9 * max(1.0, abs(best))
    if int(candidates.sum()) > 1:
        masked = np.where(candidates, overall, -np.inf)
        best_overall = float(masked.max())
        candidates &= masked >= best_overall - 1e-9 * max(1.0, abs(best_overall))
    return int(np.argmax(candidates))


def _stratify(
    rows: npt.NDArray[np.bool_],
    base: npt.NDArray[np.int64],
    before: npt.NDArray[np.int64],
    ratio: npt.NDArray[np.float64],
) -> npt.NDArray[np.int64]:
    """``(n,)`` split index per row of ``rows: (n, C)``, rows already in processing order."""
    demand = ratio[:, None] * (base.sum(axis=0) + rows.sum(axis=0))[None, :] - base
    overall = ratio * float(before.sum() + rows.shape[0]) - before
    chosen = np.full(rows.shape[0], -1, dtype=np.int64)
    remaining = rows.sum(axis=0).astype(np.int64)
    by_class = [np.flatnonzero(rows[:, c]) for c in range(rows.shape[1])]
    while np.any(remaining > 0):
        rarest = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))
        for k in by_class[rarest]:
            if chosen[k] >= 0:
                continue
            split = _pick(demand[:, rarest], overall)
            chosen[k] = split
            demand[split, rows[k]] -= 1.0
            overall[split] -= 1.0
            remaining[rows[k]] -= 1
    for k in np.flatnonzero(chosen < 0):  # items with no class: overall demand only
        split = _pick(overall, overall)
        chosen[k] = split
        overall[split] -= 1.0
    return chosen


def assign_splits(
    ids: Sequence[ItemId],
    membership: npt.ArrayLike,
    *,
    existing: Assignments | None = None,
    counts: CountTable | npt.ArrayLike | None = None,
    totals: Mapping[str, int] | npt.ArrayLike | None = None,
    ratios: Mapping[str, float] = DEFAULT_RATIOS,
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> SplitAssignment:
    """Assigns each new item a split so every class stays close to ``ratios``; see the module.

    ``membership``: ``(N, C)`` bool/int, row ``i`` the classes of ``ids[i]`` (nonzero = present).
    ``existing``: id -> split of the items already assigned; they never move, and an id of
    ``ids`` found there keeps its split and is not counted again. ``counts``: ``(S, C)`` items
    already assigned per split (ratio order) and class, or a ``CountTable`` (its images); required
    when ``existing`` is not empty. ``totals``: ``(S,)`` or split -> items already assigned; by
    default the number of ids per split in ``existing``. ``classes`` names the columns.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InputError(f"seed must be an int, got {seed!r}")
    splits, ratio = validate_ratios(ratios)
    items, old = _ids(ids, existing, splits)
    given, names, member = _class_inputs(counts, classes, membership, len(items), splits)
    if given is None and old:
        raise InputError(
            "existing assignments are given without their counts: pass counts (a CountTable or "
            "an (S, C) array) of the items already assigned, zeros to ignore their classes"
        )
    base = np.zeros((len(splits), len(names)), np.int64) if given is None else given
    before = _totals(totals, old, splits)
    if len(names) and np.any(base.max(axis=1) > before):
        raise InputError(
            f"a split holds more items of one class than items in all ({base.max(axis=1)} > "
            f"{before}); pass totals, the number of items already in each split"
        )

    fresh = sorted(
        (i for i, item in enumerate(items) if item not in old),
        key=lambda i: _order_key(int(seed), items[i]),
    )
    rows = member[fresh]
    chosen = _stratify(rows, base, before, ratio)
    onehot = np.zeros((len(fresh), len(splits)), np.int64)
    onehot[np.arange(len(fresh)), chosen] = 1
    counts_after = base + onehot.T @ rows.astype(np.int64)
    totals_after = before + onehot.sum(axis=0)
    placed = {items[i]: splits[chosen[k]] for k, i in enumerate(fresh)}
    new = {item: placed[item] for item in items if item in placed}
    class_total = counts_after.sum(axis=0)[None, :]
    share = np.divide(
        counts_after, class_total, out=np.zeros(counts_after.shape), where=class_total > 0
    )
    deviation = np.where(class_total > 0, share - ratio[:, None], 0.0)
    for array in (counts_after, totals_after, deviation):
        array.flags.writeable = False
    return SplitAssignment(
        splits=splits,
        classes=names,
        ratios=tuple(float(r) for r in ratio),
        new=MappingProxyType(new),
        assignment=MappingProxyType({**old, **new}),
        kept=tuple(item for item in items if item in old),
        counts=counts_after,
        totals=totals_after,
        deviation=deviation,
    )
