"""Incremental sync: bring the store up to date with the annotation tool, idempotently.

The first sync lists every task. Later ones ask only for tasks whose ``updated_at`` passed the
watermark, minus a safety overlap (clocks and transactions commit out of order). Label Studio
bumps ``updated_at`` on the planner's own prediction pushes too, so a task counts as changed only
when its annotations did (ids and their ``updated_at``). Deleted tasks are invisible to that
filter, and a listing whose pages shift while it runs can skip one (it is paged by offset: a
task edited meanwhile moves to the end, the rest move back one place, and the task at the page
edge is never read): every ``reconcile_every``, and right away when a listing returns a task
twice (the mark of such a shift), the full list of ids and ``updated_at`` is compared with the
store, deleted tasks are marked and tasks missing or behind are read by id. A full list
that comes back short of the server's total marks nothing deleted: that pass is skipped, with
the reason in the report and the log, and tried again at the next sync. That pass also
expires batches older than ``batch_ttl``. Each sync marks the pushed batch active once the
project serves it.

No store transaction is open during a Label Studio call (on SQLite it would hold the write
lock, starving the workers and the leader lease; on PostgreSQL it holds row locks and vacuum
back): the listing is stored a chunk per transaction with the watermark it reached, the
reconciliation reads between transactions, and the label config's hash is stored last, so a
sync cut short resumes from the last chunk (a full one starts over).

A task whose data cannot be read in full, or uses labels the config lacks, is stored as
``quarantined`` with the problem and what to do, and held apart (``planner.quarantine``); the
rest of the project syncs on. Empty annotations made from the planner's own batch predictions
("Create Annotations From Predictions") are no labels: they are left out, and a task they alone
would label is quarantined. New labelled tasks get a split (stratified, never moved).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlmodel import Session

from planner.core.labels import LabelSchema, object_fields, parse_label_config
from planner.core.regions import problem
from planner.core.resolution import ResolutionPolicy
from planner.core.splits import assign_splits
from planner.core.table import UNKNOWN
from planner.core.task_labels import TaskLabels, label_task
from planner.errors import IncompleteListingError
from planner.ports import AnnotationBackend, RemoteTask
from planner.quarantine import hold_apart
from planner.quarantine import refresh as refresh_quarantine
from planner.store.batches import activate_served, expire_stale
from planner.store.db import Store, ensure_project
from planner.store.models import Task
from planner.store.scores import forget_scores
from planner.store.sync_state import sync_state
from planner.store.tasks import (
    TaskUpdate,
    apply_update,
    count_table,
    mark_deleted,
    tasks_by_ls_id,
    tasks_in_state,
)

log = logging.getLogger("planner.sync")
DEFAULT_OVERLAP = timedelta(seconds=5)
DEFAULT_RECONCILE = timedelta(hours=6)
DEFAULT_BATCH_TTL = timedelta(days=7)
_PRESENT = ("unlabelled", "labelled", "skipped", "quarantined")
"""Task states of tasks Label Studio has (every one but ``deleted``)."""


@dataclass(frozen=True, slots=True)
class SyncOptions:
    split_ratios: dict[str, float] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )
    policy: ResolutionPolicy = ResolutionPolicy.GROUND_TRUTH_MAJORITY_LATEST
    overlap: timedelta = DEFAULT_OVERLAP
    reconcile_every: timedelta = DEFAULT_RECONCILE
    batch_ttl: timedelta | None = DEFAULT_BATCH_TTL
    """Open batches pushed longer ago expire at reconciliation; None keeps them."""
    seed: int = 0
    page_size: int = 500


@dataclass(frozen=True, slots=True)
class SyncReport:
    project_id: int
    """The planner's project id."""
    full: bool
    seen: int
    new: int
    changed: int
    unchanged: int
    deleted: tuple[int, ...]
    quarantined: tuple[tuple[int, str], ...]
    """(task id, problem) of tasks this sync could not count."""
    newly_labelled: int
    watermark: datetime | None
    recovered: tuple[int, ...] = ()
    """Tasks the listings had missed, found by reconciliation."""
    expired_batches: tuple[str, ...] = ()
    """Tags of batches that expired for age."""
    problem: str | None = None
    """Why part of the sync was skipped (an incomplete task listing: nothing marked
    deleted); None when it all ran."""

    def as_dict(self) -> dict[str, object]:
        return {
            "full": self.full,
            "seen": self.seen,
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "deleted": list(self.deleted),
            "quarantined": [{"task_id": t, "problem": p} for t, p in self.quarantined],
            "newly_labelled": self.newly_labelled,
            "watermark": None if self.watermark is None else self.watermark.isoformat(),
            "recovered": list(self.recovered),
            "expired_batches": list(self.expired_batches),
            "problem": self.problem,
        }


