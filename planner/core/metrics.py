"""How imbalanced a set of per-class counts is: ratio, long tail, entropy, effective classes, Gini.

Counts are a ``(C,)`` array of non-negative integers (images, instances or pixels per class).
Definitions, with ``n_c`` the count of class ``c``, ``N = Σ n_c`` and ``p_c = n_c / N``:

* **imbalance ratio** ``max n_c / min n_c`` over the classes with ``n_c > 0``. Empty classes
  would make it infinite and hide how skewed the rest is, so they are reported separately
  (``empty_classes``); ``imbalance_ratio(..., empty="inf")`` gives ``inf`` instead.
* **long tail**: the head is the fewest most-frequent classes that together hold at least
  ``head_mass`` of the samples (ties in count broken by class order); every other class,
  empty ones included, is the tail. We report the share of classes in the tail and the share
  of samples they hold.
* **entropy** ``H = -Σ p_c log p_c`` in nats (``0 log 0 = 0``); **normalised entropy**
  ``H / log C`` over all ``C`` classes, empty ones included, in ``[0, 1]``; a single class is
  defined as perfectly even (1.0). **Effective number of classes** ``exp(H)`` in ``[1, C]``.
* **Gini coefficient** ``Σ_i Σ_j |n_i - n_j| / (2 C² mean n)``: 0 for equal counts, at most
  ``(C - 1) / C`` when one class holds everything.

Every metric is ``None`` when no class has any sample: there is nothing to measure yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from planner.core.table import CountKind, CountTable
from planner.errors import InputError

DEFAULT_HEAD_MASS = 0.8
DEFAULT_MIN_COUNT = 50
"""Seed 001: aim for at least 50 to 100 samples per class before training."""

_MAX_SAFE_FLOAT = 2.0**53  # above this, float counts are no longer exact integers


def as_counts(
    counts: npt.ArrayLike, *, what: str = "counts", ndim: int = 1
) -> npt.NDArray[np.int64]:
    """Validate an array of non-negative integer counts (``(C,)`` by default) as int64.

    Floats are accepted when they hold whole numbers (counts read back from JSON); booleans
    only when ``ndim`` is 2 (a membership matrix); NaN, infinities, negatives and fractions
    are refused.
    """
    array = np.asarray(counts)
    if array.ndim != ndim:
        layout = "one count per class" if ndim == 1 else "items by classes"
        raise InputError(f"{what} must be {ndim}-D ({layout}), got shape {array.shape}")
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    is_bool = array.dtype == np.bool_
    if (is_bool and ndim == 1) or not (numeric or is_bool):
        raise InputError(f"{what} must hold integer counts, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{what} contain NaN or infinity; pass finite counts")
        if (np.abs(array) > _MAX_SAFE_FLOAT).any() or (array != np.floor(array)).any():
            raise InputError(f"{what} must be whole numbers; found fractional or huge values")
    if (array < 0).any():
        raise InputError(f"{what} must not be negative; found {int((array < 0).sum())} below 0")
    out: npt.NDArray[np.int64] = array.astype(np.int64)
    return out


def imbalance_ratio(
    counts: npt.ArrayLike, *, empty: Literal["ignore", "inf"] = "ignore"
) -> float | None:
    """``max / min`` of ``counts: (C,)`` over non-empty classes, or ``inf`` if ``empty="inf"``.

    ``None`` when no class has a sample.
    """
    n = as_counts(counts)
    if empty not in ("ignore", "inf"):
        raise InputError(f"empty must be 'ignore' or 'inf', got {empty!r}")
    nonzero = n[n > 0]
    if nonzero.size == 0:
        return None
    if empty == "inf" and nonzero.size < n.size:
        return math.inf
    return float(nonzero.max()) / float(nonzero.min())


def entropy(counts: npt.ArrayLike) -> float | None:
    """Shannon entropy in nats of the class distribution of ``counts: (C,)``."""
    n = as_counts(counts)
    total = int(n.sum())
    if total == 0:
        return None
    p = n[n > 0].astype(np.float64) / total
    h = float(-(p * np.log(p)).sum())
    return max(h, 0.0)  # rounding can give -0.0 or -1e-17 for a single class


def normalised_entropy(counts: npt.ArrayLike) -> float | None:
    """``H / log C`` in ``[0, 1]``; 1.0 for a single class (nothing can be more even)."""
    h = entropy(counts)
    if h is None:
        return None
    c = np.asarray(counts).size
    if c == 1:
        return 1.0
    return min(h / math.log(c), 1.0)  # clip the last-bit rounding of equal counts


def effective_classes(counts: npt.ArrayLike) -> float | None:
    """``exp(H)``: how many equally frequent classes would have the same entropy, in ``[1, C]``."""
    h = entropy(counts)
    if h is None:
        return None
    return min(max(math.exp(h), 1.0), float(np.asarray(counts).size))


def gini(counts: npt.ArrayLike) -> float | None:
    """Gini coefficient of ``counts: (C,)``, in ``[0, (C - 1) / C]``."""
    n = as_counts(counts)
    total = int(n.sum())
    if total == 0:
        return None
    c = n.size
    ranks = np.arange(1, c + 1, dtype=np.float64)
    # sorted form of the mean absolute difference: O(C log C) instead of O(C²)
    weighted = float(((2.0 * ranks - c - 1.0) * np.sort(n).astype(np.float64)).sum())
    return max(weighted / (c * total), 0.0)


def long_tail(
    counts: npt.ArrayLike, *, head_mass: float = DEFAULT_HEAD_MASS
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices of the head and the tail classes of ``counts: (C,)``, head most frequent first.

    The head is the shortest prefix of the classes sorted by count (descending, ties in class
    order) whose share of the samples reaches ``head_mass``; with no samples, all is tail.
    """
    n = as_counts(counts)
    if not (math.isfinite(head_mass) and 0.0 < head_mass <= 1.0):
        raise InputError(f"head_mass must be in (0, 1], got {head_mass}")
    order = np.argsort(-n, kind="stable").astype(np.int64)
    total = int(n.sum())
    if total == 0:
        return order[:0], order
    # dividing first keeps decimal fractions exact: 7/10 >= 0.7, whereas 7 >= 0.7*10 is False
    share = np.cumsum(n[order]) / total
    size = int(np.argmax(share >= head_mass)) + 1 if (share >= head_mass).any() else n.size
    return order[:size], order[size:]


