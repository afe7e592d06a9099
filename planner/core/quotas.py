"""Annotation quotas per class and how far the labelled data is from them.

A ``Quota`` asks for a number of one count kind (images, instances or pixels) of one class,
optionally per split. ``deficits`` compares quotas with a ``CountTable``:

* a class's **deficit** is the fewest further samples that meet both its total and every
  split target: ``max(target - count, Σ_s max(0, target_s - count_s))`` (split targets may
  leave part of the total unassigned; samples in any split fill that part);
* **progress** ``= 1 - deficit / target`` in ``[0, 1]`` (1 for a zero target), so a class is
  **met** exactly when its deficit is 0;
* **need** ``= criticality * deficit / target`` (0 when met): the acquisition step's per-class
  pull, in ``[0, criticality]``, one value per table class in table order;
* **overall progress** is the criticality-weighted mean of the classes' progress. Targets are
  not used as weights because quotas of different kinds (pixels beside images) would let the
  largest unit drown the others.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from planner.core.table import COUNT_KINDS, UNKNOWN, CountKind, CountTable
from planner.errors import InputError


def _whole(value: object, what: str) -> int:
    """A non-negative int from an int-like value (numpy ints too); bools and floats refused."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    number = operator.index(value)
    if number < 0:
        raise InputError(f"{what} must not be negative, got {number}")
    return number


@dataclass(frozen=True, slots=True)
class Quota:
    """How much of one class the project wants labelled.

    ``target`` is the total of ``kind`` to reach; when ``None`` it is the sum of
    ``split_targets`` (``{"train": 400, "val": 50, "test": 50}``), which must not exceed it.
    ``per_cycle_min`` is how many items of this class each annotation batch should aim to
    bring; ``criticality`` (> 0) scales the class's need against the others.
    """

    class_name: str
    target: int | None = None
    split_targets: Mapping[str, int] = field(default_factory=dict)
    per_cycle_min: int = 0
    criticality: float = 1.0
    kind: CountKind = "images"

    def __post_init__(self) -> None:
        name = self.class_name
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"a quota needs a class name, got {name!r}")
        splits = {}
        for split, value in dict(self.split_targets).items():
            if not isinstance(split, str) or not split:
                raise InputError(f"quota for {name!r}: split names must be strings, got {split!r}")
            splits[split] = _whole(value, f"quota for {name!r}: split target {split!r}")
        # a private copy, so the caller's dict cannot change a frozen quota afterwards
        object.__setattr__(self, "split_targets", splits)
        if self.target is None:
            if not splits:
                raise InputError(
                    f"quota for {name!r} has neither a target nor split targets; give one"
                )
        else:
            target = _whole(self.target, f"quota for {name!r}: target")
            object.__setattr__(self, "target", target)
            if sum(splits.values()) > target:
                raise InputError(
                    f"quota for {name!r}: split targets sum to {sum(splits.values())}, above the "
                    f"target {target}; raise the target or lower the split targets"
                )
        object.__setattr__(
            self, "per_cycle_min", _whole(self.per_cycle_min, f"quota for {name!r}: per_cycle_min")
        )
        crit = self.criticality
        if isinstance(crit, bool) or not isinstance(crit, Real) or not math.isfinite(crit):
            raise InputError(
                f"quota for {name!r}: criticality must be a finite number, got {crit!r}"
            )
        if crit <= 0:
            raise InputError(f"quota for {name!r}: criticality must be above 0, got {crit}")
        object.__setattr__(self, "criticality", float(crit))
        if self.kind not in COUNT_KINDS:
            raise InputError(f"quota for {name!r}: kind {self.kind!r} is not one of {COUNT_KINDS}")

    @property
    def total(self) -> int:
        """The total target: ``target`` or, when absent, the sum of the split targets."""
        return self.target if self.target is not None else sum(self.split_targets.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "kind": self.kind,
            "target": self.total,
            "split_targets": dict(self.split_targets),
            "per_cycle_min": self.per_cycle_min,
            "criticality": self.criticality,
        }


@dataclass(frozen=True, slots=True)
class SplitStatus:
    split: str
    count: int
    target: int
    deficit: int


