"""The small interfaces the daemon talks to the outside through (STYLE 1).

``integrations/`` implements them for real systems, each with an in-memory fake beside it for
unit tests of the daemon's logic. Nothing here imports an SDK.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from planner.core.finite import finite_json
from planner.errors import InputError

WEBHOOK_SECRET_HEADER = "X-Planner-Secret"  # noqa: S105 - a header name, not a secret
"""The header carrying the shared secret on the tool's webhook calls to the planner."""


@dataclass(frozen=True, slots=True)
class RemoteProject:
    id: int
    title: str
    label_config: str
    serving: str | None = None
    """The prediction model version the tool now serves annotators by (lowest score first);
    None when it serves tasks some other way. A pushed batch is live once this is its tag."""


@dataclass(frozen=True, slots=True)
class RemoteTask:
    """One task as the annotation tool has it; ``annotations`` are Label Studio's dicts.

    ``updated_at`` is timezone-aware. ``annotations`` include skips (``was_cancelled``) and
    ground truth, in the shape ``planner.core.counting.count_tasks`` reads. ``is_labeled`` is
    the tool's own flag (enough non-skipped annotations for the project's overlap).
    """

    id: int
    data: Mapping[str, Any]
    updated_at: datetime
    annotations: Sequence[Mapping[str, Any]] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    is_labeled: bool = False
    from_own_predictions: tuple[int, ...] = ()
    """Ids of annotations made from the planner's own predictions with nothing in them (Label
    Studio's "Create Annotations From Predictions" on the batch's empty predictions): no one
    looked at the image, so they are no labels."""

    def __post_init__(self) -> None:
        if self.updated_at.tzinfo is None:
            raise InputError(f"task {self.id}: updated_at must be timezone-aware")
        # NaN and inf (an empty CSV cell) become None as they arrive: the planner stores task
        # data as JSON, and a sync compares what it lists with what it stored
        object.__setattr__(self, "data", finite_json(self.data))
        object.__setattr__(self, "meta", finite_json(self.meta))

    @property
    def annotation_ids(self) -> tuple[int, ...]:
        return tuple(sorted(int(a["id"]) for a in self.annotations if "id" in a))

    @property
    def annotation_stamp(self) -> str:
        """Changes exactly when an annotation is added, removed or edited."""
        return ",".join(
            f"{a.get('id')}@{a.get('updated_at')}"
            for a in sorted(self.annotations, key=lambda a: int(a.get("id", 0)))
        )

    def as_task_dict(self) -> dict[str, Any]:
        """The Label Studio export shape the core's counting reads."""
        return {
            "id": self.id,
            "data": dict(self.data),
            "meta": dict(self.meta),
            "annotations": [dict(a) for a in self.annotations],
            "is_labeled": self.is_labeled,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class PushBatch:
    """A ranked batch to serve annotators: ``items`` are ``(task_id, rank)``, rank 1 first."""

    tag: str
    items: Sequence[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push changed on the tool's side."""

    created: int
    """Predictions created now (0 when the same batch was pushed before)."""
    removed: int
    """Predictions of superseded batches removed."""
    view_id: int | None
    """The "Next batch" Data Manager tab, where the tool has one; None when nothing was
    pushed (every task of the batch was gone)."""
    missing: tuple[int, ...] = ()
    """Batch tasks the project no longer has (deleted since the batch was planned), left out
    of the push; every task of the batch when nothing was pushed."""


@runtime_checkable
class AnnotationBackend(Protocol):
    """An annotation tool holding one project's tasks (Label Studio here)."""

    def project(self, project_id: int) -> RemoteProject: ...

    def iter_tasks(
        self, project_id: int, *, updated_after: datetime | None = None, page_size: int = 500
    ) -> Iterator[RemoteTask]:
        """Tasks changed after ``updated_after`` (all with None), oldest change first."""
        ...

    def task_ids(self, project_id: int) -> set[int]:
        """Every task id of the project, for reconciling deletions."""
        ...

    def task_stamps(self, project_id: int) -> dict[int, datetime]:
        """Every task id of the project with its ``updated_at``, for reconciling: deleted
        tasks, and tasks (or changes) a listing whose pages shifted skipped."""
        ...

    def tasks_by_id(self, project_id: int, ids: Iterable[int]) -> Iterator[RemoteTask]:
        """The named tasks that exist (others are left out), for reconciling missed ones."""
        ...

    def push_batch(self, project_id: int, batch: PushBatch) -> PushResult:
        """Make annotators get ``batch`` next, in rank order; idempotent per tag. Tasks the
        project no longer has are left out and named in ``PushResult.missing``; when none of
        the batch is left, nothing is pushed (the tool keeps serving what it served)."""
        ...

    def ensure_webhook(self, project_id: int, url: str, *, secret: str) -> int:
        """Have the tool call ``url`` when annotations or tasks change, sending ``secret`` in
        ``WEBHOOK_SECRET_HEADER``; creates or updates one webhook per URL; its id."""
        ...
