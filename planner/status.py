"""What ``planner status`` and ``planner quotas`` show, from the store: each project's sync,
tasks, active batch and last scoring run; each class's count against its quota per split, with
its ETA."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlmodel import Session, col, func, select

from planner.health import BackendHealth, ScoringRun
from planner.quarantine import HeldTask, count_held_apart, held_apart
from planner.store import Store
from planner.store.batches import active_batch, completion_ratio
from planner.store.models import TASK_STATES, Project, SyncState, Task
from planner.store.sync_state import backend_health, last_scoring

if TYPE_CHECKING:
    from planner.reports.model import EtaRow, ReportData
    from planner.settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    ls_project_id: int
    title: str
    tasks: dict[str, int]
    last_sync_at: datetime | None
    last_error: str | None
    batch: str | None
    batch_done: float | None
    label_studio: BackendHealth | None = None
    """The daemon's view of Label Studio; None before a daemon has run."""
    held_apart: int = 0
    """Tasks held apart for bad data or a bad image (``planner.quarantine``)."""
    latest_held: tuple[HeldTask, ...] = ()
    """The newest of them, with what to do."""
    config_warning: str | None = None
    """A setting to fix that leaves the syncs working (quotas naming no class); not stale."""
    scoring: ScoringRun | None = None
    """The daemon's last scoring run, its warnings to look into; None before the first."""
    served: dict[str, int] = field(default_factory=dict)
    """Unlabelled tasks whose images Label Studio serves from a folder of its own, by folder
    (``local_files``, ``uploads``): a worker given the folder reads them from the disk."""

    def stale(self, now: datetime, allowed: timedelta) -> bool:
        """No successful sync within ``allowed``, or the last one failed."""
        return (
            self.last_error is not None
            or self.last_sync_at is None
            or now - self.last_sync_at > allowed
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "ls_project_id": self.ls_project_id,
            "title": self.title,
            "tasks": self.tasks,
            "last_sync_at": None if self.last_sync_at is None else self.last_sync_at.isoformat(),
            "last_error": self.last_error,
            "batch": self.batch,
            "batch_done": self.batch_done,
            "label_studio": None if self.label_studio is None else self.label_studio.as_dict(),
            "held_apart": self.held_apart,
            "latest_held": [h.as_dict() for h in self.latest_held],
            "config_warning": self.config_warning,
            "scoring": None if self.scoring is None else self.scoring.as_dict(),
            "served_by_label_studio": self.served,
        }

    def label_studio_line(self) -> str:
        """``ok`` or the fault, since when, and the next try (for tables and the dashboard)."""
        return health_line(self.label_studio)


def health_line(health: BackendHealth | None) -> str:
    """One line for a Label Studio state: ``unreachable since 06:31 UTC (3 failed, ...)``."""
    if health is None:
        return "unknown"
    if health.state == "ok":
        return "ok"
    since = "" if health.since is None else f" since {health.since:%Y-%m-%d %H:%M:%S} UTC"
    retry = "" if health.retry_at is None else f", next try {health.retry_at:%H:%M:%S}"
    return f"{health.state}{since} ({health.failures} failed{retry})"


LATEST_HELD = 5


@dataclass(frozen=True, slots=True)
class ServedFolder:
    """A folder Label Studio serves files of its own from: the references by which it serves
    them, what it holds, the ``workers`` setting that gives the workers the folder, and what to
    set that to."""

    prefix: str
    holds: str
    setting: str
    value: str


SERVED_FROM = {
    "local_files": ServedFolder(
        "/data/local-files/", "its local storage", "image_root", "the storage's document root"
    ),
    "uploads": ServedFolder(
        "/data/upload/", "the files uploaded into it", "upload_root", "its media/upload folder"
    ),
}


def served_hints(served: Mapping[str, int], workers: WorkerSettings) -> list[str]:
    """What to set so that the workers read a project's images from the disk: one line for
    each folder Label Studio serves ``served`` of the pool's images from (by ``SERVED_FROM``
    key) whose setting is unset."""
    hints = []
    for kind, count in served.items():
        folder = SERVED_FROM[kind]
        if count and getattr(workers, folder.setting) is None:
            hints.append(
                f"{count} unlabelled tasks' images are served by Label Studio from "
                f"{folder.holds}, some 16 core-ms of its CPU each (docs/benchmarks.md); set "
                f"workers.{folder.setting} to {folder.value} where the workers run to read "
                "them from the disk"
            )
    return hints


def served_lines(
    store: Store, workers: WorkerSettings, ls_project_id: int | None = None
) -> list[tuple[int, str]]:
    """``(Label Studio project id, hint)`` for each project in ``store``, or ``ls_project_id``
    alone, whose pool Label Studio serves from a folder the workers are not given (the
    dashboard's alerts; ``served_hints``)."""
    query = select(Project.ls_project_id, Project.id).order_by(col(Project.ls_project_id))
    if ls_project_id is not None:
        query = query.where(Project.ls_project_id == ls_project_id)
    with store.session() as session:
        rows = session.exec(query).all()
        served = [(pid, served_counts(session, int(key or 0))) for pid, key in rows]
    return [(pid, hint) for pid, counts in served for hint in served_hints(counts, workers)]


