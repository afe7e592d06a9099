"""Annotation batches and their items: planned → pushed → active → completed / expired.

A batch is planned; pushed once its predictions are in Label Studio (every older open batch is
then superseded: its unfinished items expire); active once a sync sees the project serve it
(``activate_served``: sampling on the batch's predictions, the view set by the push);
completed when all its items are done. An item completes when its task gets annotated and
expires when its task is deleted, when a newer batch supersedes it, or when its batch grows
older than the batch TTL (``expire_stale``, run by housekeeping). A planned batch expires
unpushed when none of its tasks is left in Label Studio, or when Label Studio refuses its push
for good (``finish_push``, ``expire``). Only the moves in
``ITEM_MOVES`` / ``BATCH_MOVES`` are allowed; anything else raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, func, select, update

from planner.errors import InputError
from planner.store.models import Batch, BatchItem, Project, Task

OPEN = ("planned", "pushed", "active")
ITEM_MOVES: dict[str, tuple[str, ...]] = {
    "planned": ("pushed", "expired"),
    "pushed": ("active", "completed", "expired"),
    "active": ("completed", "expired"),
    "completed": (),
    "expired": (),
}
BATCH_MOVES: dict[str, tuple[str, ...]] = {
    "planned": ("pushed", "superseded", "expired"),
    "pushed": ("active", "completed", "superseded", "expired"),
    "active": ("completed", "superseded", "expired"),
    "completed": (),
    "superseded": (),
    "expired": (),
}


@dataclass(frozen=True, slots=True)
class PlannedItem:
    ls_task_id: int
    rank: int
    reason: str
    reason_class: str | None = None
    score: float = 0.0


def _check(what: str, moves: dict[str, tuple[str, ...]], state: str, to: str) -> None:
    if to not in moves:
        raise InputError(f"{what}: unknown state {to!r}; states are {tuple(moves)}")
    allowed = moves.get(state, ())
    if to != state and to not in allowed:
        raise InputError(
            f"{what} cannot go from {state!r} to {to!r}; allowed: {allowed or 'none (final)'}"
        )


def move_item(item: BatchItem, to: str) -> None:
    """Change an item's state; an illegal step raises with the allowed ones."""
    _check(f"batch item of task {item.ls_task_id}", ITEM_MOVES, item.state, to)
    item.state = to


def move_batch(batch: Batch, to: str, *, at: datetime) -> None:
    """Change a batch's state (stamping ``pushed_at`` / ``closed_at``); illegal steps raise."""
    _check(f"batch {batch.number} of project {batch.project_id}", BATCH_MOVES, batch.state, to)
    if to == batch.state:
        return
    batch.state = to
    if to in ("pushed", "active") and batch.pushed_at is None:
        batch.pushed_at = at
    if to in ("completed", "superseded", "expired"):
        batch.closed_at = at


def create_batch(
    session: Session,
    project_id: int,
    items: Sequence[PlannedItem],
    summary: dict[str, object],
    *,
    at: datetime,
    model_version: str | None = None,
) -> Batch:
    """A new planned batch, numbered after the project's last one; ranks and tasks unique.
    ``model_version``: the scores it was planned from (pruning keeps them while it is open)."""
    ids = [i.ls_task_id for i in items]
    if len(set(ids)) != len(ids):
        raise InputError("a batch lists each task once; deduplicate the planned items")
    # The project's row, locked until the transaction ends (SQLite: the write lock), numbers
    # batches one writer at a time: two reading the last number together both took its next
    # one, and the second insert failed.
    session.execute(update(Project).where(col(Project.id) == project_id).values(id=col(Project.id)))
    last = session.exec(select(func.max(Batch.number)).where(Batch.project_id == project_id)).one()
    number = int(last or 0) + 1
    batch = Batch(
        project_id=project_id,
        number=number,
        tag=f"planner-p{project_id}-b{number:05d}",
        summary=summary,
        created_at=at,
        model_version=model_version,
    )
    session.add(batch)
    session.flush()
    batch_id = int(batch.id or 0)
    session.add_all(
        BatchItem(
            batch_id=batch_id,
            ls_task_id=item.ls_task_id,
            rank=item.rank,
            reason=item.reason,
            reason_class=item.reason_class,
            score=item.score,
        )
        for item in items
    )
    session.flush()
    return batch


def items_of(session: Session, batch_id: int) -> list[BatchItem]:
    """A batch's items in rank order."""
    query = select(BatchItem).where(BatchItem.batch_id == batch_id).order_by(col(BatchItem.rank))
    return list(session.exec(query).all())


def current_batch(session: Session, project_id: int) -> Batch | None:
    """The newest batch that is planned, pushed or active."""
    query = (
        select(Batch)
        .where(Batch.project_id == project_id, col(Batch.state).in_(OPEN))
        .order_by(col(Batch.number).desc())
    )
    return session.exec(query).first()


def active_batch(session: Session, project_id: int) -> Batch | None:
    """The batch now live in Label Studio (pushed or active), if any."""
    query = (
        select(Batch)
        .where(Batch.project_id == project_id, col(Batch.state).in_(("pushed", "active")))
        .order_by(col(Batch.number).desc())
    )
    return session.exec(query).first()


