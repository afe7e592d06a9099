"""Stop rules over the store: gather what the core's rules read, decide, remember the stop.

After every sync the daemon evaluates every rule of ``planner.core.stop_policy`` on the store:
quotas (count table), annotation and calendar budgets (annotations on the tasks, the project's
first sync), the yield of the finished batches, Cohen's kappa between successive model versions
on the fixed stop set, and the validation macro-F1 of model versions when a training job
recorded one. A stop that fires is stored as one fired ``StopEventRecord`` per rule that
triggered it, under a fingerprint of the rules and quotas: the daemon stays stopped across
restarts, and a changed policy (a raised quota, a new budget) re-arms it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlmodel import Session, col, select

from planner.core.quotas import Quota, deficits
from planner.core.stop_policy import (
    DEFAULT_STOP_WHEN,
    StopConfig,
    StopDecision,
    StopState,
    evaluate_stop_rules,
)
from planner.core.stop_rules import StopEvent
from planner.core.table import CountTable
from planner.model_versions import model_of
from planner.settings import StopSettings
from planner.store.events import record_stop_event, stop_fired
from planner.store.models import ModelVersionRecord, Project
from planner.store.scores import load_scores
from planner.store.snapshots import annotations_used, batch_yields, yield_series


def stop_config(settings: StopSettings) -> StopConfig:
    """The core's stop policy for the ``[stop]`` settings: the default groups (quota, budgets,
    low yield together with stable predictions), the quota group only with ``when_quotas_met``."""
    groups = tuple(g for g in DEFAULT_STOP_WHEN if settings.when_quotas_met or g != {"quota"})
    return StopConfig(
        stop_when=groups,
        annotation_budget=settings.budget_annotations,
        days_budget=settings.budget_days,
        yield_window=settings.yield_window,
        yield_threshold=settings.min_yield,
        kappa_threshold=settings.kappa_threshold,
        kappa_window=settings.kappa_window,
        kappa_mode=settings.kappa_mode,
        yield_mode=settings.yield_mode,
    )


_ADDED_LATER: Mapping[str, object] = MappingProxyType({"kappa_mode": "all"})
"""StopConfig fields added after stops were first recorded, with the value that behaves as
before they existed."""


def policy_fingerprint(config: StopConfig, quotas: Sequence[Quota]) -> str:
    """A short hash of the stop policy and the quotas: a stop holds while they stay the same."""
    settings = asdict(config)
    for name, before in _ADDED_LATER.items():
        if settings[name] == before:
            # a setting added later, at the behaviour from before it: the same policy, the
            # same fingerprint (a stop recorded by an older planner still holds)
            del settings[name]
    plain = {
        "config": settings,
        "quotas": sorted((asdict(q) for q in quotas), key=lambda q: str(q["class_name"])),
    }
    text = json.dumps(plain, sort_keys=True, default=_sorted)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sorted(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value, key=str)
    return str(value)


def gather_state(
    session: Session,
    project: Project,
    table: CountTable,
    quotas: Sequence[Quota],
    *,
    now: datetime,
    stop_set: Sequence[int],
    kappa_window: int,
) -> StopState:
    """What the rules read, from the store (``table``: the project's current count table)."""
    project_id = int(project.id or 0)
    classes = tuple(project.classes)
    # No class check here: the report must come out even for a quota naming no class (it
    # shows 0); the daemon checks quotas against the schema before it gets here.
    status = deficits(quotas, table)
    sizes, hits, class_hits = yield_series(
        batch_yields(session, project_id), [q.class_name for q in quotas]
    )
    versions = _versions_oldest_first(session, project_id)
    return StopState(
        now=now,
        started_at=project.created_at,
        annotations_used=annotations_used(session, project_id),
        deficits={s.class_name: s.deficit for s in status.statuses},
        batch_sizes=sizes,
        batch_hits=hits,
        class_hits=class_hits,
        predictions=stop_set_predictions(
            session, project_id, versions, stop_set, needed=kappa_window + 1, width=len(classes)
        ),
        macro_f1=[float(v.macro_f1) for v in versions if v.macro_f1 is not None],
    )


def _versions_oldest_first(session: Session, project_id: int) -> list[ModelVersionRecord]:
    query = select(ModelVersionRecord).where(ModelVersionRecord.project_id == project_id)
    order = (col(ModelVersionRecord.created_at), col(ModelVersionRecord.id))
    return list(session.exec(query.order_by(*order)))


def stop_set_predictions(
    session: Session,
    project_id: int,
    versions: Sequence[ModelVersionRecord],
    stop_set: Sequence[int],
    *,
    needed: int,
    width: int,
) -> list[npt.NDArray[np.int64]]:
    """Argmax labels of the newest ``needed`` model versions that scored the stop set, oldest
    first, each on the stop-set tasks every one of them scored (so the vectors line up). A
    model scored again under other settings (``+64px``, ``+mc10``: :func:`model_of`) counts
    once, by its newest scores: a setting turned on is not a new model agreeing with the last."""
    if not stop_set:
        return []
    scored: list[dict[int, int]] = []
    last_model: str | None = None
    for version in reversed(versions):
        model = model_of(version.version)
        if model == last_model:
            continue
        scores = load_scores(
            session, project_id=project_id, model_version=version.version, task_ids=stop_set
        )
        if scores.task_ids.size and scores.probs.shape[1] == width:
            labels = np.argmax(scores.probs, axis=1)
            scored.append(dict(zip(scores.task_ids.tolist(), labels.tolist(), strict=True)))
            last_model = model
        if len(scored) == needed:
            break
    scored.reverse()
    common = sorted(set.intersection(*(set(s) for s in scored))) if scored else []
    if not common:
        return []
    return [np.array([s[t] for t in common], dtype=np.int64) for s in scored]


def record_stop(
    session: Session, project_id: int, decision: StopDecision, *, policy: str, at: datetime
) -> list[StopEvent]:
    """Store one fired event per rule that triggered ``decision``; the events stored."""
    triggering = [e for e in decision.fired if e.rule in decision.triggered_by]
    for event in triggering:
        record_stop_event(
            session,
            project_id=project_id,
            rule=event.rule,
            fired=True,
            reason=event.reason,
            numbers=dict(event.numbers),
            at=at,
            policy=policy,
        )
    return triggering


def stored_decision(session: Session, project_id: int, *, policy: str) -> StopDecision | None:
    """The stop recorded under ``policy``, rebuilt as the core's decision; None when none."""
    records = stop_fired(session, project_id, policy=policy)
    if not records:
        return None
    first = records[0].at
    fired = [r for r in records if r.at == first]
    events = tuple(
        StopEvent(
            rule=r.rule, fired=True, reason=r.reason, numbers=_numbers(r.numbers), class_name=None
        )
        for r in fired
    )
    rules = tuple(dict.fromkeys(e.rule for e in events))
    reason = f"stop ({' + '.join(rules)}): " + "; ".join(e.reason for e in events)
    return StopDecision(should_stop=True, events=events, triggered_by=rules, reason=reason)


def _numbers(raw: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in raw.items() if isinstance(v, int | float)}


def evaluate_and_record(
    session: Session,
    project: Project,
    table: CountTable,
    quotas: Sequence[Quota],
    config: StopConfig,
    *,
    stop_set: Sequence[int],
    now: datetime,
    policy: str | None = None,
) -> tuple[StopDecision, bool]:
    """Evaluate every rule; record the stop the first time it says stop under this policy
    (``policy``: a fingerprint of ``config`` and ``quotas`` unless given). The decision, and
    whether the project is stopped (now or before)."""
    project_id = int(project.id or 0)
    state = gather_state(
        session,
        project,
        table,
        quotas,
        now=now,
        stop_set=stop_set,
        kappa_window=config.kappa_window,
    )
    decision = evaluate_stop_rules(config, state)
    policy = policy or policy_fingerprint(config, quotas)
    already = stop_fired(session, project_id, policy=policy)
    if decision.should_stop and not already:
        record_stop(session, project_id, decision, policy=policy, at=now)
    return decision, decision.should_stop or bool(already)
