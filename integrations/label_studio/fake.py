"""An in-memory ``AnnotationBackend`` that behaves like Label Studio where the planner looks.

For unit tests of the daemon's logic (STYLE 5): tasks whose ``updated_at`` moves on annotation
saves and edits, on single prediction saves and on the planner's pushes where the real adapter
moves it (a deleted prediction, a rank written into the task's data; the bulk import of new
predictions leaves it alone), deletions, skips, ``is_labeled``, a ranked batch served lowest
score first, other models' predictions beside the planner's, webhooks.
The contract tests (tests/unit/integrations/contract.py) hold this fake and the real server to
the same checks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from integrations.label_studio.mapping import (
    TAG_PREFIX,
    WEBHOOK_ACTIONS,
    batch_scores,
    from_own_predictions,
)
from planner.core.labels import parse_label_config
from planner.errors import ConfigError, GoneError, UnreachableError
from planner.ports import (
    WEBHOOK_SECRET_HEADER,
    PushBatch,
    PushResult,
    RemoteProject,
    RemoteTask,
)

OWNER = 1
REQUEUE_FOR_OTHERS, IGNORE_SKIPPED = "REQUEUE_FOR_OTHERS", "IGNORE_SKIPPED"
"""Label Studio's skip_queue settings the fake knows: its default, and the one where a skip
finishes the task (counts toward ``is_labeled``)."""
"""The user id the fake's token belongs to (the real launcher's preset user is the first)."""


@dataclass(frozen=True, slots=True)
class Prediction:
    task: int
    model_version: str
    score: float


@dataclass(frozen=True, slots=True)
class Webhook:
    id: int
    url: str
    actions: tuple[str, ...]
    headers: Mapping[str, str]


@dataclass
class _Project:
    project: RemoteProject
    tasks: dict[int, RemoteTask] = field(default_factory=dict)
    predictions: dict[int, Prediction] = field(default_factory=dict)
    model_version: str | None = None
    ranks: dict[int, int] = field(default_factory=dict)
    webhooks: dict[int, Webhook] = field(default_factory=dict)
    skip_queue: str = REQUEUE_FOR_OTHERS


class FakeLabelStudio:
    """Projects, tasks and annotations in memory; time advances a microsecond per change."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._projects: dict[int, _Project] = {}
        self._ids = itertools.count(1)
        self._users = itertools.count(OWNER + 1)
        self.unreachable = False
        """Set to make every call raise ``UnreachableError``, like a server that is down."""
        self.between_pages: Callable[[int], None] | None = None
        """Called by ``iter_tasks`` with the number of pages read so far before it reads the
        next one: a test changes tasks there, as annotators do while a listing runs."""

    # -- AnnotationBackend -------------------------------------------------------------
    def project(self, project_id: int) -> RemoteProject:
        state = self._project(project_id)
        return replace(state.project, serving=state.model_version)

    def iter_tasks(
        self, project_id: int, *, updated_after: datetime | None = None, page_size: int = 500
    ) -> Iterator[RemoteTask]:
        """Pages as Label Studio's: each an offset into the order as it is when that page is
        read, so a task changed or deleted between two pages (``between_pages``) shifts the
        rest, and one task at the page edge is skipped."""
        state = self._project(project_id)
        page_size = max(1, page_size)
        for page in itertools.count():
            if page and self.between_pages is not None:
                self.between_pages(page)
            tasks = sorted(
                (
                    t
                    for t in state.tasks.values()
                    if updated_after is None or t.updated_at > updated_after
                ),
                key=lambda t: (t.updated_at, t.id),
            )
            rows = tasks[page * page_size : (page + 1) * page_size]
            yield from (_as_listed(state, t) for t in rows)
            if len(rows) < page_size:
                return

    def task_ids(self, project_id: int) -> set[int]:
        return set(self._project(project_id).tasks)

    def task_stamps(self, project_id: int) -> dict[int, datetime]:
        return {t.id: t.updated_at for t in self._project(project_id).tasks.values()}

    def tasks_by_id(self, project_id: int, ids: Iterable[int]) -> Iterator[RemoteTask]:
        state = self._project(project_id)
        for task_id in sorted(set(ids)):
            if task_id in state.tasks:
                yield _as_listed(state, state.tasks[task_id])

    def push_batch(self, project_id: int, batch: PushBatch) -> PushResult:
        """Like the real one, ``updated_at`` included: deletes and rank writes move it."""
        state = self._project(project_id)
        scores, missing = batch_scores(batch, set(state.tasks))
        if not scores:
            return PushResult(created=0, removed=0, view_id=None, missing=missing)
        kept: set[int] = set()
        removed = 0
        for pid, old in sorted(state.predictions.items()):
            if not old.model_version.startswith(TAG_PREFIX):
                continue
            current = old.model_version == batch.tag and old.task not in kept
            if current and abs(old.score - scores.get(old.task, -1.0)) < 1e-9:
                kept.add(old.task)
                continue
            del state.predictions[pid]
            removed += int(old.model_version != batch.tag)
            self._touch(state, old.task)
        for task, score in scores.items():
            if task not in kept:  # a bulk import: updated_at stays
                state.predictions[next(self._ids)] = Prediction(task, batch.tag, score)
        ranked = sorted(scores, key=scores.__getitem__)
        ranks = {task: position for position, task in enumerate(ranked, 1)}
        for task in sorted(set(ranks) | set(state.ranks)):
            if ranks.get(task) != state.ranks.get(task):
                self._touch(state, task)
        state.ranks = ranks
        state.model_version = batch.tag
        created = len(scores) - len(kept)
        return PushResult(created=created, removed=removed, view_id=1, missing=missing)

    def ensure_webhook(self, project_id: int, url: str, *, secret: str) -> int:
        state = self._project(project_id)
        hook = Webhook(0, url, WEBHOOK_ACTIONS, {WEBHOOK_SECRET_HEADER: secret})
        mine = sorted(h.id for h in state.webhooks.values() if h.url == url)
        for duplicate in mine[1:]:
            del state.webhooks[duplicate]
        hook_id = mine[0] if mine else next(self._ids)
        state.webhooks[hook_id] = replace(hook, id=hook_id)
        return hook_id

    # -- setup and the simulated annotator ------------------------------------------------
    def create_project(self, title: str, label_config: str) -> int:
        parse_label_config(label_config)
        project_id = next(self._ids)
        self._projects[project_id] = _Project(RemoteProject(project_id, title, label_config))
        return project_id

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        state = self._project(project_id)
        ids = []
        for task in tasks:
            task_id = next(self._ids)
            state.tasks[task_id] = RemoteTask(task_id, dict(task.get("data", {})), self._tick())
            ids.append(task_id)
        return ids

    def set_skip_queue(self, project_id: int, skip_queue: str) -> None:
        """Set the project's skip_queue (``IGNORE_SKIPPED``: a skip finishes the task). Like
        Label Studio, ``is_labeled`` is counted again for every task and ``updated_at`` stays."""
        state = self._project(project_id)
        state.skip_queue = skip_queue
        for task_id, task in state.tasks.items():
            finished = _finished(task.annotations, skip_queue)
            state.tasks[task_id] = replace(task, is_labeled=finished)

    def create_annotator(self, email: str) -> int:
        return next(self._users)

    def annotate(
        self,
        task_id: int,
        result: Sequence[Mapping[str, Any]],
        *,
        cancelled: bool = False,
        ground_truth: bool = False,
        annotator: int | None = None,
    ) -> int:
        state = self._owner(task_id)
        annotation_id = next(self._ids)
        when = self._tick()
        annotation = {
            "id": annotation_id,
            "result": [dict(r) for r in result],
            "was_cancelled": cancelled,
            "ground_truth": ground_truth,
            "completed_by": OWNER if annotator is None else annotator,
            "created_at": when.isoformat(),
            "updated_at": when.isoformat(),
        }
        task = state.tasks[task_id]
        annotations = [*task.annotations, annotation]
        finished = _finished(annotations, state.skip_queue)
        state.tasks[task_id] = replace(
            task, annotations=annotations, updated_at=when, is_labeled=finished
        )
        return annotation_id

    def update_annotation(self, annotation_id: int, result: Sequence[Mapping[str, Any]]) -> None:
        for state in self._projects.values():
            for task_id, task in state.tasks.items():
                if any(a.get("id") == annotation_id for a in task.annotations):
                    when = self._tick()
                    changed = [
                        {**a, "result": [dict(r) for r in result], "updated_at": when.isoformat()}
                        if a.get("id") == annotation_id
                        else a
                        for a in task.annotations
                    ]
                    state.tasks[task_id] = replace(task, annotations=changed, updated_at=when)
                    return
        raise ConfigError(f"annotation {annotation_id} does not exist")

    def annotations_from_predictions(self, project_id: int) -> int:
        """Label Studio's "Create Annotations From Predictions" action on every task (asked
        without a model version, as the SDK does): for each prediction not yet turned into
        one, an annotation with its result (the planner's are empty) and
        ``parent_prediction``; how many were made."""
        state = self._project(project_id)
        parents = {a.get("parent_prediction") for t in state.tasks.values() for a in t.annotations}
        made = 0
        for prediction_id, prediction in sorted(state.predictions.items()):
            if prediction_id in parents:
                continue
            annotation_id = self.annotate(prediction.task, [])
            task = state.tasks[prediction.task]
            annotations = [
                {**a, "parent_prediction": prediction_id} if a["id"] == annotation_id else a
                for a in task.annotations
            ]
            state.tasks[prediction.task] = replace(task, annotations=annotations)
            made += 1
        return made

    def delete_task(self, task_id: int) -> None:
        state = self._owner(task_id)
        del state.tasks[task_id]
        state.ranks.pop(task_id, None)
        state.predictions = {k: p for k, p in state.predictions.items() if p.task != task_id}

    def edit_task_data(self, task_id: int, data: Mapping[str, Any]) -> None:
        state = self._owner(task_id)
        task = state.tasks[task_id]
        state.tasks[task_id] = replace(task, data=dict(data), updated_at=self._tick())

    def predict(self, task_id: int, score: float, model_version: str) -> int:
        """One prediction saved on its own (not bulk): it bumps the task's ``updated_at``."""
        state = self._owner(task_id)
        prediction_id = next(self._ids)
        state.predictions[prediction_id] = Prediction(task_id, model_version, score)
        self._touch(state, task_id)
        return prediction_id

    def list_predictions(self, project_id: int) -> list[tuple[int, str, float]]:
        """``(task, model_version, score)`` of every prediction in the project."""
        found = self._project(project_id).predictions.values()
        return sorted((p.task, p.model_version, p.score) for p in found)

    def list_webhooks(self, project_id: int) -> list[tuple[int, str, dict[str, str]]]:
        """``(id, url, headers)`` of the project's webhooks."""
        hooks = self._project(project_id).webhooks.values()
        return sorted((h.id, h.url, dict(h.headers)) for h in hooks)

    def next_task(self, project_id: int, *, annotator: int | None = None) -> int | None:
        """Open tasks with a current prediction, lowest score first; else the lowest id.

        Open: not labelled, and neither annotated nor skipped by the asking user (``annotator``,
        or the token's user).
        """
        state = self._project(project_id)
        user = OWNER if annotator is None else annotator
        open_ids = [t for t, task in state.tasks.items() if _open(task, user)]
        scored = [
            (p.score, p.task)
            for p in state.predictions.values()
            if p.model_version == state.model_version and p.task in open_ids
        ]
        if scored:
            return min(scored)[1]
        return min(open_ids) if open_ids else None

    def view_task_ids(self, project_id: int, view_id: int) -> list[int]:
        ranks = self._project(project_id).ranks
        return sorted(ranks, key=ranks.__getitem__)

    # -- plumbing ---------------------------------------------------------------------------
    def _project(self, project_id: int) -> _Project:
        if self.unreachable:
            raise UnreachableError("cannot reach the fake Label Studio; it was made unreachable")
        if project_id not in self._projects:
            raise GoneError(f"project {project_id} does not exist (404)")
        return self._projects[project_id]

    def _owner(self, task_id: int) -> _Project:
        for state in self._projects.values():
            if task_id in state.tasks:
                return state
        raise ConfigError(f"task {task_id} does not exist (404)")

    def _touch(self, state: _Project, task_id: int) -> None:
        if task_id in state.tasks:
            state.tasks[task_id] = replace(state.tasks[task_id], updated_at=self._tick())

    def _tick(self) -> datetime:
        self._now += timedelta(microseconds=1)
        return self._now


def _finished(annotations: Sequence[Mapping[str, Any]], skip_queue: str) -> bool:
    """Label Studio's ``is_labeled`` at overlap 1: a non-skipped annotation (skips requeue),
    or any annotation where skips count as completed (``IGNORE_SKIPPED``)."""
    if skip_queue == IGNORE_SKIPPED:
        return bool(annotations)
    return any(not a.get("was_cancelled") for a in annotations)


def _as_listed(state: _Project, task: RemoteTask) -> RemoteTask:
    """The task as the listing shows it: which annotations came from the planner's predictions
    (a deleted prediction's children lose the link, as Label Studio's SET_NULL does)."""
    predictions = [
        {"id": pid, "model_version": p.model_version}
        for pid, p in state.predictions.items()
        if p.task == task.id
    ]
    return replace(task, from_own_predictions=from_own_predictions(task.annotations, predictions))


def _open(task: RemoteTask, user: int) -> bool:
    mine = any(a.get("completed_by") == user for a in task.annotations)
    return not task.is_labeled and not mine
