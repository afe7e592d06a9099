"""One task's contribution to the counts: which annotation counts, its classes and areas.

One annotation per task is counted, chosen by a ``ResolutionPolicy`` among the non-cancelled
ones (see ``planner.core.resolution``). A task with no annotations, or only cancelled
(skipped) ones, is unlabelled; but one Label Studio nevertheless counts finished
(``is_labeled``: a skip counts as done in a project whose skip_queue is "Ignore skipped") is
``skipped``: it will not be served again, so no batch may offer it, and it counts nowhere. A
submitted annotation with an empty result labels the task with no class: a background image.
A task whose structure is broken, or whose every annotation is malformed, is quarantined.
Pixels are summed over the task's regions per class and rounded to whole pixels once per task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from planner.core.labels import LabelSchema
from planner.core.regions import (
    AnnotationId,
    ParsedAnnotation,
    Problem,
    TaskId,
    UnknownLabel,
    parse_annotation,
    problem,
)
from planner.core.resolution import (
    Candidate,
    ResolutionPolicy,
    as_policy,
    parse_timestamp,
    resolve,
)
from planner.core.rle import DEFAULT_MAX_PIXELS

TaskStatus = Literal["labelled", "unlabelled", "skipped", "quarantined"]
TASK_STATUSES: tuple[TaskStatus, ...] = ("labelled", "unlabelled", "skipped", "quarantined")


@dataclass(frozen=True, slots=True)
class TaskLabels:
    """What one task contributes: its classes, instances and pixels, and how it was decided.

    ``reason`` is the resolution reason for a labelled task (``ground_truth``, ``majority``,
    ...) or why it is not (``no_annotations``, ``all_cancelled``, ``finished_unlabelled`` (skipped:
    Label Studio counts it finished without a counted annotation), ``all_annotations_malformed``,
    ``malformed_task``, ``duplicate_id``).
    """

    task_id: TaskId | None
    status: TaskStatus
    reason: str
    annotation_id: AnnotationId | None = None
    classes: tuple[str, ...] = ()
    instances: Mapping[str, int] = field(default_factory=dict)
    pixels: Mapping[str, int] = field(default_factory=dict)
    unknown: tuple[UnknownLabel, ...] = ()
    problems: tuple[Problem, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "reason": self.reason,
            "annotation_id": self.annotation_id,
            "classes": list(self.classes),
            "instances": dict(self.instances),
            "pixels": dict(self.pixels),
            "unknown": [u.as_dict() for u in self.unknown],
            "problems": [p.as_dict() for p in self.problems],
        }


def _task_id(task: Mapping[str, Any]) -> TaskId | None:
    ident = task.get("id")
    return ident if isinstance(ident, int | str) and not isinstance(ident, bool) else None


def _summarise(
    chosen: ParsedAnnotation, schema: LabelSchema
) -> tuple[tuple[str, ...], dict[str, int], dict[str, int]]:
    instances: Counter[str] = Counter()
    area: dict[str, float] = {}
    for region in chosen.regions:
        for name in region.classes:
            instances[name] += 1
            area[name] = area.get(name, 0.0) + region.pixels
    classes = tuple(sorted(instances, key=schema.position))
    pixels = {name: round(area[name]) for name in classes}
    return classes, {name: instances[name] for name in classes}, pixels


def _time_notes(
    annotation: Mapping[str, Any], task_id: TaskId, annotation_id: AnnotationId | None
) -> list[Problem]:
    notes = []
    for key in ("updated_at", "created_at"):
        value = annotation.get(key)
        if value is not None and parse_timestamp(value) is None:
            what = f"annotation {key} {value!r} is not an ISO 8601 time; ordered as if absent"
            notes.append(problem(task_id, what, "nothing", annotation_id=annotation_id))
    return notes


def _read(
    annotation: Mapping[str, Any], task_id: TaskId, schema: LabelSchema, max_pixels: int
) -> tuple[ParsedAnnotation, Candidate | None, list[Problem]]:
    """One non-cancelled annotation; no candidate when nothing in it could be read."""
    ident = annotation.get("id")
    annotation_id = ident if isinstance(ident, int | str) and not isinstance(ident, bool) else None
    one = parse_annotation(
        annotation.get("result"),
        schema,
        task_id=task_id,
        annotation_id=annotation_id,
        max_pixels=max_pixels,
    )
    found = [*_time_notes(annotation, task_id, annotation_id), *one.problems]
    if any(p.left_out == "annotation" for p in one.problems):
        return one, None, found
    if not one.regions and any(p.left_out == "region" for p in one.problems):
        # Nothing readable is not a background image: the annotator did label something.
        what = "annotation left out: none of its regions could be read"
        found.append(problem(task_id, what, "annotation", annotation_id=annotation_id))
        return one, None, found
    candidate = Candidate(
        annotation_id=annotation_id,
        ground_truth=annotation.get("ground_truth") is True,
        updated_at=parse_timestamp(annotation.get("updated_at")),
        created_at=parse_timestamp(annotation.get("created_at")),
        label_set=one.label_set,
    )
    return one, candidate, found


def label_task(
    task: object,
    schema: LabelSchema,
    *,
    policy: ResolutionPolicy | str = ResolutionPolicy.GROUND_TRUTH_MAJORITY_LATEST,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> TaskLabels:
    """Reads one task dict; bad data becomes problems on the result, never an exception."""
    chosen_policy = as_policy(policy)
    if not isinstance(task, Mapping):
        bad = problem(None, f"task is a {type(task).__name__}, not an object", "task")
        return TaskLabels(None, "quarantined", "malformed_task", problems=(bad,))
    task_id = _task_id(task)
    annotations = task.get("annotations") or []
    if task_id is None or not isinstance(annotations, list):
        what = "task has no id" if task_id is None else "task annotations is not a list"
        bad = problem(task_id, what, "task")
        return TaskLabels(task_id, "quarantined", "malformed_task", problems=(bad,))
    parsed: list[ParsedAnnotation] = []
    candidates: list[Candidate] = []
    problems: list[Problem] = []
    cancelled = malformed = 0
    for position, annotation in enumerate(annotations):
        if not isinstance(annotation, Mapping):
            what = f"annotation {position} is not an object"
            problems.append(problem(task_id, what, "annotation"))
            malformed += 1
        elif annotation.get("was_cancelled"):
            cancelled += 1
        else:
            one, candidate, found = _read(annotation, task_id, schema, max_pixels)
            problems.extend(found)
            if candidate is None:
                malformed += 1
            else:
                parsed.append(one)
                candidates.append(candidate)
    if not candidates:
        if malformed:
            status: TaskStatus = "quarantined"
            reason = "all_annotations_malformed"
        elif task.get("is_labeled") is True:
            status, reason = "skipped", "finished_unlabelled"
        else:
            status, reason = "unlabelled", "all_cancelled" if cancelled else "no_annotations"
        return TaskLabels(task_id, status, reason, problems=tuple(problems))
    decision = resolve(candidates, chosen_policy)
    chosen = parsed[decision.index]
    classes, instances, pixels = _summarise(chosen, schema)
    return TaskLabels(
        task_id=task_id,
        status="labelled",
        reason=decision.reason,
        annotation_id=chosen.annotation_id,
        classes=classes,
        instances=instances,
        pixels=pixels,
        unknown=chosen.unknown,
        problems=tuple(problems),
    )
