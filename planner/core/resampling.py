"""Single-label resampling plans: per-class effective counts for one epoch, oversampling capped.

Water-filling: every class gets ``effective_c = clip(L, low_c, high_c)`` for one level ``L`` chosen
so the effective counts sum to the target, where ``high_c = floor(n_c * max_oversample)`` (the cap)
and ``low_c`` is 0, or ``n_c`` when undersampling is forbidden. This is the plan closest to uniform
under the cap: two classes differ only where one sits at a bound. Counts are whole images, so
``L`` is found on the integers: every class gets ``clip(K, low, high)`` for the largest ``K`` that
does not overshoot, and the few images left go, one each, to the classes still free to grow, in
class order (largest remainder; ties broken by the order of ``classes``). The total is exactly the
target whenever ``sum(low) <= target <= sum(high)``.

Out of reach, the plan stops at the bound and says so (``reached`` false), never breaking it:
a target above ``sum(high)`` gives every class its cap (``shortfall`` images missing); with
undersampling forbidden, a target below ``sum(n)`` keeps every image once (``excess`` extra).
Empty classes get 0 effective images and multiplier 0, and are listed in ``empty``.

``multiplier_c = effective_c / n_c``: below 1 the class is undersampled. A training job realises
the plan by sampling image ``i`` with weight ``multiplier[y_i]`` (see ``planner.core.sampling``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from planner.core.weights import Floats, check_classes, check_counts
from planner.errors import InputError

Ints = npt.NDArray[np.int64]
DEFAULT_MAX_OVERSAMPLE = 5.0
_CAP_TOLERANCE = 1e-12
"""Relative slack in ``n * cap`` so that 10 images at 2.3x give 23, not 22 (2.3 is inexact)."""


@dataclass(frozen=True, slots=True)
class ResamplingPlan:
    """Per-class effective counts ``(C,)`` for one epoch and the multipliers that give them."""

    classes: tuple[str, ...]
    counts: Ints
    effective: Ints
    multipliers: Floats
    target: int
    max_oversample: float
    allow_undersample: bool
    empty: tuple[str, ...]
    """Classes with no images: effective 0, multiplier 0."""
    capped: tuple[str, ...]
    """Non-empty classes at the oversampling cap."""

    @property
    def total(self) -> int:
        return int(self.effective.sum())

    @property
    def reached(self) -> bool:
        """Whether the effective counts sum to the target exactly."""
        return self.total == self.target

    @property
    def shortfall(self) -> int:
        """Images missing from the target because every class is at its cap."""
        return max(0, self.target - self.total)

    @property
    def excess(self) -> int:
        """Images above the target because undersampling is forbidden."""
        return max(0, self.total - self.target)

    @property
    def dropped(self) -> tuple[str, ...]:
        """Classes that have images but none in this epoch (a target below the class count)."""
        return tuple(
            name
            for name, n, e in zip(self.classes, self.counts, self.effective, strict=True)
            if n > 0 and e == 0
        )

    @property
    def imbalance_before(self) -> float:
        """Largest over smallest count among the non-empty classes."""
        return _ratio(self.counts)

    @property
    def imbalance_after(self) -> float:
        """Largest over smallest effective count among the classes sampled at all."""
        return _ratio(self.effective)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{class: {"count", "effective", "multiplier"}}`` for JSON."""
        return {
            name: {"count": int(n), "effective": int(e), "multiplier": float(m)}
            for name, n, e, m in zip(
                self.classes, self.counts, self.effective, self.multipliers, strict=True
            )
        }

    def summary(self) -> dict[str, float | bool]:
        """Plan-level figures: target, total, reached, shortfall, excess, cap, imbalance."""
        return {
            "target": self.target,
            "total": self.total,
            "reached": self.reached,
            "shortfall": self.shortfall,
            "excess": self.excess,
            "max_oversample": self.max_oversample,
            "allow_undersample": self.allow_undersample,
            "imbalance_before": self.imbalance_before,
            "imbalance_after": self.imbalance_after,
        }


def resampling_plan(
    classes: Sequence[str],
    counts: npt.ArrayLike,
    *,
    target: int | None = None,
    max_oversample: float = DEFAULT_MAX_OVERSAMPLE,
    allow_undersample: bool = True,
) -> ResamplingPlan:
    """The closest-to-uniform plan for image ``counts: (C,)`` with ``target`` images per epoch.

    ``target`` defaults to ``sum(counts)`` (the epoch keeps its length). ``max_oversample`` caps
    every multiplier; ``allow_undersample=False`` keeps every image at least once.
    """
    names = check_classes(classes)
    n = _check_image_counts(names, counts)
    goal = int(n.sum()) if target is None else _check_target(target)
    if not (np.isfinite(max_oversample) and max_oversample >= 1.0):
        raise InputError(
            f"max_oversample must be a finite number >= 1 (1 means no oversampling), "
            f"got {max_oversample}"
        )
    if float(n.max()) * max_oversample > 2.0**62:
        raise InputError(
            f"max_oversample {max_oversample} times {int(n.max())} images is too large to plan"
        )
    high = np.floor(n * (max_oversample * (1.0 + _CAP_TOLERANCE))).astype(np.int64)
    high = np.maximum(high, n)
    low = np.zeros_like(n) if allow_undersample else n.copy()
    effective = _water_fill(low, high, goal)
    multipliers: Floats = np.where(n > 0, effective / np.maximum(n, 1), 0.0)
    return ResamplingPlan(
        classes=names,
        counts=n,
        effective=effective,
        multipliers=multipliers,
        target=goal,
        max_oversample=float(max_oversample),
        allow_undersample=allow_undersample,
        empty=tuple(name for name, count in zip(names, n, strict=True) if count == 0),
        capped=tuple(
            name
            for name, count, e, h in zip(names, n, effective, high, strict=True)
            if count > 0 and e == h
        ),
    )


def _water_fill(low: Ints, high: Ints, target: int) -> Ints:
    """Integer ``clip(K, low, high)`` plus one for the first free classes, summing to target."""
    if target >= int(high.sum()):
        return high.copy()
    if target <= int(low.sum()):
        return low.copy()
    # Largest K with sum(clip(K, low, high)) <= target; the sum is monotone in K.
    lo, hi = 0, int(high.max())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(np.clip(mid, low, high).sum()) <= target:
            lo = mid
        else:
            hi = mid
    effective: Ints = np.clip(lo, low, high).astype(np.int64)
    left = target - int(effective.sum())
    # Classes whose share grows from K to K + 1; there are more of them than images left.
    free = np.flatnonzero((low <= lo) & (lo < high))
    effective[free[:left]] += 1
    return effective


def _check_image_counts(names: tuple[str, ...], counts: npt.ArrayLike) -> Ints:
    values = check_counts(names, counts)
    if (values != np.round(values)).any():
        raise InputError(f"image counts must be whole numbers, got {values.tolist()}")
    if values.sum() == 0:
        raise InputError(f"every class {names} has 0 images: nothing to resample")
    if values.max() > 2**52:
        raise InputError(f"image counts {values.tolist()} are too large to plan exactly")
    out: Ints = values.astype(np.int64)
    return out


def _check_target(target: int) -> int:
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise InputError(f"target must be a whole number of images, got {target!r}")
    if target < 1:
        raise InputError(f"target must be at least 1 image per epoch, got {target}")
    return int(target)


def _ratio(values: Ints) -> float:
    positive = values[values > 0]
    return float(positive.max() / positive.min()) if positive.size else 0.0