@dataclass(frozen=True, slots=True)
class ImbalanceReport:
    """Imbalance figures of one set of per-class counts; see the module docstring."""

    classes: tuple[str, ...]
    counts: tuple[int, ...]
    total: int
    empty_classes: tuple[str, ...]
    rare_classes: tuple[str, ...]
    """Classes with fewer than ``min_count`` samples, empty ones included, rarest first."""
    min_count: int
    majority_class: str | None
    minority_class: str | None
    """Rarest non-empty class."""
    imbalance_ratio: float | None
    head_mass: float
    head_classes: tuple[str, ...]
    tail_classes: tuple[str, ...]
    tail_class_share: float
    tail_sample_share: float | None
    entropy: float | None
    normalised_entropy: float | None
    effective_classes: float | None
    gini: float | None

    @property
    def has_empty_classes(self) -> bool:
        return bool(self.empty_classes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "counts": dict(zip(self.classes, self.counts, strict=True)),
            "empty_classes": list(self.empty_classes),
            "rare_classes": list(self.rare_classes),
            "min_count": self.min_count,
            "majority_class": self.majority_class,
            "minority_class": self.minority_class,
            "imbalance_ratio": self.imbalance_ratio,
            "head_mass": self.head_mass,
            "head_classes": list(self.head_classes),
            "tail_classes": list(self.tail_classes),
            "tail_class_share": self.tail_class_share,
            "tail_sample_share": self.tail_sample_share,
            "entropy": self.entropy,
            "normalised_entropy": self.normalised_entropy,
            "effective_classes": self.effective_classes,
            "gini": self.gini,
        }


