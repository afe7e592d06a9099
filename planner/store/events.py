"""The planner's history: stop-rule events, emitted artifacts, count snapshots, model versions.

Append-only records the reports read back (burn-up charts, labelling-rate ETA, "why did it
stop"). Every writer takes the moment ``at`` explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlmodel import Session, col, select

from planner.errors import InputError
from planner.store.models import ArtifactRecord, CountSnapshot, ModelVersionRecord, StopEventRecord


def _aware(at: datetime, what: str) -> datetime:
    if at.tzinfo is None:
        raise InputError(f"{what}: 'at' must be timezone-aware (use datetime.now(UTC))")
    return at


def record_stop_event(
    session: Session,
    *,
    project_id: int,
    rule: str,
    fired: bool,
    reason: str,
    numbers: Mapping[str, object],
    at: datetime,
    policy: str = "",
) -> StopEventRecord:
    """Note that a stop rule was evaluated (and whether it fired), with the numbers it saw;
    ``policy`` fingerprints the rules and quotas it was evaluated under."""
    record = StopEventRecord(
        project_id=project_id,
        rule=rule,
        fired=fired,
        reason=reason,
        numbers=dict(numbers),
        at=_aware(at, "stop event"),
        policy=policy,
    )
    session.add(record)
    session.flush()
    return record


def stop_events(
    session: Session, project_id: int, *, fired_only: bool = False, since: datetime | None = None
) -> list[StopEventRecord]:
    """Stop events of a project, oldest first."""
    query = select(StopEventRecord).where(StopEventRecord.project_id == project_id)
    if fired_only:
        query = query.where(col(StopEventRecord.fired).is_(True))
    if since is not None:
        query = query.where(StopEventRecord.at >= _aware(since, "since"))
    return list(session.exec(query.order_by(col(StopEventRecord.at), col(StopEventRecord.id))))


def stop_fired(session: Session, project_id: int, *, policy: str) -> list[StopEventRecord]:
    """The fired stop events recorded under ``policy`` (or before policies were recorded),
    oldest first: non-empty means the project stopped and stays stopped under that policy."""
    return [
        e for e in stop_events(session, project_id, fired_only=True) if e.policy in (policy, "")
    ]


def record_artifact(
    session: Session,
    *,
    project_id: int,
    version: str,
    path: str,
    checksum: str,
    reason: str,
    at: datetime,
) -> ArtifactRecord:
    """Note an emitted artifact (weights, resampling plan, report) and why it was emitted."""
    record = ArtifactRecord(
        project_id=project_id,
        version=version,
        path=path,
        checksum=checksum,
        reason=reason,
        created_at=_aware(at, "artifact"),
    )
    session.add(record)
    session.flush()
    return record


def artifacts(session: Session, project_id: int) -> list[ArtifactRecord]:
    """Artifacts of a project, newest first."""
    query = select(ArtifactRecord).where(ArtifactRecord.project_id == project_id)
    order = (col(ArtifactRecord.created_at).desc(), col(ArtifactRecord.id).desc())
    return list(session.exec(query.order_by(*order)))


def record_counts(
    session: Session,
    *,
    project_id: int,
    counts: Mapping[str, object],
    annotations: int,
    at: datetime,
) -> CountSnapshot:
    """Keep the count table as it was at ``at`` (JSON-able) and the annotation total."""
    snapshot = CountSnapshot(
        project_id=project_id,
        counts=dict(counts),
        annotations=annotations,
        taken_at=_aware(at, "count snapshot"),
    )
    session.add(snapshot)
    session.flush()
    return snapshot


def count_snapshots(
    session: Session, project_id: int, *, since: datetime | None = None
) -> list[CountSnapshot]:
    """Count snapshots of a project, oldest first (the x axis of a burn-up chart)."""
    query = select(CountSnapshot).where(CountSnapshot.project_id == project_id)
    if since is not None:
        query = query.where(CountSnapshot.taken_at >= _aware(since, "since"))
    order = (col(CountSnapshot.taken_at), col(CountSnapshot.id))
    return list(session.exec(query.order_by(*order)))


def record_model_version(
    session: Session,
    *,
    project_id: int,
    version: str,
    source: str,
    at: datetime,
    macro_f1: float | None = None,
) -> ModelVersionRecord:
    """The row for a model version, created on first use (a second call returns it);
    ``macro_f1``: a validation score a training job measured, kept when given."""
    if macro_f1 is not None and not 0.0 <= macro_f1 <= 1.0:
        raise InputError(f"macro-F1 of model {version!r} must be within [0, 1], got {macro_f1}")
    found = session.exec(
        select(ModelVersionRecord).where(
            ModelVersionRecord.project_id == project_id, ModelVersionRecord.version == version
        )
    ).first()
    if found is not None:
        if macro_f1 is not None:
            found.macro_f1 = macro_f1
        return found
    record = ModelVersionRecord(
        project_id=project_id,
        version=version,
        source=source,
        created_at=_aware(at, "model"),
        macro_f1=macro_f1,
    )
    session.add(record)
    session.flush()
    return record


def model_versions(session: Session, project_id: int) -> list[ModelVersionRecord]:
    """Model versions of a project, newest first."""
    query = select(ModelVersionRecord).where(ModelVersionRecord.project_id == project_id)
    order = (col(ModelVersionRecord.created_at).desc(), col(ModelVersionRecord.id).desc())
    return list(session.exec(query.order_by(*order)))
