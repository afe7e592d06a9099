"""Stop rules: when to stop labelling. Each rule reads plain inputs and returns a ``StopEvent``.

    rule                fires when
    quota               every class has reached its target
    class_quota         (one event per class) the class has reached its target
    annotation_budget   annotations used >= the budget
    time_budget         days since the start >= the days budget (aware datetimes only)
    minority_yield      short-class hits / batch size < threshold in each of the last K batches
                        (``mode="all"``), or over the last K batches pooled (``mode="mean"``)
    class_yield         (one event per class) the same for one class's hits
    stable_predictions  Cohen's kappa between successive models' predictions on a fixed stop set
                        >= 0.99 for each of the last 3 pairs (``mode="all"``), or their mean
                        >= 0.99 (``mode="mean"``: Bloodgood & Vijay-Shanker 2009's own test)
    f1_plateau          the best macro-F1 of the last ``patience`` evaluations beat the best
                        before them by less than ``epsilon``
    pool_entropy        mean normalised entropy on the pool < 0.05 (Zhu et al.; off by default)

The stop policy that combines them is in ``planner.core.stop_policy``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from planner.core.agreement import successive_kappas
from planner.errors import InputError

__all__ = [
    "DEFAULT_RULES",
    "RULES",
    "RuleName",
    "StopEvent",
    "annotation_budget_spent",
    "f1_plateau",
    "minority_yield_low",
    "pool_entropy_low",
    "predictions_stable",
    "quota_met",
    "time_budget_spent",
]

RuleName = Literal[
    "quota",
    "class_quota",
    "annotation_budget",
    "time_budget",
    "minority_yield",
    "class_yield",
    "stable_predictions",
    "f1_plateau",
    "pool_entropy",
]
RULES: tuple[RuleName, ...] = get_args(RuleName)
DEFAULT_RULES: frozenset[RuleName] = frozenset(RULES) - {"pool_entropy"}


@dataclass(frozen=True, slots=True)
class StopEvent:
    """One rule's verdict: whether it fired, a sentence why, and the numbers behind it."""

    rule: str
    fired: bool
    reason: str
    numbers: Mapping[str, float]
    class_name: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "class": self.class_name,
            "fired": self.fired,
            "reason": self.reason,
            "numbers": dict(self.numbers),
        }


def _event(
    rule: str, fired: bool, reason: str, numbers: Mapping[str, float], name: str | None = None
) -> StopEvent:
    frozen = MappingProxyType({key: float(value) for key, value in numbers.items()})
    return StopEvent(rule=rule, fired=fired, reason=reason, numbers=frozen, class_name=name)