def move_items(session: Session, batch_id: int, to: str, ls_task_ids: Iterable[int]) -> int:
    """Move the named items of a batch (all must allow the step); how many changed."""
    wanted = set(ls_task_ids)
    changed = 0
    for item in items_of(session, batch_id):
        if item.ls_task_id in wanted and item.state != to:
            move_item(item, to)
            changed += 1
    return changed


def supersede(session: Session, batch: Batch, *, at: datetime) -> list[int]:
    """Close an open batch for a newer one; its unfinished items expire (their task ids)."""
    return _close(session, batch, "superseded", at=at)


def _close(session: Session, batch: Batch, to: str, *, at: datetime) -> list[int]:
    move_batch(batch, to, at=at)
    expired = []
    for item in items_of(session, int(batch.id or 0)):
        if item.state not in ("completed", "expired"):
            move_item(item, "expired")
            expired.append(item.ls_task_id)
    return expired


def mark_pushed(session: Session, batch: Batch, view_id: int | None, *, at: datetime) -> None:
    """The batch's predictions are in Label Studio; every older open batch is superseded.

    It becomes active when a sync sees the project serve it (``activate_served``).
    """
    older = session.exec(
        select(Batch).where(
            Batch.project_id == batch.project_id,
            Batch.number < batch.number,
            col(Batch.state).in_(OPEN),
        )
    ).all()
    for old in older:
        supersede(session, old, at=at)
    move_batch(batch, "pushed", at=at)
    batch.view_id = view_id
    for item in items_of(session, int(batch.id or 0)):
        if item.state == "planned":
            move_item(item, "pushed")


def finish_push(
    session: Session,
    batch: Batch,
    view_id: int | None,
    missing: Iterable[int],
    *,
    at: datetime,
) -> bool:
    """Record a planned batch's push: the items of the tasks Label Studio no longer had
    (``missing``) expire, and the batch is marked pushed, or expires unpushed when none of its
    tasks was left; whether it was pushed."""
    batch_id = int(batch.id or 0)
    move_items(session, batch_id, "expired", missing)
    if all(item.state == "expired" for item in items_of(session, batch_id)):
        expire(session, batch, at=at)
        return False
    mark_pushed(session, batch, view_id, at=at)
    return True


def expire(session: Session, batch: Batch, *, at: datetime) -> list[int]:
    """Close an open batch that will not be served; its unfinished items expire (their ids)."""
    expired = _close(session, batch, "expired", at=at)
    session.flush()
    return expired


def activate_served(
    session: Session, project_id: int, serving: str | None, *, at: datetime
) -> Batch | None:
    """The pushed batch whose tag the project now serves by becomes active (with its pushed
    items); that batch, or None when nothing changed."""
    if serving is None:
        return None
    batch = session.exec(
        select(Batch).where(
            Batch.project_id == project_id, Batch.tag == serving, Batch.state == "pushed"
        )
    ).first()
    if batch is None:
        return None
    move_batch(batch, "active", at=at)
    for item in items_of(session, int(batch.id or 0)):
        if item.state == "pushed":
            move_item(item, "active")
    session.flush()
    return batch


def expire_stale(
    session: Session, project_id: int, *, now: datetime, ttl: timedelta
) -> list[Batch]:
    """Open batches planned or pushed longer than ``ttl`` ago expire, and their open items."""
    open_batches = session.exec(
        select(Batch).where(Batch.project_id == project_id, col(Batch.state).in_(OPEN))
    ).all()
    stale = [b for b in open_batches if now - (b.pushed_at or b.created_at) >= ttl]
    for batch in stale:
        expire(session, batch, at=now)
    return stale


def completion_ratio(session: Session, batch_id: int) -> float:
    """The share of a batch's items that are completed (1.0 for an empty batch)."""
    states = list(session.exec(select(BatchItem.state).where(BatchItem.batch_id == batch_id)))
    return sum(s == "completed" for s in states) / len(states) if states else 1.0


def refresh_progress(session: Session, batch: Batch, *, at: datetime) -> float:
    """Items whose task got labelled (or annotated) complete, those whose task was deleted
    expire; the share done."""
    items = items_of(session, int(batch.id or 0))
    tasks = {
        t.ls_task_id: t
        for t in session.exec(
            select(Task).where(
                Task.project_id == batch.project_id,
                col(Task.ls_task_id).in_([i.ls_task_id for i in items]),
            )
        ).all()
    }
    for item in items:
        task = tasks.get(item.ls_task_id)
        if task is None or item.state in ("completed", "expired"):
            continue
        if task.state == "deleted":
            move_item(item, "expired")
        elif item.state != "planned" and (task.state != "unlabelled" or task.annotation_ids):
            move_item(item, "completed")
            item.found = list(task.labels)
    finished = all(i.state in ("completed", "expired") for i in items)
    if finished and batch.state in ("pushed", "active"):
        move_batch(batch, "completed", at=at)
    session.flush()
    return completion_ratio(session, int(batch.id or 0))
