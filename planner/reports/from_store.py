"""The daily report's inputs read from the planner's store, and the report written to disk.

Every number comes from the store: the count table of the labelled tasks, the count snapshots
(burn-up, ETA), the pushed batches and their items (yield), the stop rules evaluated exactly
as the daemon does (and the stop it recorded), the active batch's plan (what the next batch
targets and why), the labelled tasks' metadata (hidden imbalance by strata) and the last
scoring run the daemon recorded (its warnings).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from sqlmodel import Session

from planner.artifacts.writer import fix_for_write, replace_file
from planner.core.quota_eta import DEFAULT_WINDOW
from planner.core.quotas import known_quotas
from planner.core.stop_policy import StopDecision, evaluate_stop_rules
from planner.core.strata import StrataReport, stratify
from planner.core.table import UNKNOWN
from planner.daemon.stopping import gather_state, policy_fingerprint, stored_decision
from planner.errors import PlannerError
from planner.health import ScoringRun
from planner.outputs import ReportOptions, project_row
from planner.quarantine import held_apart
from planner.reports.build import build_report, next_from_summary
from planner.reports.model import BatchRecord, HeldApartRow, NextBatch, ReportData
from planner.reports.render import render_html, render_json, render_markdown
from planner.store.batches import active_batch
from planner.store.models import Project, SyncState, Task
from planner.store.snapshots import batch_yields, count_history
from planner.store.stop_set import live_stop_set
from planner.store.sync_state import last_scoring
from planner.store.tasks import count_table, tasks_in_state

REPORT_FILES = ("report.json", "report.md", "report.html")
BURNUP_HORIZON = timedelta(days=365)
"""How far back the burn-up reaches: a row a day, so a year of them at most."""


class ReportWriteError(PlannerError):
    """The report's folder cannot be written (not a folder, not writable, disk full); the
    message names ``dashboard.reports_dir`` and what to do, the ``OSError`` is its cause."""


def report_from_store(
    session: Session, ls_project_id: int, options: ReportOptions, *, now: datetime
) -> ReportData:
    """The report of the project at ``now`` (aware), every section from the store."""
    project = project_row(session, ls_project_id)
    pid = int(project.id or 0)
    classes = (*project.classes, UNKNOWN)
    table = count_table(session, pid, tuple(project.classes), options.splits)
    batches = [
        BatchRecord(y.tag, y.pushed_at, y.size, y.hits, dict(y.class_hits), labelled=y.labelled)
        for y in batch_yields(session, pid)
    ]
    return build_report(
        project=project.title or f"project {ls_project_id}",
        now=now,
        table=table,
        quotas=options.quotas,  # a quota for a missing class shows as 0 of its target
        snapshots=count_history(
            session,
            pid,
            classes,
            options.splits,
            since=now - BURNUP_HORIZON,
            every_since=now - DEFAULT_WINDOW,  # the ETA's window: its rate reads every one
            zone=ZoneInfo(options.timezone),
        ),
        timezone=options.timezone,
        batches=batches,
        stop=_stop(session, project, options, now=now),
        next_batch=_next_batch(session, pid),
        strata=_strata(session, pid, tuple(project.classes), options.strata_fields),
        imbalance_kind=options.count_kind,
        held_apart=[
            HeldApartRow(h.task_id, h.kind, h.problem, h.fix, h.since)
            for h in held_apart(session, pid)
        ],
        scoring=_scoring(session, pid),
    )


def _stop(
    session: Session, project: Project, options: ReportOptions, *, now: datetime
) -> StopDecision:
    pid = int(project.id or 0)
    table = count_table(session, pid, tuple(project.classes), options.splits)
    state = gather_state(
        session,
        project,
        table,
        # the stop rules evaluated as the daemon evaluates them: on the quotas of known
        # classes (the policy is still every configured quota's)
        known_quotas(options.quotas, project.classes),
        now=now,
        stop_set=[task_id for task_id, _ in live_stop_set(session, pid)],  # the daemon's
        kappa_window=options.stop.kappa_window,
    )
    current = evaluate_stop_rules(options.stop, state)
    policy = policy_fingerprint(options.stop, options.quotas)
    stopped = stored_decision(session, pid, policy=policy)
    if stopped is None:
        return current
    return StopDecision(
        should_stop=True,
        events=current.events,
        triggered_by=stopped.triggered_by,
        reason=f"stopped: {stopped.reason}",
    )


def _scoring(session: Session, project_id: int) -> ScoringRun | None:
    return last_scoring(session.get(SyncState, project_id))


def _next_batch(session: Session, project_id: int) -> NextBatch | None:
    batch = active_batch(session, project_id)
    return None if batch is None else next_from_summary(batch.summary)


def _strata(
    session: Session, project_id: int, classes: tuple[str, ...], fields: Sequence[str]
) -> StrataReport | None:
    labelled: list[Task] = tasks_in_state(session, project_id, "labelled")
    if not fields or not labelled or not classes:
        return None
    membership = np.array([[c in t.labels for c in classes] for t in labelled], dtype=bool)
    metadata = {name: [t.meta.get(name) for t in labelled] for name in fields}
    return stratify(membership, classes, metadata)


def write_report(report: ReportData, folder: Path, *, timezone: str = "UTC") -> Path:
    """``report.{json,md,html}`` of ``report`` under ``folder/<day in timezone>/``, each file
    replaced atomically (a reader never sees half a report)."""
    day = folder / f"{report.generated_at.astimezone(ZoneInfo(timezone)):%Y-%m-%d}"
    # every format rendered before any is written: a day never holds some of them
    texts = [render(report) for render in (render_json, render_markdown, render_html)]
    try:
        day.mkdir(parents=True, exist_ok=True)
        for name, text in zip(REPORT_FILES, texts, strict=True):
            replace_file(day / name, text.encode("utf-8"))  # a reader never sees half a report
    except OSError as exc:
        raise ReportWriteError(
            f"writing the report into {day} failed ({exc.strerror or exc}). "
            f"{fix_for_write(exc, 'dashboard.reports_dir')} and report again"
        ) from exc
    return day