def imbalance_report(
    counts: npt.ArrayLike,
    classes: Sequence[str],
    *,
    head_mass: float = DEFAULT_HEAD_MASS,
    min_count: int = DEFAULT_MIN_COUNT,
) -> ImbalanceReport:
    """All imbalance figures of ``counts: (C,)``, named by ``classes`` (same order)."""
    n = as_counts(counts)
    classes = tuple(classes)
    if len(classes) != n.size:
        raise InputError(f"{n.size} counts but {len(classes)} class names; pass one name per count")
    if n.size == 0:
        raise InputError("no classes given; an imbalance report needs at least one class")
    if len(set(classes)) != len(classes):
        raise InputError(f"class names repeat in {classes}")
    if not all(isinstance(name, str) and name for name in classes):
        raise InputError(f"class names must be non-empty strings, got {classes}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise InputError(f"min_count must be a non-negative integer, got {min_count!r}")
    head, tail = long_tail(n, head_mass=head_mass)
    total = int(n.sum())
    nonzero = np.flatnonzero(n > 0)
    by_count = np.argsort(n, kind="stable")
    return ImbalanceReport(
        classes=classes,
        counts=tuple(int(v) for v in n),
        total=total,
        empty_classes=tuple(classes[i] for i in np.flatnonzero(n == 0)),
        rare_classes=tuple(classes[i] for i in by_count if n[i] < min_count),
        min_count=min_count,
        majority_class=classes[int(np.argmax(n))] if total else None,
        minority_class=classes[int(nonzero[np.argmin(n[nonzero])])] if total else None,
        imbalance_ratio=imbalance_ratio(n),
        head_mass=head_mass,
        head_classes=tuple(classes[i] for i in head),
        tail_classes=tuple(classes[i] for i in tail),
        tail_class_share=tail.size / n.size,
        tail_sample_share=int(n[tail].sum()) / total if total else None,
        entropy=entropy(n),
        normalised_entropy=normalised_entropy(n),
        effective_classes=effective_classes(n),
        gini=gini(n),
    )


def report_from_table(
    table: CountTable,
    kind: CountKind,
    *,
    split: str | None = None,
    head_mass: float = DEFAULT_HEAD_MASS,
    min_count: int = DEFAULT_MIN_COUNT,
) -> ImbalanceReport:
    """The report of one count kind in one split of ``table``, or over all splits if ``None``."""
    counts = table.totals(kind) if split is None else table.split(split, kind)
    return imbalance_report(counts, table.classes, head_mass=head_mass, min_count=min_count)


@dataclass(frozen=True, slots=True)
class TableImbalance:
    """Imbalance of one count kind overall and in each split of a ``CountTable``."""

    kind: CountKind
    overall: ImbalanceReport
    splits: tuple[str, ...]
    per_split: tuple[ImbalanceReport, ...]

    def split(self, name: str) -> ImbalanceReport:
        if name not in self.splits:
            raise InputError(f"split {name!r} is not one of {self.splits}")
        return self.per_split[self.splits.index(name)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "overall": self.overall.as_dict(),
            "splits": {s: r.as_dict() for s, r in zip(self.splits, self.per_split, strict=True)},
        }


def table_imbalance(
    table: CountTable,
    kind: CountKind,
    *,
    head_mass: float = DEFAULT_HEAD_MASS,
    min_count: int = DEFAULT_MIN_COUNT,
) -> TableImbalance:
    """Reports of one count kind for every split of ``table`` and for all splits together."""
    options: dict[str, Any] = {"head_mass": head_mass, "min_count": min_count}
    return TableImbalance(
        kind=kind,
        overall=report_from_table(table, kind, **options),
        splits=table.splits,
        per_split=tuple(report_from_table(table, kind, split=s, **options) for s in table.splits),
    )
