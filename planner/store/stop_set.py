"""The fixed stop set: pool tasks chosen once, scored by every model version.

The stable-predictions rule compares successive models on the same items (Bloodgood &
Vijay-Shanker 2009), so the set is drawn once (seeded, from the unlabelled pool) and kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
from sqlmodel import Session, col, select

from planner.errors import InputError
from planner.store.models import StopSetItem, Task

DEFAULT_SIZE = 200
IN_PLAY = ("unlabelled", "labelled")
"""Task states of the stop set's tasks the rule reads: a deleted, held-apart or skipped task's
old scores stay stored until newer models leave it out."""


def stop_set(session: Session, project_id: int) -> list[int]:
    """The stop set's Label Studio task ids, ascending (empty before it is chosen)."""
    query = select(StopSetItem.ls_task_id).where(StopSetItem.project_id == project_id)
    return [int(i) for i in session.exec(query.order_by(col(StopSetItem.ls_task_id)))]


def live_stop_set(session: Session, project_id: int) -> list[tuple[int, str]]:
    """The stop set's tasks still in play as ``(task id, image)``, ascending; only reads (empty
    before the set is drawn). The daemon scores and judges these, and the report shows them."""
    query = (
        select(Task.ls_task_id, Task.image)
        .join(
            StopSetItem,
            (col(StopSetItem.project_id) == col(Task.project_id))
            & (col(StopSetItem.ls_task_id) == col(Task.ls_task_id)),
        )
        .where(Task.project_id == project_id, col(Task.state).in_(IN_PLAY))
        .order_by(col(Task.ls_task_id))
    )
    return [(int(i), str(image)) for i, image in session.exec(query)]


def ensure_stop_set(
    session: Session,
    project_id: int,
    pool: Sequence[int],
    *,
    size: int = DEFAULT_SIZE,
    rng: np.random.Generator,
    at: datetime,
) -> list[int]:
    """The stored stop set, or ``size`` tasks drawn from ``pool`` now and stored."""
    if size <= 0:
        raise InputError(f"stop set size must be positive, got {size}")
    if at.tzinfo is None:
        raise InputError("stop set: 'at' must be timezone-aware (use datetime.now(UTC))")
    found = stop_set(session, project_id)
    if found or not pool:
        return found
    ids = np.array(sorted({int(i) for i in pool}), dtype=np.int64)
    chosen = sorted(int(i) for i in rng.choice(ids, size=min(size, ids.size), replace=False))
    session.add_all(StopSetItem(project_id=project_id, ls_task_id=i, chosen_at=at) for i in chosen)
    session.flush()
    return chosen
