"""Synced tasks: what each Label Studio task resolved to, and the count table built from them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select
from sqlmodel import update as sql_update

from planner.core.counting import tabulate
from planner.core.table import UNKNOWN, CountTable
from planner.core.task_labels import TaskLabels
from planner.store.models import Task, now

_CHUNK = 1000  # ids per IN list


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One task as a sync saw it, resolved by the core."""

    ls_task_id: int
    image: str
    meta: Mapping[str, object]
    labels: TaskLabels
    annotation_ids: tuple[int, ...]
    annotation_stamp: str
    ls_updated_at: datetime


def tasks_by_ls_id(session: Session, project_id: int, ids: Iterable[int]) -> dict[int, Task]:
    wanted = list(ids)
    found: dict[int, Task] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        rows = session.exec(
            select(Task).where(Task.project_id == project_id, col(Task.ls_task_id).in_(chunk))
        ).all()
        found.update({row.ls_task_id: row for row in rows})
    return found


def apply_update(session: Session, project_id: int, row: Task | None, update: TaskUpdate) -> Task:
    """Insert or overwrite the task's resolved labels; its split is never changed here."""
    labels = update.labels
    if row is None:
        row = Task(project_id=project_id, ls_task_id=update.ls_task_id)
        session.add(row)
    was_labelled = row.state == "labelled"
    row.image = update.image
    row.meta = dict(update.meta)
    row.state = labels.status
    row.labels = list(labels.classes)  # unknown labels already appear as ``unknown``
    row.instances = dict(labels.instances)
    row.pixels = dict(labels.pixels)
    row.annotation_ids = list(update.annotation_ids)
    row.annotation_stamp = update.annotation_stamp
    row.problem = "; ".join(f"{p.what} - {p.fix}" for p in labels.problems) or None
    row.ls_updated_at = update.ls_updated_at
    row.synced_at = now()
    if labels.status == "labelled" and not was_labelled:
        row.labelled_at = row.synced_at
    return row


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """Label Studio ids of an upsert, by what happened to them."""

    new: tuple[int, ...]
    changed: tuple[int, ...]
    unchanged: tuple[int, ...]


def upsert_tasks(
    session: Session, project_id: int, updates: Sequence[TaskUpdate], *, force: bool = False
) -> UpsertResult:
    """Insert or update tasks by ``(project, ls_task_id)``.

    A stored task whose annotations (``annotation_stamp``), image and metadata are the same is
    left alone apart from ``ls_updated_at`` (Label Studio bumps it on prediction pushes);
    ``force`` rewrites every row (after a label-config change).
    """
    existing = tasks_by_ls_id(session, project_id, (u.ls_task_id for u in updates))
    new: list[int] = []
    changed: list[int] = []
    unchanged: list[int] = []
    for update in updates:
        row = existing.get(update.ls_task_id)
        same = (
            row is not None
            and row.state != "deleted"
            and row.annotation_stamp == update.annotation_stamp
            and row.image == update.image
            and row.meta == dict(update.meta)
        )
        if row is not None and same and not force:
            row.ls_updated_at = update.ls_updated_at
            unchanged.append(update.ls_task_id)
            continue
        existing[update.ls_task_id] = apply_update(session, project_id, row, update)
        (new if row is None else changed).append(update.ls_task_id)
    session.flush()
    return UpsertResult(tuple(new), tuple(changed), tuple(unchanged))


def mark_deleted(session: Session, project_id: int, alive: set[int]) -> list[int]:
    """Tasks no longer in Label Studio become ``deleted`` (kept, for the history); their ids,
    ascending."""
    stored = session.exec(
        select(Task.ls_task_id).where(Task.project_id == project_id, Task.state != "deleted")
    ).all()
    return _mark_deleted(session, project_id, [int(i) for i in stored if int(i) not in alive])


def mark_gone(session: Session, project_id: int, ids: Iterable[int]) -> list[int]:
    """The named tasks, which Label Studio said it no longer has, become ``deleted``."""
    wanted = sorted({int(i) for i in ids})
    gone: list[int] = []
    for start in range(0, len(wanted), _CHUNK):
        gone.extend(
            session.exec(
                select(Task.ls_task_id).where(
                    Task.project_id == project_id,
                    Task.state != "deleted",
                    col(Task.ls_task_id).in_(wanted[start : start + _CHUNK]),
                )
            ).all()
        )
    return _mark_deleted(session, project_id, gone)


def _mark_deleted(session: Session, project_id: int, gone: Iterable[int]) -> list[int]:
    """One UPDATE per chunk of ids, not a loaded row each (a reconciliation of a large project
    loaded every task); rows this session holds are updated too."""
    ids = sorted(gone)
    stamp = now()
    for start in range(0, len(ids), _CHUNK):
        session.execute(
            sql_update(Task)
            .where(
                col(Task.project_id) == project_id,
                col(Task.ls_task_id).in_(ids[start : start + _CHUNK]),
            )
            .values(state="deleted", synced_at=stamp)
            .execution_options(synchronize_session="fetch")
        )
    return ids


def tasks_in_state(session: Session, project_id: int, *states: str) -> list[Task]:
    query = select(Task).where(Task.project_id == project_id, col(Task.state).in_(states))
    return list(session.exec(query.order_by(col(Task.ls_task_id))).all())


def task_ids_in_state(session: Session, project_id: int, *states: str) -> list[int]:
    """Label Studio ids of the project's tasks in ``states``, ascending."""
    query = select(Task.ls_task_id).where(
        Task.project_id == project_id, col(Task.state).in_(states)
    )
    return [int(i) for i in session.exec(query.order_by(col(Task.ls_task_id)))]


def task_images(session: Session, project_id: int, *states: str) -> list[tuple[int, str]]:
    """``(Label Studio id, image reference)`` of the project's tasks in ``states``, ascending."""
    query = select(Task.ls_task_id, Task.image).where(
        Task.project_id == project_id, col(Task.state).in_(states)
    )
    return [(int(i), str(image)) for i, image in session.exec(query.order_by(col(Task.ls_task_id)))]


def labelled_ids(session: Session, project_id: int) -> list[int]:
    return task_ids_in_state(session, project_id, "labelled")


def unlabelled_ids(session: Session, project_id: int) -> list[int]:
    """Tasks a batch may pick: not labelled, not quarantined, not deleted."""
    return task_ids_in_state(session, project_id, "unlabelled")


def count_table(
    session: Session, project_id: int, classes: tuple[str, ...], splits: tuple[str, ...]
) -> CountTable:
    """The project's labelled tasks counted per split and class (``unknown`` last)."""
    rows = [r for r in tasks_in_state(session, project_id, "labelled") if r.split in splits]
    labels = [
        TaskLabels(
            r.ls_task_id,
            "labelled",
            "stored",
            classes=tuple(r.labels),
            instances=dict(r.instances),
            pixels=dict(r.pixels),
        )
        for r in rows
    ]
    split_of: dict[int | str, str] = {r.ls_task_id: str(r.split) for r in rows}
    names = (*classes, UNKNOWN)
    return tabulate(labels, split_of, classes=names, splits=splits)