def sync_project(
    backend: AnnotationBackend,
    store: Store,
    ls_project_id: int,
    *,
    now: datetime,
    options: SyncOptions | None = None,
    reconcile: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SyncReport:
    """One sync pass; safe to repeat (a second pass right after changes nothing).

    No store transaction stays open across a Label Studio call: each chunk of the listing is
    committed with the watermark it reached (a sync cut short resumes from there), and the
    reconciliation's listings run between transactions. ``progress`` (a progress display) is
    called with the number of tasks listed so far.
    """
    opts = options or SyncOptions()
    remote = backend.project(ls_project_id)
    schema = parse_label_config(remote.label_config)
    image_key = _image_key(schema, object_fields(remote.label_config))
    config_hash = hashlib.sha256(remote.label_config.encode()).hexdigest()
    with store.session() as session:
        project = ensure_project(session, ls_project_id=ls_project_id, title=remote.title)
        project.title = remote.title  # a row the daemon made before it reached Label Studio
        project_id = int(project.id or 0)
        state = sync_state(session, project_id)
        activate_served(session, project_id, remote.serving, at=now)
        # A changed label config changes what every annotation means: read everything again.
        # The new hash is stored only once the whole pass is: one cut short reads all again.
        full = state.watermark is None or project.label_config_hash != config_hash
        start, last_reconcile = state.watermark, state.last_reconcile_at
    after = None if full or start is None else start - opts.overlap
    counts = _Counts()
    reading = _Reading(image_key, schema, opts, force=full)
    ids = (ls_project_id, project_id)
    listing = _read_listing(backend, store, ids, (reading, counts), after=after, progress=progress)
    due = last_reconcile is None or now - last_reconcile >= opts.reconcile_every
    found = _Reconciled()
    if full or reconcile or due or listing.shifted:
        found = _reconcile(backend, store, ids, reading, counts)
    with store.session() as session:
        state = sync_state(session, project_id)
        if found.ran:
            # skipped: due again at the next sync
            state.last_reconcile_at = now if found.problem is None else None
            if opts.batch_ttl is not None:
                stale = expire_stale(session, project_id, now=now, ttl=opts.batch_ttl)
                found.expired = [b.tag for b in stale]
        newly = _assign_splits(session, project_id, schema, opts)
        refresh_quarantine(session, project_id, now=now)
        state.watermark = _later(state.watermark, listing.watermark)
        state.last_sync_at, state.last_error = now, found.problem
        project = ensure_project(session, ls_project_id=ls_project_id, title=remote.title)
        project.label_config_hash, project.classes = config_hash, list(schema.classes)
        project.label_kinds = sorted({control.kind for control in schema.controls})
        if full:
            state.last_full_sync_at = now
        watermark = state.watermark
    return SyncReport(
        project_id=project_id,
        full=full,
        seen=counts.seen,
        new=counts.new,
        changed=counts.changed,
        unchanged=counts.unchanged,
        deleted=tuple(found.deleted),
        quarantined=tuple(counts.quarantined),
        newly_labelled=newly,
        watermark=watermark,
        recovered=tuple(found.recovered),
        expired_batches=tuple(found.expired),
        problem=found.problem,
    )


@dataclass(frozen=True, slots=True)
class _Listed:
    watermark: datetime | None
    """The newest ``updated_at`` listed (and committed)."""
    shifted: bool
    """A task came twice: its pages shifted while they were read, which skips one task."""


def _read_listing(
    backend: AnnotationBackend,
    store: Store,
    ids: tuple[int, int],
    how: tuple[_Reading, _Counts],
    *,
    after: datetime | None,
    progress: Callable[[int], None] | None,
) -> _Listed:
    """List the tasks changed after ``after`` and store them a chunk per transaction, each
    with the watermark it reached: the listing is oldest change first, so a failed page
    leaves the watermark before every task not yet read."""
    ls_project_id, project_id = ids
    watermark: datetime | None = None
    seen: set[int] = set()
    shifted = False
    chunk: list[RemoteTask] = []
    size = max(1, how[0].opts.page_size)
    listing = backend.iter_tasks(ls_project_id, updated_after=after, page_size=size)
    for listed, task in enumerate(listing, start=1):
        shifted = shifted or task.id in seen
        seen.add(task.id)
        chunk.append(task)
        if progress is not None:
            progress(listed)
        if len(chunk) >= size:
            watermark = _commit_chunk(store, project_id, chunk, how, shifted=shifted)
            chunk = []
    if chunk:
        watermark = _commit_chunk(store, project_id, chunk, how, shifted=shifted)
    if shifted:
        log.info(
            "project %s: a task came twice in the listing (edited while it was read, so "
            "its pages shifted and one task may have slipped past): comparing every "
            "task's updated_at with the store now",
            ls_project_id,
        )
    return _Listed(watermark, shifted)


def _commit_chunk(
    store: Store,
    project_id: int,
    chunk: list[RemoteTask],
    how: tuple[_Reading, _Counts],
    *,
    shifted: bool,
) -> datetime | None:
    """Store ``chunk`` and move the stored watermark to its newest ``updated_at``, in one
    transaction; the watermark now stored. A shifted listing also makes the reconciliation
    due, in the same transaction: a sync cut short before comparing still compares next time.
    """
    reading, counts = how
    with store.session() as session:
        _apply(session, project_id, chunk, reading, counts)
        state = sync_state(session, project_id)
        state.watermark = _later(state.watermark, max(t.updated_at for t in chunk))
        if shifted:
            state.last_reconcile_at = None
        return state.watermark


def _later(one: datetime | None, other: datetime | None) -> datetime | None:
    if one is None or other is None:
        return other if one is None else one
    return max(one, other)


@dataclass
class _Reconciled:
    ran: bool = False
    deleted: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    problem: str | None = None


def _reconcile(
    backend: AnnotationBackend,
    store: Store,
    ids: tuple[int, int],
    reading: _Reading,
    counts: _Counts,
) -> _Reconciled:
    """Compare every task id and ``updated_at`` with the store (``ids``: the Label Studio and
    the planner project): deleted tasks are marked, tasks missing or behind read by id. An
    incomplete list changes nothing (the problem is returned). Label Studio is read between
    transactions; the first one makes the reconciliation due until the sync's last one says
    it ran, so a pass cut short is done again at the next sync."""
    ls_project_id, project_id = ids
    try:
        stamps = backend.task_stamps(ls_project_id)
    except IncompleteListingError as exc:  # a task missing from it may well exist
        problem = f"reconciliation skipped, retried at the next sync: {exc}"
        log.warning("project %s: %s", ls_project_id, problem)
        return _Reconciled(ran=True, problem=problem)
    with store.session() as session:
        sync_state(session, project_id).last_reconcile_at = None
        deleted = mark_deleted(session, project_id, set(stamps))
        behind = _behind(session, project_id, stamps)
    # the watermark stays the listing's: the next sync reads the recent ones again
    listed = list(backend.tasks_by_id(ls_project_id, behind))
    with store.session() as session:
        recovered = _apply(session, project_id, listed, reading, counts)
    return _Reconciled(ran=True, deleted=deleted, recovered=recovered)


def _behind(session: Session, project_id: int, stamps: dict[int, datetime]) -> list[int]:
    """Tasks the store lacks or holds an older ``updated_at`` of than Label Studio."""
    stored = {
        row.ls_task_id: row.ls_updated_at for row in tasks_in_state(session, project_id, *_PRESENT)
    }
    behind = []
    for task, at in stamps.items():
        seen = stored.get(task)
        if seen is None or seen < at:
            behind.append(task)
    return sorted(behind)


def _image_key(schema: LabelSchema, fields: dict[str, str]) -> str | None:
    """The data key of the object the countable controls label (their ``toName``)."""
    for control in schema.controls:
        for name in control.to_name.split(","):
            if name.strip() in fields:
                return fields[name.strip()]
    return None


@dataclass(frozen=True, slots=True)
class _Reading:
    """How this sync turns tasks into store rows."""

    image_key: str | None
    schema: LabelSchema
    opts: SyncOptions
    force: bool


@dataclass
class _Counts:
    seen: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    quarantined: list[tuple[int, str]] = field(default_factory=list)


def _apply(
    session: Session,
    project_id: int,
    tasks: list[RemoteTask],
    reading: _Reading,
    counts: _Counts,
) -> list[int]:
    """Store ``tasks``; the ids of those that were new or changed. A task showing another
    image loses its scores: they were the old image's, and it is scored again."""
    written: list[int] = []
    new_image: list[int] = []
    # A task edited while the listing ran comes twice, the newer copy later: keep that one.
    latest = list({task.id: task for task in tasks}.values())
    existing = tasks_by_ls_id(session, project_id, (t.id for t in latest))
    for task in latest:
        counts.seen += 1
        row = existing.get(task.id)
        image = task.data.get(reading.image_key, "") if reading.image_key else ""
        image = str(image) if isinstance(image, str | int | float) else ""
        meta = {k: v for k, v in task.data.items() if isinstance(v, str | int | float | bool)}
        # a new image is a fix too (quarantine.refresh releases the task and scores it again);
        # other edited data (a stratum such as the time of day) is a change of the task
        same = row is not None and (row.annotation_stamp, row.image, row.meta) == (
            task.annotation_stamp,
            image,
            meta,
        )
        # Label Studio may finish or reopen a task without a new annotation (its skip_queue)
        same = same and not _reopened_or_closed(row, task)
        if row is not None and same and row.state != "deleted" and not reading.force:
            row.ls_updated_at = task.updated_at  # a prediction push
            counts.unchanged += 1
            continue
        as_dict = task.as_task_dict()
        labels = _labels(task, as_dict, reading)
        update = TaskUpdate(
            ls_task_id=task.id,
            image=image,
            meta=meta,
            labels=labels,
            annotation_ids=task.annotation_ids,
            annotation_stamp=task.annotation_stamp,
            ls_updated_at=task.updated_at,
        )
        if row is not None and row.image != image:
            new_image.append(task.id)
        stored = apply_update(session, project_id, row, update)
        written.append(task.id)
        if row is None:
            counts.new += 1
        else:
            counts.changed += 1
        if stored.state == "quarantined":
            counts.quarantined.append((task.id, stored.problem or "unreadable"))
    if new_image:
        forget_scores(session, project_id=project_id, task_ids=new_image)
    session.flush()
    return written


def _labels(task: RemoteTask, as_dict: dict[str, Any], reading: _Reading) -> TaskLabels:
    """What the task contributes; annotations made from the planner's own (empty) predictions
    are left out, and a task they alone would label is held apart, saying what to do."""
    made = set(task.from_own_predictions)
    if made:
        as_dict["annotations"] = [a for a in as_dict["annotations"] if a.get("id") not in made]
    labels = label_task(as_dict, reading.schema, policy=reading.opts.policy)
    labels = hold_apart(labels, as_dict, reading.schema)
    if not made:
        return labels
    what = (
        f"annotation(s) {', '.join(map(str, sorted(made)))} were made from the planner's own "
        "batch predictions (Create Annotations From Predictions), which hold no labels"
    )
    log.warning("task %s: %s; they are not counted", task.id, what)
    if labels.status in {"labelled", "quarantined"}:
        return labels
    fix = "delete them in Label Studio and label the task; the next sync releases it"
    found = replace(problem(task.id, what, "annotation"), fix=fix)
    return TaskLabels(task.id, "quarantined", "from_own_predictions", problems=(found,))


def _reopened_or_closed(row: Task | None, task: RemoteTask) -> bool:
    """Whether Label Studio's ``is_labeled`` disagrees with the stored unlabelled state."""
    if row is None or row.state not in ("unlabelled", "skipped"):
        return False
    return (row.state == "skipped") != task.is_labeled


def _assign_splits(
    session: Session, project_id: int, schema: LabelSchema, opts: SyncOptions
) -> int:
    labelled = tasks_in_state(session, project_id, "labelled")
    fresh = [t for t in labelled if t.split is None]
    if not fresh:
        return 0
    splits = tuple(opts.split_ratios)
    classes = (*schema.classes, UNKNOWN)
    table = count_table(session, project_id, schema.classes, splits)
    membership = np.array([[name in t.labels for name in classes] for t in fresh], dtype=bool)
    existing: dict[int | str, str] = {
        t.ls_task_id: str(t.split) for t in labelled if t.split is not None
    }
    assignment = assign_splits(
        [t.ls_task_id for t in fresh],
        membership,
        existing=existing,
        counts=table,
        ratios=opts.split_ratios,
        classes=classes,
        seed=opts.seed,
    )
    by_id: dict[int, Task] = {t.ls_task_id: t for t in fresh}
    for task_id, split in assignment.new.items():
        by_id[int(task_id)].split = split
    return len(assignment.new)
