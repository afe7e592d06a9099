"""Hidden imbalance inside conditions: how each class spreads over day/night, weather, camera...

Seed 001: "Stratify by conditions ... You may have hidden imbalance inside subclasses." Given
which classes each item holds and one or more metadata fields per item, we count every class
in every stratum (value) of every field and flag two things a lead must look at:

* **skewed** classes: the total variation distance ``½ Σ_s |p_c(s) - q(s)|`` between the
  class's distribution over a field's strata (``p_c``) and the items' distribution (``q``, the
  data set's own condition mix) is at least ``max_tv``. 0 means the class follows the data
  set, 1 means it never appears where the data set's items are.
* **low** cells: a (class, stratum) count below ``min_count`` ("Pedestrian at time=night:
  3 images"), with the count the overall mix would predict. The ``(missing)`` stratum, which
  collects absent, ``None``, NaN and blank values, is not flagged unless asked.

Classes with no item at all are listed as ``absent_classes`` and have no distribution (NaN).
The distance is noisy for a class with few items or a field with many strata: read a skewed
flag together with the class's count, which its reason gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from planner.core.metrics import as_counts
from planner.core.strata_flags import StrataFlag, low_flags, skewed_flags
from planner.errors import InputError

MISSING = "(missing)"
"""Stratum of items whose value is absent, None, NaN or blank."""
DEFAULT_MIN_COUNT = 20
DEFAULT_MAX_TV = 0.2


@dataclass(frozen=True, slots=True)
class FieldStrata:
    """Counts and distributions of every class over the strata of one field."""

    field: str
    classes: tuple[str, ...]
    strata: tuple[str, ...]
    items: npt.NDArray[np.int64]
    """``(S,)`` items per stratum."""
    counts: npt.NDArray[np.int64]
    """``(S, C)`` count of each class in each stratum."""
    overall: npt.NDArray[np.float64]
    """``(S,)`` share of the items in each stratum (all zero when there are no items)."""
    distribution: npt.NDArray[np.float64]
    """``(C, S)`` share of each class's count in each stratum; NaN rows for absent classes."""
    total_variation: npt.NDArray[np.float64]
    """``(C,)`` distance between each class's distribution and ``overall``; NaN if absent."""
    flags: tuple[StrataFlag, ...]

    def count(self, class_name: str, stratum: str) -> int:
        """The count of ``class_name`` in ``stratum`` (0 for a stratum no item has)."""
        if class_name not in self.classes:
            raise InputError(f"class {class_name!r} is not one of {self.classes}")
        if stratum not in self.strata:
            return 0
        return int(self.counts[self.strata.index(stratum), self.classes.index(class_name)])

    def as_dict(self) -> dict[str, Any]:
        """``{strata: {stratum: items, share}, classes: {class: counts, distribution, tv}}``."""
        per_class: dict[str, Any] = {}
        for j, c in enumerate(self.classes):
            tv = float(self.total_variation[j])
            absent = math.isnan(tv)  # no distribution to show: JSON gets null, never NaN
            per_class[c] = {
                "counts": {s: int(self.counts[i, j]) for i, s in enumerate(self.strata)},
                "distribution": None
                if absent
                else {s: float(self.distribution[j, i]) for i, s in enumerate(self.strata)},
                "total_variation": None if absent else tv,
            }
        return {
            "strata": {
                s: {"items": int(self.items[i]), "share": float(self.overall[i])}
                for i, s in enumerate(self.strata)
            },
            "classes": per_class,
            "flags": [f.as_dict() for f in self.flags],
        }


@dataclass(frozen=True, slots=True)
class StrataReport:
    """Hidden-imbalance findings over every field given to ``stratify``."""

    classes: tuple[str, ...]
    n_items: int
    fields: tuple[FieldStrata, ...]
    absent_classes: tuple[str, ...]
    min_count: int
    max_tv: float

    @property
    def flags(self) -> tuple[StrataFlag, ...]:
        """Every field's flags, fields in the order given."""
        return tuple(flag for f in self.fields for flag in f.flags)

    def field(self, name: str) -> FieldStrata:
        for f in self.fields:
            if f.field == name:
                return f
        raise InputError(f"field {name!r} is not one of {[f.field for f in self.fields]}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_items": self.n_items,
            "classes": list(self.classes),
            "absent_classes": list(self.absent_classes),
            "min_count": self.min_count,
            "max_tv": self.max_tv,
            "fields": {f.field: f.as_dict() for f in self.fields},
            "flags": [f.as_dict() for f in self.flags],
        }


