"""The findings of ``planner.core.strata.stratify``: skewed classes and (class, stratum) cells
below a minimum, each with a reason a lead can read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from planner.core.strata import FieldStrata

FlagKind = Literal["skewed", "low"]


@dataclass(frozen=True, slots=True)
class StrataFlag:
    """One finding for a lead: a skewed class in a field, or a (class, stratum) cell too small."""

    kind: FlagKind
    field: str
    class_name: str
    stratum: str
    """For ``skewed``, the stratum where the class falls furthest below the data set's share."""
    count: int
    expected: float
    """What the count would be if the class followed the data set's mix over this field."""
    total_variation: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "field": self.field,
            "class": self.class_name,
            "stratum": self.stratum,
            "count": self.count,
            "expected": self.expected,
            "total_variation": self.total_variation,
            "reason": self.reason,
        }


def skewed_flags(f: FieldStrata, *, max_tv: float, unit: str) -> list[StrataFlag]:
    """A flag per class whose total variation distance reaches ``max_tv``, worst first."""
    flags = []
    tv = f.total_variation
    for c in sorted(np.flatnonzero(tv >= max_tv), key=lambda c: (-tv[c], c)):  # worst first
        # where the class falls furthest short of the data set: the condition it is missing in
        s = int(np.argmax(f.overall - f.distribution[c]))
        total = int(f.counts[:, c].sum())
        flags.append(
            StrataFlag(
                kind="skewed",
                field=f.field,
                class_name=f.classes[c],
                stratum=f.strata[s],
                count=int(f.counts[s, c]),
                expected=float(total * f.overall[s]),
                total_variation=float(tv[c]),
                reason=(
                    f"{f.classes[c]} is spread over {f.field} unlike the data set (total "
                    f"variation {tv[c]:.2f}): {f.field}={f.strata[s]} holds "
                    f"{f.overall[s]:.0%} of all items but only {f.distribution[c, s]:.0%} "
                    f"of its {total} {unit}"
                ),
            )
        )
    return flags


def low_flags(f: FieldStrata, *, min_count: int, skip: str | None, unit: str) -> list[StrataFlag]:
    """A flag per (class present, stratum other than ``skip``) cell below ``min_count``."""
    totals = f.counts.sum(axis=0)
    cells = [
        (int(f.counts[s, c]), int(c), s)
        for c in np.flatnonzero(totals > 0)
        for s in range(len(f.strata))
        if f.counts[s, c] < min_count and f.strata[s] != skip
    ]
    flags = []
    for count, c, s in sorted(cells):  # smallest count first, then class and stratum order
        expected = float(totals[c] * f.overall[s])
        where = f"{f.field}={f.strata[s]}"
        note = f"; {where} has only {f.items[s]} items" if f.items[s] < min_count else ""
        flags.append(
            StrataFlag(
                kind="low",
                field=f.field,
                class_name=f.classes[c],
                stratum=f.strata[s],
                count=count,
                expected=expected,
                total_variation=float(f.total_variation[c]),
                reason=(
                    f"{f.classes[c]} at {where}: {count} {unit} (minimum {min_count}, "
                    f"{expected:.1f} expected from the overall {f.field} mix){note}"
                ),
            )
        )
    return flags
