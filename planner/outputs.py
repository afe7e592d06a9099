"""What the planner hands its users, built from the store: artifacts and the daily report.

Light on purpose: the daemon imports this module, so the report's rendering (matplotlib,
jinja2) is imported only when a report is written (``write_daily_report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlmodel import Session, select

from planner.artifacts import (
    EmitReason,
    TrainImages,
    WrittenArtifact,
    build_artifact,
    plan_training,
    write_artifact,
)
from planner.core.quotas import Quota
from planner.core.repeat_factors import Threshold
from planner.core.splits import training_split
from planner.core.stop_policy import StopConfig
from planner.core.table import UNKNOWN, CountKind, CountTable
from planner.core.weights import WeightScheme
from planner.daemon.stopping import stop_config, stored_decision
from planner.errors import ConfigError
from planner.params import quotas_from_settings
from planner.settings import Settings
from planner.store import Store
from planner.store.events import artifacts, record_artifact, stop_fired
from planner.store.models import Project, Task
from planner.store.tasks import count_table, tasks_in_state

SINGLE_LABEL_KINDS = frozenset({"classification"})


def project_row(session: Session, ls_project_id: int) -> Project:
    """The store's row of a Label Studio project; an error naming the fix before a sync."""
    found = session.exec(select(Project).where(Project.ls_project_id == ls_project_id)).first()
    if found is None:
        raise ConfigError(
            f"project {ls_project_id} has never been synced; run `planner sync` first"
        )
    return found


def _table(session: Session, project: Project, splits: Sequence[str]) -> CountTable:
    return count_table(session, int(project.id or 0), tuple(project.classes), tuple(splits))


def train_images(
    train: Sequence[Task], classes: Sequence[str], label_kinds: Sequence[str]
) -> TrainImages:
    """The training images as a job indexes them.

    Single-label data (only classification controls, at most one known class per image) gives
    ``labels``: the artifact then carries the per-class resampling plan and per-image weights
    ``multiplier[y_i]``; images with no known class are left out (no job can learn them).
    Multi-label and detection data gives ``presence`` (repeat factors).
    """
    known = [[name for name in t.labels if name in classes] for t in train]
    kinds = set(label_kinds)
    single = kinds <= SINGLE_LABEL_KINDS and all(len(names) <= 1 for names in known)
    if single:
        rows = [(t.ls_task_id, names[0]) for t, names in zip(train, known, strict=True) if names]
        return TrainImages(ids=tuple(i for i, _ in rows), labels=tuple(n for _, n in rows))
    presence = np.array(
        [[name in t.labels for name in classes] for t in train], dtype=bool
    ).reshape(len(train), len(classes))
    return TrainImages(ids=tuple(t.ls_task_id for t in train), presence=presence)


@dataclass(frozen=True, slots=True)
class EmitOptions:
    """Where and how artifacts are emitted (``planner emit``, the daemon when a stop rule
    fires): one object, so a new planning setting reaches every emit path at once."""

    folder: Path
    scheme: WeightScheme = "balanced"
    max_oversample: float = 5.0
    repeat_threshold: Threshold = "median"
    """The repeat factors' ``t``, multi-label and detection data (``planning.repeat_threshold``)."""
    count_kind: CountKind = "images"
    """What the class weights and priors count in the training split (``planning.count_kind``,
    as ``planner analyze`` and the quotas count)."""


def emit_artifacts(
    store: Store,
    ls_project_id: int,
    options: EmitOptions,
    *,
    splits: Sequence[str],
    reason: EmitReason,
    now: datetime,
) -> WrittenArtifact:
    """Weights, resampling plan and split assignment of the labelled tasks, written atomically
    under ``options.folder``."""
    with store.session() as session:
        project = project_row(session, ls_project_id)
        table = _table(session, project, splits)
        labelled = tasks_in_state(session, int(project.id or 0), "labelled")
        split = training_split(splits)
        train = [t for t in labelled if t.split == split]
        known = [name for name in table.classes if name != UNKNOWN]  # no job learns "unknown"
        assignment: dict[int | str, str] = {
            t.ls_task_id: str(t.split) for t in labelled if t.split is not None
        }
        images = train_images(train, known, project.label_kinds)
    plan = plan_training(
        table,
        images,
        train_split=split,
        count_kind=options.count_kind,
        scheme=options.scheme,
        max_oversample=options.max_oversample,
        repeat_threshold=options.repeat_threshold,
    )
    artifact = build_artifact(plan, table=table, splits=assignment, reason=reason, created_at=now)
    written = write_artifact(options.folder, artifact)
    with store.session() as session:
        record_artifact(
            session,
            project_id=int(project_row(session, ls_project_id).id or 0),
            version=written.version,
            path=str(written.path),
            checksum=written.checksum,
            reason=reason.detail,
            at=now,
        )
    return written


@dataclass(frozen=True, slots=True)
class ReportOptions:
    """What a daily report needs besides the store: plain values, built once from settings."""

    folder: Path
    quotas: tuple[Quota, ...]
    splits: tuple[str, ...]
    stop: StopConfig = field(default_factory=StopConfig)
    strata_fields: tuple[str, ...] = ()
    timezone: str = "UTC"
    count_kind: CountKind = "images"


def write_daily_report(
    store: Store, ls_project_id: int, options: ReportOptions, *, now: datetime
) -> Path:
    """The report at ``now`` as report.{json,md,html} under ``options.folder/<YYYY-MM-DD>/``
    (the day in ``options.timezone``); the folder written."""
    # imported here: rendering pulls in matplotlib, which the daemon process never keeps
    from planner.reports.from_store import report_from_store, write_report  # noqa: PLC0415

    with store.session() as session:
        report = report_from_store(session, ls_project_id, options, now=now)
    return write_report(report, options.folder, timezone=options.timezone)


def emit_pending(
    store: Store,
    ls_project_id: int,
    project_id: int,
    options: EmitOptions,
    *,
    splits: Sequence[str],
    policy: str,
    now: datetime,
) -> WrittenArtifact | None:
    """Emit the artifacts of the recorded stop unless that was done (a crash in between, a
    failed write: the next sync tries again); the version written, or None."""
    with store.session() as session:
        decision = stored_decision(session, project_id, policy=policy)
        if decision is None:
            return None
        first = stop_fired(session, project_id, policy=policy)[0].at
        done = any(
            a.created_at >= first and a.reason == decision.reason
            for a in artifacts(session, project_id)
        )
    if done:
        return None
    return emit_artifacts(
        store,
        ls_project_id,
        options,
        splits=tuple(splits),
        reason=EmitReason("stop_rule", decision.reason, decision),
        now=now,
    )


def emit_options(settings: Settings) -> EmitOptions:
    """The emit options from ``[artifacts]`` and ``[planning]``."""
    planning = settings.planning
    return EmitOptions(
        folder=settings.artifacts.dir,
        scheme=planning.weight_scheme,
        max_oversample=planning.max_oversample,
        repeat_threshold=planning.repeat_threshold,
        count_kind=planning.count_kind,
    )


def report_options(settings: Settings) -> ReportOptions:
    """The daily report's options from the settings (quotas, splits, stop rules, strata)."""
    planning = settings.planning
    return ReportOptions(
        folder=settings.dashboard.reports_dir,
        quotas=quotas_from_settings(settings),
        splits=tuple(planning.split_ratios),
        stop=stop_config(settings.stop),
        strata_fields=tuple(planning.strata_fields),
        timezone=settings.schedule.timezone,
        count_kind=planning.count_kind,
    )