def stratum_of(value: object) -> str:
    """The stratum name of one metadata value: its text, or ``(missing)``."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return MISSING
    text = str(value).strip()
    return text or MISSING


def cross_fields(
    metadata: Mapping[str, Sequence[object] | npt.NDArray[Any]], fields: Sequence[str]
) -> list[str]:
    """One value per item combining several fields (``"night / rain"``), to stratify by both."""
    if not fields:
        raise InputError("cross_fields needs at least one field name")
    missing = [f for f in fields if f not in metadata]
    if missing:
        raise InputError(f"fields {missing} are not in the metadata {sorted(metadata)}")
    columns = [[stratum_of(v) for v in metadata[f]] for f in fields]
    if len({len(c) for c in columns}) != 1:
        raise InputError(f"fields {list(fields)} have different lengths; pass one value per item")
    return [" / ".join(parts) for parts in zip(*columns, strict=True)]


def _count_strata(
    values: Sequence[object] | npt.NDArray[Any], amounts: npt.NDArray[np.int64]
) -> tuple[tuple[str, ...], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The strata of one field, items per stratum ``(S,)`` and class counts ``(S, C)``."""
    raw: list[object] = values.tolist() if isinstance(values, np.ndarray) else list(values)
    names: dict[object, str] = {}
    try:
        # name each distinct value once, not once per item; keyed with its type, since
        # 1 == 1.0 == True would share a key (and the first one's name) in a dict
        keys: list[object] = [(type(v), v) for v in raw]
        for key in dict.fromkeys(keys):
            names[key] = stratum_of(key[1])  # type: ignore[index]
        raw = keys
    except TypeError:  # unhashable values: name them one by one
        raw = [stratum_of(v) for v in raw]
        names = {v: str(v) for v in dict.fromkeys(raw)}
    present = set(names.values())
    # sorted for a stable layout whatever the item order; (missing) last
    strata = tuple(sorted(present - {MISSING})) + ((MISSING,) if MISSING in present else ())
    index = {s: i for i, s in enumerate(strata)}
    lookup = {v: index[name] for v, name in names.items()}
    rows = np.fromiter(map(lookup.__getitem__, raw), dtype=np.int64, count=len(raw))
    items = np.bincount(rows, minlength=len(strata)).astype(np.int64)
    counts = np.zeros((len(strata), amounts.shape[1]), dtype=np.int64)
    if rows.size:
        # one sort and segment sums: fast for any number of strata, unlike np.add.at
        order = np.argsort(rows, kind="stable")
        starts = np.concatenate(([0], np.cumsum(items)[:-1]))
        counts[:] = np.add.reduceat(amounts[order], starts, axis=0)
    return strata, items, counts


def _one_field(
    name: str,
    values: Sequence[object] | npt.NDArray[Any],
    amounts: npt.NDArray[np.int64],
    classes: tuple[str, ...],
    *,
    min_count: int,
    max_tv: float,
    flag_missing: bool,
    unit: str,
) -> FieldStrata:
    """Counts, distributions and flags of one field; ``amounts: (N, C)`` already validated."""
    strata, items, counts = _count_strata(values, amounts)
    overall = items / len(values) if len(values) else np.zeros(len(strata))
    totals = counts.sum(axis=0)
    present = totals > 0
    distribution = np.full((len(classes), len(strata)), np.nan)
    distribution[present] = (counts[:, present] / totals[present]).T
    tv = np.full(len(classes), np.nan)
    tv[present] = 0.5 * np.abs(distribution[present] - overall).sum(axis=1)
    bare = FieldStrata(name, classes, strata, items, counts, overall, distribution, tv, ())
    flags = skewed_flags(bare, max_tv=max_tv, unit=unit)
    skip = None if flag_missing else MISSING
    flags += low_flags(bare, min_count=min_count, skip=skip, unit=unit)
    return replace(bare, flags=tuple(flags))


def stratify(
    membership: npt.ArrayLike,
    classes: Sequence[str],
    metadata: Mapping[str, Sequence[object] | npt.NDArray[Any]],
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    max_tv: float = DEFAULT_MAX_TV,
    count: Literal["items", "values"] = "items",
    flag_missing: bool = False,
    unit: str = "images",
) -> StrataReport:
    """Count each class per stratum of each metadata field and flag hidden imbalance.

    ``membership: (N, C)`` bool or non-negative int: item ``i`` holds class ``c`` when the
    entry is above 0 (multi-label allowed). ``count="items"`` counts the items holding each
    class; ``"values"`` sums the entries (e.g. instances per image). ``metadata`` maps each
    field to ``N`` values. ``unit`` only names what is counted in the flags' reasons.
    """
    matrix = as_counts(membership, what="membership", ndim=2)
    classes = tuple(classes)
    if matrix.shape[1] != len(classes):
        raise InputError(
            f"membership has {matrix.shape[1]} columns but {len(classes)} class names are given"
        )
    if len(set(classes)) != len(classes):
        raise InputError(f"class names repeat in {classes}")
    if not metadata:
        raise InputError("no metadata fields given; pass e.g. {'time': [...], 'camera': [...]}")
    for name, values in metadata.items():
        if len(values) != matrix.shape[0]:
            raise InputError(
                f"field {name!r} has {len(values)} values for {matrix.shape[0]} items; "
                "pass one value per item (None where unknown)"
            )
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise InputError(f"min_count must be a non-negative integer, got {min_count!r}")
    if not (math.isfinite(max_tv) and 0.0 < max_tv <= 1.0):
        raise InputError(f"max_tv must be in (0, 1], got {max_tv}")
    if count not in ("items", "values"):
        raise InputError(f"count must be 'items' or 'values', got {count!r}")
    amounts = (matrix > 0).astype(np.int64) if count == "items" else matrix
    options: dict[str, Any] = {
        "min_count": min_count,
        "max_tv": max_tv,
        "flag_missing": flag_missing,
        "unit": unit,
    }
    fields = tuple(
        _one_field(str(name), values, amounts, classes, **options)
        for name, values in metadata.items()
    )
    return StrataReport(
        classes=classes,
        n_items=int(matrix.shape[0]),
        fields=fields,
        absent_classes=tuple(
            c for c, t in zip(classes, amounts.sum(axis=0), strict=True) if t == 0
        ),
        min_count=min_count,
        max_tv=max_tv,
    )
