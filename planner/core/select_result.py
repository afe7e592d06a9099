"""What :func:`planner.core.selection.select_batch` returns: ranked picks with their reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

PickReason = Literal["uncertain", "rare_class", "hard_negative", "exploration"]
REASONS: tuple[PickReason, ...] = ("rare_class", "uncertain", "hard_negative", "exploration")


@dataclass(frozen=True, slots=True)
class Pick:
    """One selected item. ``class_index``: the rare class X for ``rare_class`` and
    ``hard_negative``, the predicted class otherwise; ``probability`` is ``p`` of that class.
    ``gain`` = ``uncertainty + balance_gain``, its decrease of the objective when added."""

    id: int | str
    rank: int
    reason: PickReason
    class_index: int
    class_name: str
    probability: float
    uncertainty: float
    balance_gain: float
    gain: float
    row: int

    @property
    def reason_text(self) -> str:
        return {
            "uncertain": "uncertain",
            "rare_class": f"likely rare class {self.class_name}",
            "hard_negative": f"hard negative for {self.class_name}",
            "exploration": "exploration",
        }[self.reason]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rank": self.rank,
            "reason": self.reason,
            "why": self.reason_text,
            "class": self.class_name,
            "probability": self.probability,
            "uncertainty": self.uncertainty,
            "balance_gain": self.balance_gain,
            "gain": self.gain,
        }


@dataclass(frozen=True, slots=True)
class Batch:
    """A ranked batch and what it achieves on the objective ``-sum u + lambda ||P^T z - s||_1``."""

    picks: tuple[Pick, ...]
    classes: tuple[str, ...]
    requested: int
    eligible: int
    objective: float
    uncertainty_total: float
    balance_penalty: float
    balance_lambda: float
    shortfall: npt.NDArray[np.float64]
    """``(c,)`` the shortfall ``s`` the batch was asked to cover."""
    expected: npt.NDArray[np.float64]
    """``(c,)`` expected picks per class, ``P^T z``."""
    min_slots_unmet: npt.NDArray[np.int64]
    diversity_radius: float | None
    rejected_near_duplicates: int
    scored: int
    """Rows whose gain the greedy computed (the rest of the pool was bounded out)."""
    notes: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return len(self.picks) == self.requested

    @property
    def ids(self) -> list[int | str]:
        return [pick.id for pick in self.picks]

    def count(self, reason: PickReason) -> int:
        return sum(pick.reason == reason for pick in self.picks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "selected": len(self.picks),
            "eligible": self.eligible,
            "complete": self.complete,
            "reasons": {reason: self.count(reason) for reason in REASONS},
            "objective": self.objective,
            "uncertainty_total": self.uncertainty_total,
            "balance_penalty": self.balance_penalty,
            "balance_lambda": self.balance_lambda,
            "classes": {
                name: {
                    "shortfall": float(self.shortfall[c]),
                    "expected": float(self.expected[c]),
                    "min_slots_unmet": int(self.min_slots_unmet[c]),
                }
                for c, name in enumerate(self.classes)
            },
            "diversity_radius": self.diversity_radius,
            "rejected_near_duplicates": self.rejected_near_duplicates,
            "notes": list(self.notes),
            "picks": [pick.as_dict() for pick in self.picks],
        }
