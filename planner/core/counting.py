"""Per-class, per-split counts of images, instances and pixels from Label Studio tasks.

* images: labelled images in which the class occurs, once per image whatever the number of
  its regions or controls (a multi-label image counts once for each of its classes);
* instances: regions of the class; each chosen Choice is one instance;
* pixels: annotated area of the class (brush mask pixels, polygon/box/ellipse areas;
  classifications and key points add none). Overlapping regions add up.

Which annotation of a task counts, and when a task is unlabelled or quarantined, is decided
per task by ``label_task`` (``planner.core.task_labels``). Labels outside the config count
under ``UNKNOWN``, a column present only when such labels occur (a config that defines a class
named "unknown" shares it). Labelled tasks that ``split_of`` does not place go to the split
``"unassigned"``, a row present only when needed; a split name outside ``splits`` is a caller
error (``InputError``). With ``min_count``, rare children are folded into their parents along
``schema.hierarchy`` (``merge_rare_children`` on the ``merge_on`` totals over all splits), per
task, so a parent's image count stays exact; ``tasks`` keep the unmerged labels. Predictions
are not annotations and are never counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.core.hierarchy import ClassMerge, merge_rare_children
from planner.core.labels import LabelSchema
from planner.core.regions import Problem, TaskId, UnknownLabel, problem
from planner.core.resolution import ResolutionPolicy, as_policy
from planner.core.rle import DEFAULT_MAX_PIXELS
from planner.core.table import COUNT_KINDS, UNKNOWN, CountKind, CountTable
from planner.core.task_labels import TASK_STATUSES, TaskLabels, TaskStatus, label_task
from planner.errors import InputError

__all__ = [
    "UNASSIGNED",
    "CountResult",
    "SplitOf",
    "TaskLabels",
    "TaskStatus",
    "count_tasks",
    "label_task",
    "tabulate",
]

UNASSIGNED = "unassigned"
"""Split of labelled tasks that ``split_of`` does not place."""
SplitOf = Mapping[TaskId, str | None] | Callable[[Mapping[str, Any]], str | None] | str
"""A task id -> split map, a function of the task dict, or one split name for every task."""


@dataclass(frozen=True, slots=True)
class CountResult:
    """The count table, every task's labels, and where each labelled task went.

    ``split_of_task`` maps each labelled task id to its split; ``merge`` is the hierarchy merge
    applied to ``table`` (None without ``min_count``).
    """

    table: CountTable
    tasks: tuple[TaskLabels, ...]
    split_of_task: Mapping[TaskId, str]
    policy: ResolutionPolicy
    merge: ClassMerge | None = None

    @property
    def labelled(self) -> dict[str, int]:
        """Labelled tasks (images) per split, background images included."""
        per_split = Counter(self.split_of_task.values())
        return {split: per_split[split] for split in self.table.splits}

    def status_counts(self) -> dict[str, int]:
        """How many tasks are labelled, unlabelled, skipped and quarantined."""
        counts = Counter(task.status for task in self.tasks)
        return {status: counts[status] for status in TASK_STATUSES}

    @property
    def unknown(self) -> tuple[UnknownLabel, ...]:
        """Every counted label outside the config, with its task, control and region."""
        return tuple(u for task in self.tasks for u in task.unknown)

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Every problem found, in task order."""
        return tuple(p for task in self.tasks for p in task.problems)

    def unknown_summary(self) -> dict[str, dict[str, int]]:
        """Occurrences of unknown labels: ``{control: {label: count}}``."""
        out: dict[str, dict[str, int]] = {}
        for u in self.unknown:
            per_control = out.setdefault(u.control, {})
            per_control[u.label] = per_control.get(u.label, 0) + 1
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": self.table.as_dict(),
            "labelled": self.labelled,
            "tasks": self.status_counts(),
            "policy": self.policy.value,
            "merge": None if self.merge is None else self.merge.as_dict(),
            "unknown": self.unknown_summary(),
            "problems": [p.as_dict() for p in self.problems],
        }


def _check_splits(splits: Iterable[str]) -> tuple[str, ...]:
    names = tuple(splits)
    if not names or not all(isinstance(s, str) and s for s in names):
        raise InputError(f"splits must be non-empty split names, got {names!r}")
    if len(set(names)) != len(names):
        raise InputError(f"split names repeat in {names}")
    return names


