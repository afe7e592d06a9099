"""The planner's tables (sqlmodel). Every change here needs an Alembic revision (a test checks).

Times are stored as timezone-aware UTC on every backend (``UtcDateTime``). Label Studio ids are
kept as they are (``ls_task_id``); the planner's own ids are surrogate keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, LargeBinary, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from planner.core.finite import finite_json

TASK_STATES = ("unlabelled", "labelled", "skipped", "quarantined", "deleted")
BATCH_STATES = ("planned", "pushed", "active", "completed", "superseded", "expired")
ITEM_STATES = ("planned", "pushed", "active", "completed", "expired")


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite would otherwise hand back naive ones."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the store takes timezone-aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class FiniteJson(TypeDecorator[Any]):
    """JSON with NaN and inf stored as null (``finite_json``): PostgreSQL refuses them, and
    SQLite's copy, read back, never equals what was written."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return finite_json(value)


def now() -> datetime:
    return datetime.now(UTC)


def _time(**kwargs: Any) -> Any:
    return Field(sa_column=Column(UtcDateTime(), **kwargs))


def _json(**kwargs: Any) -> Any:
    return Field(sa_column=Column(FiniteJson(), **kwargs))


class Project(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    ls_project_id: int = Field(unique=True, index=True)
    title: str = ""
    label_config_hash: str = ""
    classes: list[str] = _json(nullable=False, default=list)
    label_kinds: list[str] = _json(nullable=False, default=list)
    """The kinds of the label config's controls (classification, detection, ...)."""
    created_at: datetime = _time(nullable=False, default=now)


class Task(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("project_id", "ls_task_id"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    ls_task_id: int = Field(index=True)
    image: str = ""
    meta: dict[str, Any] = _json(nullable=False, default=dict)
    split: str | None = None
    state: str = Field(default="unlabelled", index=True)
    labels: list[str] = _json(nullable=False, default=list)
    instances: dict[str, int] = _json(nullable=False, default=dict)
    pixels: dict[str, int] = _json(nullable=False, default=dict)
    annotation_ids: list[int] = _json(nullable=False, default=list)
    annotation_stamp: str = ""
    problem: str | None = None
    ls_updated_at: datetime | None = _time(nullable=True)
    labelled_at: datetime | None = _time(nullable=True)
    synced_at: datetime = _time(nullable=False, default=now)


class SyncState(SQLModel, table=True):
    project_id: int = Field(foreign_key="project.id", primary_key=True)
    watermark: datetime | None = _time(nullable=True)
    last_sync_at: datetime | None = _time(nullable=True)
    last_full_sync_at: datetime | None = _time(nullable=True)
    last_reconcile_at: datetime | None = _time(nullable=True)
    last_error: str | None = None
    config_warning: str | None = None
    """A setting to fix that leaves the syncs working (quotas naming no class of the label
    config); not a sync error, so no health check fails on it."""
    # The daemon's view of Label Studio (planner.health): state, since when, failed calls in a
    # row and the next try; None before the daemon has called it.
    ls_state: str | None = None
    ls_state_since: datetime | None = _time(nullable=True)
    ls_failures: int = 0
    ls_retry_at: datetime | None = _time(nullable=True)
    # The last scoring run (``planner.store.sync_state.ScoringRun``): when it ended, the model
    # version, what it could not do and the chunks it left unscored; None before the first.
    scored_at: datetime | None = _time(nullable=True)
    scoring_model_version: str | None = None
    scoring_warnings: list[str] = _json(nullable=False, default=list)
    scoring_failed_chunks: int = 0


class Batch(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("project_id", "number"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    number: int
    tag: str = Field(unique=True)
    state: str = "planned"
    summary: dict[str, Any] = _json(nullable=False, default=dict)
    view_id: int | None = None
    created_at: datetime = _time(nullable=False, default=now)
    pushed_at: datetime | None = _time(nullable=True)
    closed_at: datetime | None = _time(nullable=True)
    model_version: str | None = None
    """The model version whose scores the batch was planned from (None before 0007)."""


class BatchItem(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("batch_id", "ls_task_id"),)
    id: int | None = Field(default=None, primary_key=True)
    batch_id: int = Field(foreign_key="batch.id", index=True)
    ls_task_id: int = Field(index=True)
    rank: int
    reason: str
    reason_class: str | None = None
    score: float = 0.0
    state: str = "planned"
    found: list[str] = _json(nullable=False, default=list)


class ScoreRecord(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("project_id", "ls_task_id", "model_version"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    ls_task_id: int = Field(index=True)
    model_version: str = Field(index=True)
    n_classes: int = 0
    probs: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    dim: int = 0
    embedding: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    unscorable: str | None = None
    created_at: datetime = _time(nullable=False, default=now)
    bald: float | None = None
    """BALD from the worker's MC-dropout passes (normalised to [0, 1]); None without them."""
    image_digest: str | None = None
    """``scores.image_digest`` of the image reference the row was scored from; None: not
    known (rows from before revision 0008), taken for the task's image."""


class ArtifactRecord(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    version: str
    path: str
    checksum: str
    reason: str
    created_at: datetime = _time(nullable=False, default=now)


class StopEventRecord(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    rule: str
    fired: bool
    reason: str
    numbers: dict[str, Any] = _json(nullable=False, default=dict)
    at: datetime = _time(nullable=False, default=now)
    policy: str = ""
    """Fingerprint of the stop rules and quotas that fired; another policy re-arms the daemon."""


class ModelVersionRecord(SQLModel, table=True):
    """A model the workers scored with; ``source`` says where it came from (path, registry)."""

    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    version: str
    source: str = ""
    created_at: datetime = _time(nullable=False, default=now)
    macro_f1: float | None = None
    """Validation macro-F1 of this model, when a training job reported one."""


class Lease(SQLModel, table=True):
    """A leader lease: ``holder`` leads until ``expires_at`` unless it renews."""

    name: str = Field(primary_key=True)
    holder: str
    expires_at: datetime = _time(nullable=False)


class CountSnapshot(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    taken_at: datetime = _time(nullable=False, default=now)
    counts: dict[str, Any] = _json(nullable=False, default=dict)
    annotations: int = 0


class StopSetItem(SQLModel, table=True):
    """The fixed stop set: pool tasks every model version scores, for the stability rule."""

    __table_args__ = (UniqueConstraint("project_id", "ls_task_id"),)
    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    ls_task_id: int
    chosen_at: datetime = _time(nullable=False, default=now)


class QuarantineEntry(SQLModel, table=True):
    """A task held apart from counts, scoring and batches, with why and what to do.

    ``kind`` is ``data`` (its annotations cannot be read, or use labels the config lacks) or
    ``image`` (its image is missing, corrupt or refused). An entry is released (``released_at``)
    when a sync finds the task readable again or deleted; a new problem opens a new entry.
    """

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    ls_task_id: int = Field(index=True)
    kind: str
    problem: str
    fix: str
    image: str = ""
    """The image reference an ``image`` entry failed on; another one is tried again."""
    opened_at: datetime = _time(nullable=False, default=now)
    seen_at: datetime = _time(nullable=False, default=now)
    released_at: datetime | None = _time(nullable=True)
    released_why: str | None = None
