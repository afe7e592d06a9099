"""Class hierarchy (child -> parent) and the rule that folds rare children into their parents.

A parent is a class of the label config or a *parent-only* class that exists only to collect
its children ("bird" above "sparrow" and "finch"). Merging goes bottom-up: a class whose count
is below ``min_count`` is counted into its parent, and the parent, children included, goes on
up its own chain while it is still below ``min_count``. Counts are compared with ``<``: a class
with exactly ``min_count`` stays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from planner.core.table import COUNT_KINDS, CountKind, CountTable
from planner.errors import InputError


def validate_hierarchy(hierarchy: Mapping[str, str], classes: tuple[str, ...]) -> tuple[str, ...]:
    """Checks a child -> parent map against the known classes; returns the parent-only classes.

    Every child is a known class or itself a parent; no class is its own parent or ancestor.
    """
    parent_only: list[str] = []
    for child, parent in hierarchy.items():
        for role, name in (("child", child), ("parent", parent)):
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"hierarchy {role} {name!r} must be a non-empty class name")
        if child == parent:
            raise InputError(f"class {child!r} is its own parent in the hierarchy; remove it")
        if parent not in classes and parent not in parent_only:
            parent_only.append(parent)
    known = set(classes) | set(parent_only)
    for child in hierarchy:
        if child not in known:
            raise InputError(
                f"hierarchy child {child!r} is not a class of the label config "
                f"({', '.join(classes)}) nor a parent; fix the name or drop the entry"
            )
    for start in hierarchy:
        chain = [start]
        while chain[-1] in hierarchy:
            chain.append(hierarchy[chain[-1]])
            if chain[-1] in chain[:-1]:
                loop = chain[chain.index(chain[-1]) :]
                raise InputError(
                    f"hierarchy has a cycle {' -> '.join(loop)}: class {start!r} would be its "
                    "own ancestor; break the cycle"
                )
    return tuple(parent_only)


def _depth(name: str, hierarchy: Mapping[str, str]) -> int:
    depth = 0
    while name in hierarchy:
        name = hierarchy[name]
        depth += 1
    return depth


@dataclass(frozen=True, slots=True)
class ClassMerge:
    """Which class each class is counted as, and the counts after merging.

    ``mapping`` sends every input class to its effective class (itself when kept);
    ``classes`` are the effective classes, input order first, new parent-only classes after;
    ``merged`` lists each ``(child, parent)`` step in the order it happened.
    """

    mapping: dict[str, str]
    counts: dict[str, int]
    classes: tuple[str, ...]
    merged: tuple[tuple[str, str], ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "mapping": dict(self.mapping),
            "counts": dict(self.counts),
            "merged": [list(step) for step in self.merged],
        }


def merge_rare_children(
    counts: Mapping[str, int], hierarchy: Mapping[str, str], *, min_count: int
) -> ClassMerge:
    """Folds classes counted fewer than ``min_count`` times into their parents, bottom-up.

    ``counts`` maps each class to its count (one kind, e.g. instances over all splits). Classes
    without a parent are never merged; a parent-only class appears only if something merged in.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise InputError(f"min_count must be a non-negative integer, got {min_count!r}")
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise InputError(f"count of {name!r} must be a non-negative integer, got {count!r}")
    validate_hierarchy(hierarchy, tuple(counts))
    total: dict[str, int] = {name: int(count) for name, count in counts.items()}
    mapping = {name: name for name in counts}
    merged: list[tuple[str, str]] = []
    order = sorted(  # deepest first, so a parent is judged with its children already in
        dict.fromkeys([*counts, *hierarchy.values()]),
        key=lambda name: -_depth(name, hierarchy),
    )
    for name in order:
        parent = hierarchy.get(name)
        if parent is None or name not in total or total[name] >= min_count:
            continue
        total[parent] = total.get(parent, 0) + total.pop(name)
        merged.append((name, parent))
        for source, target in mapping.items():
            if target == name:
                mapping[source] = parent
    kept = [name for name in counts if name in total]
    added = [parent for _, parent in merged if parent not in counts and parent in total]
    classes = tuple(dict.fromkeys(kept + added))
    return ClassMerge(
        mapping=mapping,
        counts={name: total[name] for name in classes},
        classes=classes,
        merged=tuple(merged),
    )


def merge_columns(
    values: npt.ArrayLike,
    classes: tuple[str, ...],
    mapping: Mapping[str, str],
    merged: tuple[str, ...],
) -> npt.NDArray[np.int64]:
    """Sums the columns of ``values: (R, C)`` (one per ``classes``) into ``merged: (R, C')``.

    ``mapping`` sends a class to the class it is counted as (e.g. :attr:`ClassMerge.mapping`);
    unmapped classes stay themselves. Rows may be splits or images: per image, a merged class is
    present where any of its members is (``result > 0``).
    """
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[1] != len(classes) or array.dtype.kind not in "biu":
        raise InputError(
            f"values have shape {array.shape} ({array.dtype}), expected integer counts "
            f"(rows, {len(classes)}): a column per class {classes}"
        )
    target = [mapping.get(name, name) for name in classes]
    missing = sorted(set(target) - set(merged))
    if missing:
        raise InputError(f"classes {missing} are mapped to but not listed in {merged}")
    # (C_old, C_new) 0/1 matrix: a product with it sums the columns merged together.
    onehot = np.zeros((len(classes), len(merged)), dtype=np.int64)
    onehot[np.arange(len(target)), [merged.index(name) for name in target]] = 1
    out: npt.NDArray[np.int64] = array.astype(np.int64) @ onehot
    return out


def apply_class_mapping(
    table: CountTable, mapping: Mapping[str, str], classes: tuple[str, ...]
) -> CountTable:
    """Sums the table's columns into ``classes`` through ``mapping`` (unmapped: unchanged).

    Images add up too, so an image holding two merged children counts twice for their parent:
    an upper bound. ``count_tasks(..., min_count=...)`` merges per task and counts it once.
    """
    merged: dict[CountKind, npt.NDArray[np.int64]] = {
        kind: merge_columns(table.of(kind), table.classes, mapping, classes) for kind in COUNT_KINDS
    }
    return CountTable(
        classes=classes,
        splits=table.splits,
        images=merged["images"],
        instances=merged["instances"],
        pixels=merged["pixels"],
    )


@dataclass(frozen=True, slots=True)
class TableMerge:
    """A merged count table and the merge that produced it."""

    merge: ClassMerge
    table: CountTable


def merge_rare_columns(
    table: CountTable,
    hierarchy: Mapping[str, str],
    *,
    min_count: int,
    kind: CountKind = "instances",
) -> TableMerge:
    """``merge_rare_children`` on a table's ``kind`` totals over all splits, columns merged."""
    totals = table.totals(kind)
    counts = {name: int(totals[i]) for i, name in enumerate(table.classes)}
    merge = merge_rare_children(counts, hierarchy, min_count=min_count)
    return TableMerge(merge=merge, table=apply_class_mapping(table, merge.mapping, merge.classes))