def served_counts(session: Session, project_id: int) -> dict[str, int]:
    """Each folder's count of the project's unlabelled tasks, in one pass over them."""
    image = col(Task.image)
    counts = [func.count().filter(image.startswith(f.prefix)) for f in SERVED_FROM.values()]
    query = select(*counts).where(Task.project_id == project_id, Task.state == "unlabelled")
    row = session.execute(query).one()
    return {kind: int(count) for kind, count in zip(SERVED_FROM, row, strict=True)}


def project_statuses(session: Session) -> list[ProjectStatus]:
    found = []
    for project in session.exec(select(Project).order_by(col(Project.ls_project_id))).all():
        pid = int(project.id or 0)
        states = Counter(session.exec(select(Task.state).where(Task.project_id == pid)).all())
        sync = session.get(SyncState, pid)
        batch = active_batch(session, pid)
        found.append(
            ProjectStatus(
                ls_project_id=project.ls_project_id,
                title=project.title,
                tasks={s: states.get(s, 0) for s in TASK_STATES},
                last_sync_at=None if sync is None else sync.last_sync_at,
                last_error=None if sync is None else sync.last_error,
                batch=None if batch is None else batch.tag,
                batch_done=None if batch is None else completion_ratio(session, int(batch.id or 0)),
                label_studio=backend_health(sync),
                held_apart=count_held_apart(session, pid),
                latest_held=tuple(held_apart(session, pid, limit=LATEST_HELD)),
                config_warning=None if sync is None else sync.config_warning,
                scoring=last_scoring(sync),
                served=served_counts(session, pid),
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class QuotaLine:
    """One class in one split (or ``total``) against its target, as the daily report has it;
    the ETA (per class) on its ``total`` line."""

    class_name: str
    split: str
    count: int
    target: int | None
    deficit: int | None
    eta: EtaRow | None

    @property
    def progress(self) -> float | None:
        """``1 - deficit / target`` (the core's progress; 1 for a zero target)."""
        if self.target is None or self.deficit is None:
            return None
        return 1.0 - self.deficit / self.target if self.target else 1.0

    def as_dict(self) -> dict[str, object]:
        eta = self.eta
        return {
            "class": self.class_name,
            "split": self.split,
            "count": self.count,
            "target": self.target,
            "deficit": self.deficit,
            "progress": self.progress,
            "eta": None
            if eta is None
            else {
                "state": eta.state,
                "rate_per_day": eta.rate_per_day,
                "days_remaining": eta.days_remaining,
                "completion": None if eta.completion is None else eta.completion.isoformat(),
            },
        }


def quota_lines(report: ReportData) -> list[QuotaLine]:
    """The daily report's quota rows joined with its ETA rows: one source for both."""
    etas = {row.class_name: row for row in report.eta}
    return [
        QuotaLine(
            class_name=row.class_name,
            split=row.split,
            count=row.count,
            target=row.target,
            deficit=row.deficit,
            # the report's per-class line is its "total" split (planner.reports.build.TOTAL)
            eta=etas.get(row.class_name) if row.split == "total" else None,
        )
        for row in report.quotas
    ]


def state_lines(store: Store) -> list[tuple[int, str]]:
    """``(Label Studio project id, state line)`` of each project in ``store`` (the dashboard)."""
    with store.session() as session:
        return [(p.ls_project_id, p.label_studio_line()) for p in project_statuses(session)]


def scoring_lines(store: Store, ls_project_id: int | None = None) -> list[tuple[int, str]]:
    """``(Label Studio project id, warning)`` of the last scoring run of each project in
    ``store``, or of ``ls_project_id`` alone (the dashboard's alerts)."""
    query = select(Project.ls_project_id, SyncState).join(
        SyncState, col(SyncState.project_id) == col(Project.id)
    )
    if ls_project_id is not None:
        query = query.where(Project.ls_project_id == ls_project_id)
    with store.session() as session:
        rows = session.exec(query.order_by(col(Project.ls_project_id))).all()
        runs = [(pid, last_scoring(sync)) for pid, sync in rows]
    return [
        (pid, f"{scoring_line(run)}: {warning}")
        for pid, run in runs
        if run is not None
        for warning in run.warnings
    ]


def scoring_line(run: ScoringRun) -> str:
    """``last scoring run 2026-12-07 06:31 UTC (model v3, 2 chunk(s) failed for good)``."""
    failed = f", {run.failed_chunks} chunk(s) failed for good" if run.failed_chunks else ""
    when = f"{run.at:%Y-%m-%d %H:%M} UTC"
    return f"last scoring run {when} (model {run.model_version or '-'}{failed})"
