"""Tasks held apart: bad data or a bad image keeps a task out of counts, scoring and batches.

A sync holds a labelled task apart when any of its annotations could not be read in full (a
region with a missing value, wrong types, an oversized brush mask) or uses a label the label
config lacks (an unknown label, a result for a ``from_name`` the config has no control for, a
class removed or renamed under the planner): counting the rest would count it wrong. The
workers record a task whose image is missing, corrupt or on a refused host as unscorable.
``refresh`` keeps the ``QuarantineEntry`` table in step with both after every sync: a new
problem opens an entry (task id, problem, what to do), a task readable again, deleted, or given
another image is released. A task with a new image loses its unscorable marks, so the next
cycle scores it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from planner.core.labels import LabelSchema
from planner.core.regions import problem
from planner.core.task_labels import TaskLabels
from planner.store.models import QuarantineEntry, ScoreRecord, Task
from planner.store.tasks import tasks_by_ls_id, tasks_in_state

DATA, IMAGE = "data", "image"
LABEL_TYPES = frozenset(
    {"choices", "labels", "rectanglelabels", "polygonlabels", "brushlabels", "ellipselabels"}
    | {"keypointlabels"}
)
"""Result types that carry labels (the others, text areas, ratings, relations, count none)."""
_UNREADABLE = frozenset({"task", "annotation", "region"})
FIX = {
    DATA: "open the task in Label Studio and fix what the problem names (or add the label to "
    "the label config); the next sync releases it",
    IMAGE: "make the image readable (upload it again, or allow its host in "
    "workers.allowed_hosts) and point the task's data at it in Label Studio; the next sync "
    "releases it and the next cycle scores it",
}
MODEL_OUTPUT_NOT_FINITE = "the model's output holds NaN or inf"
"""The unscorable reason of an image the model, not the file, failed (workers write it)."""
MODEL_FIX = (
    "the image is fine; the model returned NaN or inf for it (a normalisation dividing by "
    "a constant image's zero spread, say): fix the model; its next version scores it again"
)


def _fix(kind: str, problem: str) -> str:
    if kind == IMAGE and problem.startswith(MODEL_OUTPUT_NOT_FINITE):
        return MODEL_FIX
    return FIX[kind]


def hold_apart(labels: TaskLabels, task: Mapping[str, Any], schema: LabelSchema) -> TaskLabels:
    """``labels`` quarantined when a labelled task's annotations were not read in full, use
    labels the config lacks, or hold results of a control the config does not have."""
    if labels.status != "labelled":
        return labels
    unreadable = [p for p in labels.problems if p.left_out in _UNREADABLE]
    # the core matches such a result against every control; the daemon does not guess
    foreign = [
        problem(
            labels.task_id,
            f"a {kind} result of {name!r}, a control the label config does not have",
            "task",
        )
        for kind, name in _foreign_results(task, schema)
    ]
    foreign = [
        replace(p, fix="add the control to the label config, or delete the result") for p in foreign
    ]
    if not unreadable and not labels.unknown and not foreign:
        return labels
    unknown = [
        problem(
            labels.task_id,
            f"label {u.label!r} of {u.control!r} is not in the label config",
            "task",
            annotation_id=u.annotation_id,
            region_id=u.region_id,
        )
        for u in labels.unknown
    ]
    fix = "add the label to the label config, or relabel the region in Label Studio"
    unknown = [replace(p, fix=fix) for p in unknown]
    reason = "unknown_labels" if unknown or foreign else "unreadable_regions"
    problems = (*labels.problems, *unknown, *foreign)
    return TaskLabels(labels.task_id, "quarantined", reason, problems=problems)


def _foreign_results(task: Mapping[str, Any], schema: LabelSchema) -> list[tuple[str, str]]:
    """``(type, from_name)`` of label results whose control the config lacks, once each."""
    found: dict[tuple[str, str], None] = {}
    for annotation in task.get("annotations") or []:
        if not isinstance(annotation, Mapping) or annotation.get("was_cancelled"):
            continue
        result = annotation.get("result")
        for item in result if isinstance(result, list) else []:
            if not isinstance(item, Mapping):
                continue
            kind, name = str(item.get("type", "")).lower(), str(item.get("from_name", ""))
            if kind in LABEL_TYPES and schema.control(name) is None:
                found[(kind, name)] = None
    return list(found)


@dataclass(frozen=True, slots=True)
class HeldTask:
    """One task held apart, as ``status`` and the daily report show it."""

    task_id: int
    kind: str
    problem: str
    fix: str
    since: datetime

    def as_dict(self) -> dict[str, object]:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "problem": self.problem,
            "fix": self.fix,
            "since": self.since.isoformat(),
        }


def held_apart(session: Session, project_id: int, *, limit: int | None = None) -> list[HeldTask]:
    """The open entries of the project, newest first."""
    query = (
        select(QuarantineEntry)
        .where(QuarantineEntry.project_id == project_id, col(QuarantineEntry.released_at).is_(None))
        .order_by(col(QuarantineEntry.opened_at).desc(), col(QuarantineEntry.ls_task_id))
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        HeldTask(e.ls_task_id, e.kind, e.problem, e.fix, e.opened_at)
        for e in session.exec(query).all()
    ]


def count_held_apart(session: Session, project_id: int) -> int:
    """How many of the project's tasks are held apart now."""
    query = select(func.count()).where(
        QuarantineEntry.project_id == project_id, col(QuarantineEntry.released_at).is_(None)
    )
    return int(session.exec(query).one())