@dataclass(frozen=True, slots=True)
class ClassStatus:
    """One quota against the table: counts, deficit, progress and need."""

    quota: Quota
    count: int
    deficit: int
    progress: float
    need: float
    in_table: bool
    """False when the table has no column for the class (its counts are taken as 0)."""
    splits: tuple[SplitStatus, ...]
    unknown_splits: tuple[str, ...]
    """Split targets naming a split the table lacks (counted as 0)."""

    @property
    def class_name(self) -> str:
        return self.quota.class_name

    @property
    def target(self) -> int:
        return self.quota.total

    @property
    def met(self) -> bool:
        return self.deficit == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.quota.kind,
            "count": self.count,
            "target": self.target,
            "deficit": self.deficit,
            "progress": self.progress,
            "met": self.met,
            "need": self.need,
            "criticality": self.quota.criticality,
            "per_cycle_min": self.quota.per_cycle_min,
            "in_table": self.in_table,
            "splits": {
                s.split: {"count": s.count, "target": s.target, "deficit": s.deficit}
                for s in self.splits
            },
            "unknown_splits": list(self.unknown_splits),
        }


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """Every quota's status, plus what the acquisition and stop rules need."""

    classes: tuple[str, ...]
    """The table's classes: the order of ``need``."""
    statuses: tuple[ClassStatus, ...]
    """Table classes with a quota in table order, then quotas for classes the table lacks."""
    need: npt.NDArray[np.float64]
    """``(C,)`` per table class; 0 for classes without a quota."""
    no_quota: tuple[str, ...]
    """Table classes without a quota (the ``unknown`` bucket left out)."""
    not_in_table: tuple[str, ...]
    overall_progress: float
    all_met: bool
    """True when every quota is met (and so when there is no quota at all)."""

    def status(self, class_name: str) -> ClassStatus:
        for s in self.statuses:
            if s.class_name == class_name:
                return s
        names = [s.class_name for s in self.statuses]
        raise InputError(f"no quota for class {class_name!r}; quotas exist for {names}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall_progress": self.overall_progress,
            "all_met": self.all_met,
            "classes": {s.class_name: s.as_dict() for s in self.statuses},
            "no_quota": list(self.no_quota),
            "not_in_table": list(self.not_in_table),
        }


def _class_status(quota: Quota, table: CountTable) -> ClassStatus:
    in_table = quota.class_name in table.classes
    counts = table.of(quota.kind)
    column = (
        counts[:, table.classes.index(quota.class_name)]
        if in_table
        else np.zeros(len(table.splits), np.int64)
    )
    count = int(column.sum())
    splits = []
    for split, split_target in quota.split_targets.items():
        split_count = int(column[table.splits.index(split)]) if split in table.splits else 0
        splits.append(
            SplitStatus(split, split_count, split_target, max(0, split_target - split_count))
        )
    target = quota.total
    deficit = max(target - count, sum(s.deficit for s in splits), 0)
    return ClassStatus(
        quota=quota,
        count=count,
        deficit=deficit,
        progress=1.0 - deficit / target if target else 1.0,
        # deficit / target first: it is at most 1 after rounding, so need <= criticality
        need=quota.criticality * (deficit / target) if target else 0.0,
        in_table=in_table,
        splits=tuple(splits),
        unknown_splits=tuple(s for s in quota.split_targets if s not in table.splits),
    )


def case_hint(names: Sequence[str], classes: Sequence[str]) -> str:
    """`` ('car' is 'Car' spelled in another case)`` for each of ``names`` that is one of
    ``classes`` but for case; empty when none is."""
    hints = []
    for name in names:
        alike = [c for c in classes if c.lower() == name.lower()]
        if alike:
            hints.append(f"{name!r} is {alike[0]!r} spelled in another case")
    return f" ({'; '.join(hints)})" if hints else ""


def known_quotas(quotas: Sequence[Quota], classes: Sequence[str]) -> list[Quota]:
    """The quotas whose class is one of ``classes`` (a label config's): those the stop rules
    evaluate while a quota names a class the project lacks."""
    return [q for q in quotas if q.class_name in classes]


def deficits(
    quotas: Sequence[Quota],
    table: CountTable,
    *,
    known_classes: Collection[str] | None = None,
) -> QuotaStatus:
    """Compare ``quotas`` with the counts in ``table``; see the module docstring.

    ``known_classes`` (the label schema's classes), when given, makes a quota for any other
    class an error, catching typos; without it such a quota is reported in ``not_in_table``.
    """
    quotas = tuple(quotas)
    for quota in quotas:
        if not isinstance(quota, Quota):
            raise InputError(f"quotas must be Quota objects, got {type(quota).__name__}")
    names = [q.class_name for q in quotas]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"more than one quota for {repeated}; keep one quota per class")
    if known_classes is not None:
        known = sorted(set(known_classes))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(
                f"quotas {unknown} name classes the label schema does not define"
                f"{case_hint(unknown, known)}; known classes: {known}. Rename each to one of "
                "them (class names are case-sensitive), or add the class to the label config"
            )
    by_name = {q.class_name: q for q in quotas}
    ordered = [by_name[c] for c in table.classes if c in by_name]
    ordered += [q for q in quotas if q.class_name not in table.classes]
    statuses = tuple(_class_status(q, table) for q in ordered)
    need = np.zeros(len(table.classes), np.float64)
    for s in statuses:
        if s.in_table:
            need[table.classes.index(s.class_name)] = s.need
    weights = sum(s.quota.criticality for s in statuses)
    overall = sum(s.quota.criticality * s.progress for s in statuses) / weights if weights else 1.0
    return QuotaStatus(
        classes=table.classes,
        statuses=statuses,
        need=need,
        no_quota=tuple(c for c in table.classes if c not in by_name and c != UNKNOWN),
        not_in_table=tuple(s.class_name for s in statuses if not s.in_table),
        overall_progress=min(max(overall, 0.0), 1.0),
        all_met=all(s.met for s in statuses),
    )