def _split(
    task: Mapping[str, Any], task_id: TaskId, split_of: SplitOf, splits: tuple[str, ...]
) -> str:
    if isinstance(split_of, str):
        split: object = split_of
    elif isinstance(split_of, Mapping):
        split = split_of.get(task_id)
    else:
        split = split_of(task)
    if split is None:
        return UNASSIGNED
    if not isinstance(split, str) or (split not in splits and split != UNASSIGNED):
        raise InputError(
            f"task {task_id!r} is assigned to split {split!r}, which is not one of {splits}; "
            "fix the assignment or add the split to splits"
        )
    return split


def tabulate(
    tasks: Iterable[TaskLabels],
    split_of_task: Mapping[TaskId, str],
    *,
    classes: tuple[str, ...],
    splits: tuple[str, ...],
    mapping: Mapping[str, str] | None = None,
) -> CountTable:
    """Counts labelled ``tasks`` into a ``(splits, classes)`` table, classes renamed by
    ``mapping`` first (several classes mapped to one count an image once)."""
    shape = (len(splits), len(classes))
    images = np.zeros(shape, dtype=np.int64)
    instances = np.zeros(shape, dtype=np.int64)
    pixels = np.zeros(shape, dtype=np.int64)
    column = {name: i for i, name in enumerate(classes)}
    rows = {name: i for i, name in enumerate(splits)}
    rename = mapping or {}
    for task in tasks:
        if task.status != "labelled" or task.task_id is None:
            continue
        row = rows.get(split_of_task.get(task.task_id, ""))
        if row is None:
            raise InputError(
                f"task {task.task_id!r} has no split among {splits} in split_of_task; "
                "place every labelled task"
            )
        present: set[int] = set()
        for name in task.classes:
            target = column.get(rename.get(name, name))
            if target is None:
                raise InputError(
                    f"task {task.task_id!r} has class {name!r}, which maps outside {classes}"
                )
            instances[row, target] += task.instances[name]
            pixels[row, target] += task.pixels[name]
            present.add(target)
        for target in present:
            images[row, target] += 1
    return CountTable(
        classes=classes, splits=splits, images=images, instances=instances, pixels=pixels
    )


def count_tasks(
    tasks: Iterable[object],
    schema: LabelSchema,
    *,
    split_of: SplitOf,
    splits: Iterable[str] = ("train", "val", "test"),
    policy: ResolutionPolicy | str = ResolutionPolicy.GROUND_TRUTH_MAJORITY_LATEST,
    hierarchy: Mapping[str, str] | None = None,
    min_count: int | None = None,
    merge_on: CountKind = "instances",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CountResult:
    """Counts Label Studio task dicts per split and class (see the module docstring).

    ``hierarchy`` replaces ``schema.hierarchy`` for the ``min_count`` merge when given.
    """
    names = _check_splits(splits)
    if hierarchy is not None:
        schema = schema.with_hierarchy(hierarchy)
    chosen_policy = as_policy(policy)
    if merge_on not in COUNT_KINDS:
        raise InputError(f"merge_on {merge_on!r} is not one of {COUNT_KINDS}")
    labels: list[TaskLabels] = []
    placed: dict[TaskId, str] = {}
    seen: set[TaskId] = set()
    for task in tasks:
        one = label_task(task, schema, policy=chosen_policy, max_pixels=max_pixels)
        if one.task_id is not None and one.task_id in seen:
            what = f"task id {one.task_id!r} appears more than once; only the first is counted"
            bad = problem(one.task_id, what, "task")
            one = TaskLabels(one.task_id, "quarantined", "duplicate_id", problems=(bad,))
        elif one.task_id is not None:
            seen.add(one.task_id)
        if one.status == "labelled" and one.task_id is not None and isinstance(task, Mapping):
            placed[one.task_id] = _split(task, one.task_id, split_of, names)
        labels.append(one)
    classes = schema.classes
    if UNKNOWN not in classes and any(UNKNOWN in t.classes for t in labels):
        classes = (*classes, UNKNOWN)
    rows = (
        names if UNASSIGNED in names or UNASSIGNED not in placed.values() else (*names, UNASSIGNED)
    )
    table = tabulate(labels, placed, classes=classes, splits=rows)
    merge = None
    if min_count is not None:
        totals = table.totals(merge_on)
        counts = {name: int(totals[i]) for i, name in enumerate(classes)}
        merge = merge_rare_children(counts, schema.hierarchy, min_count=min_count)
        table = tabulate(labels, placed, classes=merge.classes, splits=rows, mapping=merge.mapping)
    return CountResult(
        table=table,
        tasks=tuple(labels),
        split_of_task=placed,
        policy=chosen_policy,
        merge=merge,
    )
