"""Label Studio JSON and SDK objects turned into the planner's types (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from planner.errors import ConfigError, InputError
from planner.ports import PushBatch, RemoteProject, RemoteTask

TAG_PREFIX = "planner-"
"""Every prediction model_version the planner pushes starts with this (others are left alone)."""
VIEW_TITLE = "Next batch"
VIEW_MARK = "planner_view"
"""Key of the planner's own tab in the tab's data (Label Studio keeps unknown keys there): a
user's tab of the same title is not the planner's to update or delete."""
SAMPLING = "Uncertainty sampling"
"""Serves open tasks with a prediction of the project's model_version, lowest score first."""
RANK_FIELD = "planner_rank"
"""Task data key holding a batch task's zero-padded rank; the "Next batch" tab orders by it.

Data Manager tabs cannot order by task meta, and their prediction-score column averages over
whatever model versions the server picks (the project's, or with a feature flag every ML
backend's), so a rank of our own is the one order other models cannot disturb. It is planner
bookkeeping: ``remote_task`` leaves it out of the data the planner reads."""
WEBHOOK_ACTIONS = (
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "TASKS_CREATED",
    "TASKS_DELETED",
)
"""What the planner's webhook listens to: every change a sync would pick up."""


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of an SDK model (pydantic) or a dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        data: dict[str, Any] = dump(mode="json", by_alias=True, exclude_none=False)
        return data
    raise InputError(f"cannot read a {type(obj).__name__} from Label Studio as an object")


def parse_time(value: object) -> datetime:
    """An aware datetime from Label Studio's ISO strings (naive ones are UTC)."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str) and value:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise InputError(f"expected a timestamp from Label Studio, got {value!r}")
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def ls_time(when: datetime) -> str:
    """The one datetime format Label Studio's Data Manager filters parse: UTC with a ``Z``."""
    if when.tzinfo is None:
        raise InputError("a Label Studio filter time must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def remote_project(raw: Any) -> RemoteProject:
    data = as_dict(raw)
    served = data.get("model_version") if data.get("sampling") == SAMPLING else None
    return RemoteProject(
        id=int(data["id"]),
        title=str(data.get("title") or ""),
        label_config=str(data["label_config"]),
        serving=str(served) if served else None,
    )


def remote_task(raw: Any) -> RemoteTask:
    data = as_dict(raw)
    annotations = [as_dict(a) for a in data.get("annotations") or []]
    return RemoteTask(
        id=int(data["id"]),
        data={k: v for k, v in (data.get("data") or {}).items() if k != RANK_FIELD},
        updated_at=parse_time(data.get("updated_at") or data.get("created_at")),
        annotations=annotations,
        meta=dict(data.get("meta") or {}),
        is_labeled=bool(data.get("is_labeled")),
        from_own_predictions=from_own_predictions(annotations, data.get("predictions") or []),
    )


def from_own_predictions(
    annotations: Sequence[Mapping[str, Any]], predictions: Sequence[Any]
) -> tuple[int, ...]:
    """Ids of the annotations whose ``parent_prediction`` is one of the planner's predictions
    (``TAG_PREFIX``) and whose result is empty, as "Create Annotations From Predictions" makes
    them from a batch. The task listing must carry its predictions' ids and model versions."""
    own = set()
    for raw in predictions:
        prediction = as_dict(raw)
        if str(prediction.get("model_version") or "").startswith(TAG_PREFIX):
            own.add(prediction.get("id"))
    return tuple(
        sorted(
            int(a["id"])
            for a in annotations
            if "id" in a
            and a.get("parent_prediction") is not None
            and a.get("parent_prediction") in own
            and not a.get("result")
            and not a.get("was_cancelled")
        )
    )


def batch_scores(batch: PushBatch, existing: set[int]) -> tuple[dict[int, float], tuple[int, ...]]:
    """Prediction score per task that still exists, rank order = ascending score (Uncertainty
    sampling's order); and the batch tasks the project no longer has, ascending.

    Rank ``r``-th of the ``n`` existing tasks scores ``r / (n + 1)``: strictly increasing,
    inside (0, 1). A task deleted since the batch was planned is left out, not an error: the
    push serves the others. Checks the tag and the ids before anything is pushed, so a bad
    batch changes nothing.
    """
    if not batch.tag.startswith(TAG_PREFIX):
        raise ConfigError(f"batch tag {batch.tag!r} must start with {TAG_PREFIX!r}")
    if not batch.items:
        raise InputError(f"batch {batch.tag!r} is empty; push at least one task")
    ids = [int(task) for task, _ in batch.items]
    if len(set(ids)) != len(ids):
        raise InputError(f"batch {batch.tag!r} lists a task more than once; rank each task once")
    ranked = [int(task) for task, _ in sorted(batch.items, key=lambda item: item[1])]
    kept = [task for task in ranked if task in existing]
    n = len(kept)
    scores = {task: (position + 1) / (n + 1) for position, task in enumerate(kept)}
    return scores, tuple(sorted(set(ids) - existing))


def rank_value(position: int) -> str:
    """The ``RANK_FIELD`` value of the ``position``-th task (1 first): zero-padded, because the
    Data Manager compares data fields as strings."""
    if not 0 < position < 1_000_000:
        raise InputError(f"rank {position} is outside 1..999999")
    return f"{position:06d}"


def rank_of(raw: Any) -> str | None:
    """The ``RANK_FIELD`` value in a Label Studio task, or None."""
    value = (as_dict(raw).get("data") or {}).get(RANK_FIELD)
    return None if value is None else str(value)


def view_data(title: str, ordered_ids: Sequence[int]) -> dict[str, Any]:
    """A Data Manager tab holding exactly ``ordered_ids``, in ``RANK_FIELD`` order.

    "Label Tasks As Displayed" serves the tab's filter and order, so it follows the rank.
    """
    return {
        "title": title,
        VIEW_MARK: "next-batch",
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:id",
                    "operator": "in_list",
                    "type": "Number",
                    "value": [int(i) for i in ordered_ids],
                }
            ],
        },
        "ordering": [f"tasks:data.{RANK_FIELD}"],
    }


def planner_view(data: Mapping[str, Any] | None) -> bool:
    """Whether a Data Manager tab's ``data`` is the planner's: marked with ``VIEW_MARK``, or
    exactly what planner versions before the mark wrote (the title, a single task id
    ``in_list`` filter, ordered by ``RANK_FIELD``); any other tab is a user's."""
    data = data or {}
    if VIEW_MARK in data:
        return True
    if set(data) != {"title", "filters", "ordering"} or data["title"] != VIEW_TITLE:
        return False
    filters = data["filters"] if isinstance(data["filters"], Mapping) else {}
    items = filters.get("items")
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], Mapping):
        return False
    shape = {key: items[0].get(key) for key in ("filter", "operator", "type")}
    return shape == {"filter": "filter:tasks:id", "operator": "in_list", "type": "Number"} and (
        data["ordering"] == [f"tasks:data.{RANK_FIELD}"]
    )
