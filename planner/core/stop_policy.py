"""The stop policy: which rules run, and which groups of fired rules stop labelling.

``evaluate_stop_rules`` stops when every rule of one group of ``StopConfig.stop_when`` fired
(a per-class rule counts as fired when any class's event did). The default groups: quota met,
or annotation budget spent, or time budget spent, or (minority yield low and predictions
stable). Rules outside every group are reported, not acted on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Literal

import numpy.typing as npt

from planner.core.stop_rules import (
    DEFAULT_RULES,
    RULES,
    RuleName,
    StopEvent,
    _aware,
    _count,
    _event,
    _number,
    annotation_budget_spent,
    f1_plateau,
    minority_yield_low,
    pool_entropy_low,
    predictions_stable,
    quota_met,
    time_budget_spent,
)
from planner.errors import InputError

__all__ = ["DEFAULT_STOP_WHEN", "StopConfig", "StopDecision", "StopState", "evaluate_stop_rules"]

DEFAULT_STOP_WHEN: tuple[frozenset[RuleName], ...] = (
    frozenset({"quota"}),
    frozenset({"annotation_budget"}),
    frozenset({"time_budget"}),
    frozenset({"minority_yield", "stable_predictions"}),
)


@dataclass(frozen=True, slots=True)
class StopConfig:
    """Which rules run, their parameters, and which groups of fired rules stop labelling.

    ``stop_when``: stop when every rule of any one group fired; each rule in it must be in
    ``rules``. A budget rule runs only when its budget is set.
    """

    rules: frozenset[RuleName] = DEFAULT_RULES
    stop_when: tuple[frozenset[RuleName], ...] = DEFAULT_STOP_WHEN
    annotation_budget: int | None = None
    days_budget: float | None = None
    yield_window: int = 3
    yield_threshold: float = 0.05
    yield_mode: Literal["all", "mean"] = "all"
    kappa_threshold: float = 0.99
    kappa_window: int = 3
    kappa_mode: Literal["all", "mean"] = "all"
    f1_patience: int = 3
    f1_epsilon: float = 0.005
    entropy_threshold: float = 0.05

    def __post_init__(self) -> None:
        for name in self.rules:
            if name not in RULES:
                raise InputError(f"unknown stop rule {name!r}; known: {', '.join(RULES)}")
        for group in self.stop_when:
            if not group:
                raise InputError("a stop_when group is empty; list at least one rule in it")
            off = sorted(set(group) - set(self.rules))
            if off:
                raise InputError(f"stop_when names rules {off} that are not enabled in rules")
        if self.annotation_budget is not None:
            _count(self.annotation_budget, "annotation budget", positive=True)
        if self.days_budget is not None and _number(self.days_budget, "days", 0, 1e9) <= 0:
            raise InputError(f"days budget must be positive, got {self.days_budget}")
        _count(self.yield_window, "yield window", positive=True)
        _number(self.yield_threshold, "yield threshold", 0.0, 1.0)
        if self.yield_mode not in ("all", "mean"):
            raise InputError(f"yield mode must be 'all' or 'mean', got {self.yield_mode!r}")
        _number(self.kappa_threshold, "kappa threshold", -1.0, 1.0)
        _count(self.kappa_window, "kappa window", positive=True)
        if self.kappa_mode not in ("all", "mean"):
            raise InputError(f"kappa mode must be 'all' or 'mean', got {self.kappa_mode!r}")
        _count(self.f1_patience, "f1 patience", positive=True)
        _number(self.f1_epsilon, "f1 epsilon", 0.0, 1.0)
        _number(self.entropy_threshold, "entropy threshold", 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class StopState:
    """What the rules read; a rule whose inputs are absent reports "not evaluated".

    ``batch_sizes`` / ``batch_hits``: per batch, oldest first (hits: items with a short class);
    ``class_hits``: class -> hits per batch; ``predictions``: each model version's labels on the
    stop set, oldest first; ``macro_f1``: validation macro-F1 per evaluation, oldest first;
    ``pool_entropies``: ``(n,)`` normalised entropy per pool item.
    """

    now: datetime | None = None
    started_at: datetime | None = None
    annotations_used: int | None = None
    counts: Mapping[str, int] | None = None
    targets: Mapping[str, int] | None = None
    deficits: Mapping[str, int] | None = None
    batch_sizes: Sequence[int] = ()
    batch_hits: Sequence[int] = ()
    class_hits: Mapping[str, Sequence[int]] | None = None
    predictions: Sequence[npt.ArrayLike] = ()
    macro_f1: Sequence[float] = ()
    pool_entropies: npt.ArrayLike | None = None

    def __post_init__(self) -> None:
        if self.now is not None:
            _aware(self.now, "now")
        if self.started_at is not None:
            _aware(self.started_at, "started_at")


@dataclass(frozen=True, slots=True)
class StopDecision:
    """Every event evaluated, whether to stop, and the rules that made it stop."""

    should_stop: bool
    events: tuple[StopEvent, ...]
    triggered_by: tuple[str, ...]
    reason: str

    @property
    def fired(self) -> tuple[StopEvent, ...]:
        return tuple(event for event in self.events if event.fired)

    def as_dict(self) -> dict[str, object]:
        return {
            "should_stop": self.should_stop,
            "reason": self.reason,
            "triggered_by": list(self.triggered_by),
            "fired": [
                e.rule if e.class_name is None else f"{e.rule}:{e.class_name}" for e in self.fired
            ],
            "events": [event.as_dict() for event in self.events],
        }


def _skipped(rule: str, why: str) -> tuple[StopEvent, ...]:
    return (_event(rule, False, f"not evaluated: {why}", {}),)


def _quota(config: StopConfig, state: StopState) -> tuple[StopEvent, ...]:
    if state.targets is None and state.deficits is None:
        rule = "quota" if "quota" in config.rules else "class_quota"
        return _skipped(rule, "no targets or deficits given")
    events = quota_met(counts=state.counts, targets=state.targets, deficits=state.deficits)
    return tuple(e for e in events if e.rule in config.rules)


def _annotations(config: StopConfig, state: StopState) -> tuple[StopEvent, ...]:
    if config.annotation_budget is None:
        return _skipped("annotation_budget", "no annotation budget configured")
    if state.annotations_used is None:
        return _skipped("annotation_budget", "annotations used not given")
    return (annotation_budget_spent(used=state.annotations_used, budget=config.annotation_budget),)


def _time(config: StopConfig, state: StopState) -> tuple[StopEvent, ...]:
    if config.days_budget is None:
        return _skipped("time_budget", "no days budget configured")
    if state.now is None or state.started_at is None:
        return _skipped("time_budget", "now and started_at are both needed")
    return (time_budget_spent(started_at=state.started_at, now=state.now, days=config.days_budget),)


def _yield(config: StopConfig, state: StopState) -> tuple[StopEvent, ...]:
    event = minority_yield_low(
        state.batch_sizes,
        state.batch_hits,
        window=config.yield_window,
        threshold=config.yield_threshold,
        mode=config.yield_mode,
    )
    return (event,)


def _class_yield(config: StopConfig, state: StopState) -> tuple[StopEvent, ...]:
    if not state.class_hits:
        return _skipped("class_yield", "no per-class hits given")
    return tuple(
        minority_yield_low(
            state.batch_sizes,
            hits,
            window=config.yield_window,
            threshold=config.yield_threshold,
            mode=config.yield_mode,
            class_name=name,
        )
        for name, hits in state.class_hits.items()
    )


def _stable(config: StopConfig, state: StopState) -> tuple[StopEvent, ...]:
    return (
        predictions_stable(
            state.predictions,
            threshold=config.kappa_threshold,
            window=config.kappa_window,
            mode=config.kappa_mode,
        ),
    )


def _plateau(config: StopConfig, state: StopState) -> tuple[StopEvent, ...]:
    return (f1_plateau(state.macro_f1, patience=config.f1_patience, epsilon=config.f1_epsilon),)


def _entropy(config: StopConfig, state: StopState) -> tuple[StopEvent, ...]:
    if state.pool_entropies is None:
        return _skipped("pool_entropy", "no pool entropies given")
    return (pool_entropy_low(state.pool_entropies, threshold=config.entropy_threshold),)


_EVALUATORS: Mapping[str, Callable[[StopConfig, StopState], tuple[StopEvent, ...]]] = (
    MappingProxyType(
        {
            "quota": _quota,
            "annotation_budget": _annotations,
            "time_budget": _time,
            "minority_yield": _yield,
            "class_yield": _class_yield,
            "stable_predictions": _stable,
            "f1_plateau": _plateau,
            "pool_entropy": _entropy,
        }
    )
)


def evaluate_stop_rules(config: StopConfig, state: StopState) -> StopDecision:
    """Runs every enabled rule on ``state`` and decides by ``config.stop_when``; see the module."""
    events: list[StopEvent] = []
    for rule, evaluate in _EVALUATORS.items():
        wanted = rule in config.rules or (rule == "quota" and "class_quota" in config.rules)
        if wanted:
            events.extend(evaluate(config, state))
    fired = {event.rule for event in events if event.fired}
    groups = [group for group in config.stop_when if group <= fired]
    triggered = tuple(rule for rule in RULES if any(rule in group for group in groups))
    if groups:
        why = "; ".join(e.reason for e in events if e.fired and e.rule in triggered)
        reason = f"stop ({' + '.join(triggered)}): {why}"
    else:
        reason = "continue: no stop group has all its rules fired"
    return StopDecision(
        should_stop=bool(groups), events=tuple(events), triggered_by=triggered, reason=reason
    )