@dataclass(frozen=True, slots=True)
class QuarantineChange:
    """What one refresh did: task ids newly held apart and released."""

    opened: tuple[int, ...]
    released: tuple[int, ...]


def refresh(session: Session, project_id: int, *, now: datetime) -> QuarantineChange:
    """Bring the project's entries in step with its tasks and unscorable marks."""
    open_entries = session.exec(
        select(QuarantineEntry).where(
            QuarantineEntry.project_id == project_id, col(QuarantineEntry.released_at).is_(None)
        )
    ).all()
    unscorable = _unscorable(session, project_id)
    # only the tasks concerned are read: a sync must not load the whole project for this
    tasks = {t.ls_task_id: t for t in tasks_in_state(session, project_id, "quarantined")}
    wanted_ids = {e.ls_task_id for e in open_entries} | set(unscorable)
    tasks |= tasks_by_ls_id(session, project_id, wanted_ids - set(tasks))
    current: dict[tuple[int, str], QuarantineEntry] = {}
    released: list[int] = []
    for entry in open_entries:
        task = tasks.get(entry.ls_task_id)
        why = _release_why(entry, task)
        if why is None:
            current[(entry.ls_task_id, entry.kind)] = entry
            continue
        entry.released_at, entry.released_why = now, why
        released.append(entry.ls_task_id)
        if why.startswith("another image"):
            _forget_unscorable(session, project_id, entry.ls_task_id)
            unscorable.pop(entry.ls_task_id, None)
    wanted = {
        (t.ls_task_id, DATA): (t.problem or "unreadable", "")
        for t in tasks.values()
        if t.state == "quarantined"
    }
    for task_id, reason in unscorable.items():
        task = tasks.get(task_id)
        if task is not None and task.state == "unlabelled":
            wanted[(task_id, IMAGE)] = (reason, task.image)
    opened: list[int] = []
    for (task_id, kind), (text, image) in sorted(wanted.items()):
        found = current.get((task_id, kind))
        if found is None:
            found = QuarantineEntry(
                project_id=project_id,
                ls_task_id=task_id,
                kind=kind,
                problem=text,
                fix=_fix(kind, text),
                image=image,
                opened_at=now,
            )
            session.add(found)
            opened.append(task_id)
        found.problem, found.fix, found.seen_at = text, _fix(kind, text), now
    for (task_id, kind), entry in current.items():
        if (task_id, kind) not in wanted and entry.released_at is None:
            entry.released_at, entry.released_why = now, _gone_why(kind)
            released.append(task_id)
    session.flush()
    return QuarantineChange(tuple(opened), tuple(sorted(set(released))))


def _release_why(entry: QuarantineEntry, task: Task | None) -> str | None:
    """Why an open entry is released before the problems are read again; None: not yet."""
    if task is None or task.state == "deleted":
        return "the task was deleted in Label Studio"
    if entry.kind == IMAGE and task.image != entry.image:
        return "another image was set in Label Studio; the next cycle scores it"
    if entry.kind == IMAGE and task.state == "skipped":
        return "Label Studio closed the task without a label (it is not served again)"
    if entry.kind == IMAGE and task.state != "unlabelled":
        return "the task was labelled in Label Studio"
    return None


def _gone_why(kind: str) -> str:
    return "the annotations are readable again" if kind == DATA else "the image was scored"


def _unscorable(session: Session, project_id: int) -> dict[int, str]:
    """Tasks whose latest score record is an unscorable mark, with its reason."""
    marked = session.exec(
        select(ScoreRecord.ls_task_id).where(
            ScoreRecord.project_id == project_id, col(ScoreRecord.unscorable).is_not(None)
        )
    ).all()
    ids = sorted(set(marked))
    latest: dict[int, str | None] = {}
    for start in range(0, len(ids), 1000):
        rows = session.exec(
            select(ScoreRecord)
            .where(
                ScoreRecord.project_id == project_id,
                col(ScoreRecord.ls_task_id).in_(ids[start : start + 1000]),
            )
            .order_by(col(ScoreRecord.created_at), col(ScoreRecord.id))
        ).all()
        latest.update({row.ls_task_id: row.unscorable for row in rows})
    return {task: reason for task, reason in latest.items() if reason is not None}


def _forget_unscorable(session: Session, project_id: int, task_id: int) -> None:
    """The task's unscorable marks go, so every model version scores its new image."""
    session.execute(
        delete(ScoreRecord).where(
            col(ScoreRecord.project_id) == project_id,
            col(ScoreRecord.ls_task_id) == task_id,
            col(ScoreRecord.unscorable).is_not(None),
        )
    )