def _count(value: object, name: str, *, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < (1 if positive else 0):
        raise InputError(f"{name} must be {'positive' if positive else 'non-negative'}: {value}")
    return int(value)


def _number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise InputError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(value) or not low <= float(value) <= high:
        raise InputError(f"{name} must be finite and within [{low}, {high}], got {value}")
    return float(value)


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InputError(f"{name} must be a timezone-aware datetime, got {value!r}; add tzinfo")
    return value


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def quota_met(
    *,
    counts: Mapping[str, int] | None = None,
    targets: Mapping[str, int] | None = None,
    deficits: Mapping[str, int] | None = None,
) -> tuple[StopEvent, ...]:
    """The overall ``quota`` event, then one ``class_quota`` event per class.

    Give ``counts`` and ``targets`` (a class missing from ``counts`` has 0), or ``deficits``
    (items still needed; <= 0 is met). Classes are those of ``targets`` / ``deficits``.
    """
    if (deficits is None) == (targets is None):
        raise InputError("give either targets (with counts) or deficits, not both or neither")
    per_class: dict[str, dict[str, float]] = {}
    if targets is not None:
        have = dict(counts or {})
        for name, target in targets.items():
            count = _count(have.get(name, 0), f"count of {name!r}")
            goal = _count(target, f"target of {name!r}")
            per_class[name] = {"count": count, "target": goal, "deficit": max(0, goal - count)}
    else:
        for name, deficit in (deficits or {}).items():
            if isinstance(deficit, bool) or not isinstance(deficit, int | np.integer):
                raise InputError(f"deficit of {name!r} must be an integer, got {deficit!r}")
            per_class[name] = {"deficit": max(0, int(deficit))}
    events = [
        _event(
            "class_quota",
            numbers["deficit"] == 0,
            f"{name}: quota met"
            if numbers["deficit"] == 0
            else f"{name}: {int(numbers['deficit'])} more needed",
            numbers,
            name,
        )
        for name, numbers in per_class.items()
    ]
    short = {name: n["deficit"] for name, n in per_class.items() if n["deficit"] > 0}
    met = len(per_class) - len(short)
    if not per_class:
        reason = "no class has a quota"
    elif not short:
        reason = f"all {len(per_class)} class quotas met"
    else:
        worst = sorted(short.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        reason = f"{met} of {len(per_class)} class quotas met; short: " + ", ".join(
            f"{name} {int(need)}" for name, need in worst
        )
    overall = {"classes": len(per_class), "classes_met": met, "deficit": sum(short.values())}
    return (_event("quota", bool(per_class) and not short, reason, overall), *events)


def annotation_budget_spent(*, used: int, budget: int) -> StopEvent:
    """Fires when ``used >= budget`` annotations."""
    used = _count(used, "annotations used")
    budget = _count(budget, "annotation budget", positive=True)
    fired = used >= budget
    word = "spent" if fired else "not spent"
    return _event(
        "annotation_budget",
        fired,
        f"annotation budget {word}: {used} of {budget} used",
        {"used": used, "budget": budget, "left": max(0, budget - used)},
    )


def time_budget_spent(*, started_at: datetime, now: datetime, days: float) -> StopEvent:
    """Fires when at least ``days`` days have passed from ``started_at`` to ``now``."""
    elapsed = (_aware(now, "now") - _aware(started_at, "started_at")) / timedelta(days=1)
    days = _number(days, "days budget", 0.0, float("inf"))
    if days <= 0:
        raise InputError(f"days budget must be positive, got {days}")
    if elapsed < 0:
        raise InputError(f"now ({now.isoformat()}) is before the start ({started_at.isoformat()})")
    fired = elapsed >= days
    return _event(
        "time_budget",
        fired,
        f"time budget {'spent' if fired else 'not spent'}: {elapsed:.2f} of {days:g} days",
        {"elapsed_days": elapsed, "days": days, "days_left": max(0.0, days - elapsed)},
    )


def minority_yield_low(
    sizes: Sequence[int],
    hits: Sequence[int],
    *,
    window: int = 3,
    threshold: float = 0.05,
    mode: Literal["all", "mean"] = "all",
    class_name: str | None = None,
) -> StopEvent:
    """Fires when the yield ``hits / size`` of the last ``window`` batches is below ``threshold``.

    ``sizes``, ``hits``: per batch, oldest first, the items and how many held a short class (or
    ``class_name``). ``mode="all"``: each of those batches is below; ``"mean"``: their pooled
    yield (hits over items) is. Never fires before ``window`` batches exist.
    """
    window = _count(window, "yield window", positive=True)
    threshold = _number(threshold, "yield threshold", 0.0, 1.0)
    if mode not in ("all", "mean"):
        raise InputError(f"yield mode must be 'all' or 'mean', got {mode!r}")
    if len(sizes) != len(hits):
        raise InputError(f"{len(sizes)} batch sizes but {len(hits)} hit counts; give one each")
    for size, hit in zip(sizes, hits, strict=True):
        if _count(hit, "batch hits") > _count(size, "batch size", positive=True):
            raise InputError(f"a batch of {size} items cannot have {hit} hits")
    rule = "minority_yield" if class_name is None else "class_yield"
    what = "short-class yield" if class_name is None else f"{class_name} yield"
    numbers: dict[str, float] = {"batches": len(sizes), "window": window, "threshold": threshold}
    if len(sizes) < window:
        reason = f"{what}: {len(sizes)} batches so far, the rule needs {window}"
        return _event(rule, False, reason, numbers, class_name)
    size_arr = np.asarray(sizes[len(sizes) - window :], dtype=np.float64)
    hit_arr = np.asarray(hits[len(hits) - window :], dtype=np.float64)
    yields = hit_arr / size_arr
    pooled = float(hit_arr.sum() / size_arr.sum())
    numbers |= {f"yield_{i - window}": float(y) for i, y in enumerate(yields)}
    numbers["pooled_yield"] = pooled
    fired = bool(np.all(yields < threshold)) if mode == "all" else pooled < threshold
    shown = ", ".join(_pct(float(y)) for y in yields)
    if mode == "all":
        verdict = "each below" if fired else "not all below"
    else:
        verdict = f"pooled {_pct(pooled)}, {'below' if fired else 'not below'}"
    reason = f"{what} of the last {window} batches: {shown}; {verdict} {_pct(threshold)}"
    return _event(rule, fired, reason, numbers, class_name)


def predictions_stable(
    predictions: Sequence[npt.ArrayLike],
    *,
    threshold: float = 0.99,
    window: int = 3,
    mode: Literal["all", "mean"] = "all",
) -> StopEvent:
    """Fires when kappa >= ``threshold`` for each of the last ``window`` successive model pairs
    (``mode="all"``), or when their mean is (``"mean"``, the paper's test: one unsteady pair
    between steadier ones does not hold it back).

    ``predictions``: each model version's labels on the same stop set, oldest first; needs
    ``window + 1`` versions. ``f_bound`` = 4(1 - kappa)/kappa bounds the F difference of the
    pair with the lowest kappa.
    """
    threshold = _number(threshold, "kappa threshold", -1.0, 1.0)
    window = _count(window, "kappa window", positive=True)
    if mode not in ("all", "mean"):
        raise InputError(f"kappa mode must be 'all' or 'mean', got {mode!r}")
    numbers: dict[str, float] = {"versions": len(predictions), "window": window}
    numbers["threshold"] = threshold
    if len(predictions) < window + 1:
        reason = f"{len(predictions)} model versions so far, the rule needs {window + 1}"
        return _event("stable_predictions", False, reason, numbers)
    kappas = successive_kappas(predictions[len(predictions) - window - 1 :])
    numbers |= {f"kappa_{i - window}": float(k) for i, k in enumerate(kappas)}
    lowest, mean = float(kappas.min()), float(kappas.mean())
    numbers |= {"min_kappa": lowest, "mean_kappa": mean}
    if lowest > 0:
        numbers["f_bound"] = 4 * (1 - lowest) / lowest
    shown = ", ".join(f"{k:.4f}" for k in kappas)
    if mode == "all":
        fired = lowest >= threshold
        verdict = "all at or above" if fired else "not all at or above"
    else:
        fired = mean >= threshold
        verdict = f"mean {mean:.4f}, {'at or above' if fired else 'below'}"
    reason = f"kappa of the last {window} model pairs: {shown}; {verdict} {threshold:g}"
    return _event("stable_predictions", fired, reason, numbers)


def f1_plateau(history: Sequence[float], *, patience: int = 3, epsilon: float = 0.005) -> StopEvent:
    """Fires when max(last ``patience``) - max(earlier) < ``epsilon``; needs patience + 1 values.

    ``history``: validation macro-F1 per evaluation, oldest first, each in [0, 1].
    """
    patience = _count(patience, "f1 patience", positive=True)
    epsilon = _number(epsilon, "f1 epsilon", 0.0, 1.0)
    values = [_number(v, "macro-F1", 0.0, 1.0) for v in history]
    numbers: dict[str, float] = {"evaluations": len(values), "patience": patience}
    numbers["epsilon"] = epsilon
    if len(values) <= patience:
        reason = f"{len(values)} evaluations so far, the rule needs {patience + 1}"
        return _event("f1_plateau", False, reason, numbers)
    before, recent = max(values[:-patience]), max(values[-patience:])
    gain = recent - before
    numbers |= {"best_before": before, "best_recent": recent, "improvement": gain}
    fired = gain < epsilon
    reason = (
        f"best macro-F1 of the last {patience} evaluations {recent:.4f} vs {before:.4f} before: "
        f"{'gain' if gain >= 0 else 'loss'} {abs(gain):.4f}, {'below' if fired else 'at or above'}"
        f" {epsilon:g}"
    )
    return _event("f1_plateau", fired, reason, numbers)


def pool_entropy_low(entropies: npt.ArrayLike, *, threshold: float = 0.05) -> StopEvent:
    """Fires when the mean of ``entropies: (n,)`` (per pool item, normalised to [0, 1]) < threshold.

    An empty pool does not fire: there is nothing to average.
    """
    threshold = _number(threshold, "entropy threshold", 0.0, 1.0)
    values = np.asarray(entropies, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1 + 1e-9):
        raise InputError("normalised entropies must be finite and within [0, 1]; divide by log C")
    numbers: dict[str, float] = {"pool": values.size, "threshold": threshold}
    if values.size == 0:
        return _event("pool_entropy", False, "no pool item is scored", numbers)
    mean = float(values.mean())
    numbers["mean_entropy"] = mean
    fired = mean < threshold
    reason = f"mean normalised pool entropy {mean:.4f}, {'below' if fired else 'not below'}"
    return _event("pool_entropy", fired, f"{reason} {threshold:g}", numbers)
