"""How far the sync has read: the watermark and when it last listed everything; the daemon's
view of Label Studio and the outcome of its last scoring run."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from planner.errors import InputError
from planner.health import BackendHealth, ScoringRun
from planner.store.db import insert_missing
from planner.store.models import SyncState


def sync_state(session: Session, project_id: int) -> SyncState:
    """The project's sync row, created empty (no watermark: the next sync reads all)."""
    found = session.get(SyncState, project_id)
    if found is None:
        insert_missing(session, SyncState(project_id=project_id), "project_id")
        found = session.get_one(SyncState, project_id)
    return found


def get_watermark(session: Session, project_id: int) -> datetime | None:
    """The newest Label Studio ``updated_at`` a sync has stored, or None before the first."""
    found = session.get(SyncState, project_id)
    return None if found is None else found.watermark


def set_watermark(
    session: Session, project_id: int, watermark: datetime | None, *, at: datetime
) -> SyncState:
    """Move the watermark (None forces a full sync) and note when the sync ran."""
    if at.tzinfo is None or (watermark is not None and watermark.tzinfo is None):
        raise InputError("watermark and 'at' must be timezone-aware datetimes")
    state = sync_state(session, project_id)
    state.watermark, state.last_sync_at, state.last_error = watermark, at, None
    return state


def record_sync_error(session: Session, project_id: int, error: str) -> SyncState:
    """Keep the last sync failure for the dashboard; the watermark stays where it was."""
    state = sync_state(session, project_id)
    state.last_error = error
    return state


def record_backend_health(session: Session, project_id: int, health: BackendHealth) -> SyncState:
    """Keep the daemon's Label Studio state for ``planner status`` and the dashboard; a fault
    also becomes the last sync error."""
    state = sync_state(session, project_id)
    state.ls_state, state.ls_state_since = health.state, health.since
    state.ls_failures, state.ls_retry_at = health.failures, health.retry_at
    if health.state != "ok":
        state.last_error = health.last_error
    return state


def backend_health(state: SyncState | None) -> BackendHealth | None:
    """The stored Label Studio state, None before a daemon recorded one."""
    if state is None or state.ls_state is None:
        return None
    return BackendHealth(
        state=state.ls_state,  # type: ignore[arg-type]  # written from BackendState only
        since=state.ls_state_since,
        last_error=state.last_error,
        failures=state.ls_failures,
        retry_at=state.ls_retry_at,
    )


def record_scoring(session: Session, project_id: int, run: ScoringRun) -> SyncState:
    """Keep the last scoring run for ``planner status``, the report and the dashboard; it
    replaces the one before (a run without warnings clears theirs)."""
    if run.at.tzinfo is None:
        raise InputError("the scoring run's time must be a timezone-aware datetime")
    state = sync_state(session, project_id)
    state.scored_at, state.scoring_model_version = run.at, run.model_version
    state.scoring_warnings, state.scoring_failed_chunks = list(run.warnings), run.failed_chunks
    return state


def last_scoring(state: SyncState | None) -> ScoringRun | None:
    """The stored last scoring run, None before a daemon recorded one."""
    if state is None or state.scored_at is None:
        return None
    return ScoringRun(
        at=state.scored_at,
        model_version=state.scoring_model_version,
        warnings=tuple(state.scoring_warnings),
        failed_chunks=state.scoring_failed_chunks,
    )
