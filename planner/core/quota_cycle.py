"""How many slots of the next annotation batch each rare class should get (seed 001: "plan
batches so each labeling cycle includes a minimum target per rare class").

Each class wants ``min(per-cycle minimum, deficit)`` slots: never more than it still lacks.
When the wants fit in the batch they are granted in full; otherwise the batch is shared in
proportion to them by the largest-remainder method, so the slots sum to the batch exactly and
no class gets more than it wants. Ties in remainder go to the higher priority, then the earlier
class. The rest of the batch (``leftover``) is the acquisition step's to fill freely.

The deficit is in the quota's own count kind; for instance or pixel quotas it only caps the
slots (an image brings at least one instance), which is what "never more than the deficit"
can mean there.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from planner.core.metrics import as_counts
from planner.core.quotas import QuotaStatus
from planner.errors import InputError


def cycle_targets(
    batch_size: int,
    minimums: npt.ArrayLike,
    deficits: npt.ArrayLike,
    *,
    priority: npt.ArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """Slots per class ``(C,)`` for one batch; ``minimums``, ``deficits``, ``priority``: ``(C,)``.

    ``sum(slots) <= batch_size`` and ``slots <= min(minimums, deficits)`` always hold.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, SupportsIndex) or batch_size < 0:
        raise InputError(f"batch_size must be a non-negative integer, got {batch_size!r}")
    batch_size = operator.index(batch_size)
    mins = as_counts(minimums, what="minimums")
    lacks = as_counts(deficits, what="deficits")
    if mins.shape != lacks.shape:
        raise InputError(f"minimums {mins.shape} and deficits {lacks.shape} differ in length")
    prio = np.zeros(mins.size) if priority is None else np.asarray(priority, dtype=np.float64)
    if prio.shape != mins.shape or not np.isfinite(prio).all():
        raise InputError(f"priority must be {mins.shape} finite numbers, got {prio.tolist()}")
    wants = [int(v) for v in np.minimum(mins, lacks)]
    total = sum(wants)
    if total <= batch_size:
        return np.asarray(wants, dtype=np.int64)
    # exact integer arithmetic: wants * batch can pass 2**63 for pixel-sized numbers
    floors = [w * batch_size // total for w in wants]
    remainders = [w * batch_size % total for w in wants]
    order = sorted(range(len(wants)), key=lambda c: (-remainders[c], -prio[c], c))
    for c in order[: batch_size - sum(floors)]:
        floors[c] += 1  # a positive remainder means floor < want, so this stays <= want
    return np.asarray(floors, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class CyclePlan:
    """Slots reserved for each class in one batch of ``batch_size`` items."""

    classes: tuple[str, ...]
    batch_size: int
    wanted: npt.NDArray[np.int64]
    """``(C,)`` ``min(per_cycle_min, deficit)``."""
    slots: npt.NDArray[np.int64]
    """``(C,)`` slots granted; equal to ``wanted`` unless ``scaled``."""
    scaled: bool
    """True when the wants exceeded the batch and were scaled down."""

    @property
    def leftover(self) -> int:
        """Slots not reserved for any class."""
        return self.batch_size - int(self.slots.sum())

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "scaled": self.scaled,
            "leftover": self.leftover,
            "classes": {
                c: {"wanted": int(w), "slots": int(s)}
                for c, w, s in zip(self.classes, self.wanted, self.slots, strict=True)
                if w > 0
            },
        }


def cycle_plan(status: QuotaStatus, *, batch_size: int) -> CyclePlan:
    """``cycle_targets`` for the table classes of ``status``, neediest first on ties."""
    minimums = np.zeros(len(status.classes), np.int64)
    lacks = np.zeros(len(status.classes), np.int64)
    for s in status.statuses:
        if s.in_table:
            c = status.classes.index(s.class_name)
            minimums[c] = s.quota.per_cycle_min
            lacks[c] = s.deficit
    slots = cycle_targets(batch_size, minimums, lacks, priority=status.need)
    batch_size = operator.index(batch_size)
    wanted = np.minimum(minimums, lacks)
    return CyclePlan(
        classes=status.classes,
        batch_size=batch_size,
        wanted=wanted,
        slots=slots,
        scaled=bool(wanted.sum() > batch_size),
    )
