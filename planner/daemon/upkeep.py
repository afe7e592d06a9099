"""Keeping the batches sound: finish a half-pushed batch.

Stale batches expire in the sync's reconciliation (``planner.store.batches.expire_stale``).

A batch row is committed (``planned``) before anything reaches Label Studio, and marked pushed
only after the push returned. A daemon killed in between leaves a ``planned`` batch whose
predictions may or may not be on the server and whose "Next batch" view may be stale. The
push is idempotent per batch tag (same predictions kept, missing ones created, the view
rewritten), so the fix is to push that same batch again before anything else: never a second
batch for the same cycle, never a duplicate prediction. A batch that cannot be pushed any more
(every task deleted, or a refusal other than Label Studio being down or rejecting the token)
expires instead, so it never holds up the sync.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from planner.daemon.pushing import Pushed, push_planned
from planner.ports import AnnotationBackend, PushBatch
from planner.store import Store
from planner.store.batches import items_of
from planner.store.models import Batch

log = logging.getLogger("planner.daemon")
DEFAULT_BATCH_MAX_AGE = timedelta(days=7)


def half_pushed(session: Session, project_id: int) -> Batch | None:
    """The newest batch that was planned but never marked pushed, if any."""
    query = (
        select(Batch)
        .where(Batch.project_id == project_id, Batch.state == "planned")
        .order_by(col(Batch.number).desc())
    )
    return session.exec(query).first()


def finish_half_pushed(
    store: Store, backend: AnnotationBackend, ls_project_id: int, project_id: int, *, at: datetime
) -> Pushed | None:
    """Push the half-pushed batch again (idempotent per tag) and record it (``push_planned``:
    tasks deleted meanwhile left out, a batch Label Studio refuses for good expired)."""
    with store.session() as session:
        batch = half_pushed(session, project_id)
        if batch is None:
            return None
        batch_id, tag = int(batch.id or 0), batch.tag
        ranked = [(i.ls_task_id, i.rank) for i in items_of(session, batch_id)]
    log.warning("batch %s of project %s was not fully pushed; pushing it again", tag, project_id)
    return push_planned(store, backend, ls_project_id, batch_id, PushBatch(tag, ranked), at=at)
