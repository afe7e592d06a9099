"""One pass of the planning core over a Label Studio export: where the project stands.

``analyze`` is what ``planner analyze`` and the offline demo run, and what a sync hands to the
report: counts per split, imbalance, hidden imbalance by strata, quotas, weights and the
resampling plan, every problem found in the data with its task id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.core.counting import CountResult, count_tasks
from planner.core.labels import LabelSchema, parse_label_config
from planner.core.metrics import TableImbalance, table_imbalance
from planner.core.quotas import Quota, QuotaStatus, deficits
from planner.core.splits import assign_splits, training_split
from planner.core.strata import StrataReport, stratify
from planner.core.table import UNKNOWN, CountKind
from planner.core.weights import WeightScheme
from planner.offline import resample_figures, weights_figures

SPLIT_FIELD = "split"
"""A task whose ``data`` or ``meta`` holds this field keeps the split it names."""


@dataclass(frozen=True, slots=True)
class AnalysisOptions:
    """What ``analyze`` needs beyond the data: the planning settings, as plain values."""

    count_kind: CountKind = "images"
    split_ratios: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )
    strata_fields: tuple[str, ...] = ()
    weight_scheme: WeightScheme = "balanced"
    max_oversample: float = 5.0
    hierarchy: Mapping[str, str] = field(default_factory=dict)
    merge_min_count: int = 0
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Analysis:
    """The core's results for one export; ``as_dict`` is the JSON of ``planner analyze``."""

    schema: LabelSchema
    counts: CountResult
    splits: Mapping[int | str, str]
    imbalance: TableImbalance
    strata: StrataReport | None
    quotas: QuotaStatus
    weights: dict[str, Any]
    resampling: dict[str, Any]
    options: AnalysisOptions

    @property
    def class_counts(self) -> dict[str, int]:
        """Per-class totals over every split, of the quota count kind."""
        table = self.counts.table
        totals = table.of(self.options.count_kind).sum(axis=0)
        return {name: int(n) for name, n in zip(table.classes, totals, strict=True)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.schema.classes),
            "tasks": self.counts.status_counts(),
            "labelled_per_split": self.counts.labelled,
            "counts": self.counts.table.as_dict(),
            "unknown_labels": self.counts.unknown_summary(),
            "problems": [p.as_dict() for p in self.counts.problems],
            "imbalance": self.imbalance.as_dict(),
            "strata": None if self.strata is None else self.strata.as_dict(),
            "quotas": self.quotas.as_dict(),
            "weights": self.weights,
            "resampling": self.resampling,
        }


def analyze(
    tasks: Sequence[Mapping[str, Any]],
    label_config: str,
    quotas: Sequence[Quota],
    options: AnalysisOptions | None = None,
) -> Analysis:
    """Count, split, measure and plan from Label Studio task dicts (an export or a sync)."""
    opts = options or AnalysisOptions()
    schema = parse_label_config(label_config, hierarchy=opts.hierarchy or None)
    splits = tuple(opts.split_ratios)
    first = count_tasks(tasks, schema, split_of=lambda _task: None, splits=splits)
    labelled = [t for t in first.tasks if t.status == "labelled" and t.task_id is not None]
    ids = [t.task_id for t in labelled if t.task_id is not None]
    classes = first.table.classes
    membership = np.zeros((len(labelled), len(classes)), dtype=bool)
    for row, task in enumerate(labelled):
        for name in task.classes:
            membership[row, classes.index(name)] = True
    existing = _existing_splits(tasks, splits)
    kept = {i: s for i, s in existing.items() if i in set(ids)}
    new_ids = [i for i in ids if i not in kept]
    new_rows = [row for row, i in enumerate(ids) if i not in kept]
    kept_table = count_tasks(
        [t for t in tasks if t.get("id") in kept], schema, split_of=kept, splits=splits
    ).table
    kept_counts = np.zeros((len(splits), len(classes)), dtype=np.int64)
    for column, name in enumerate(kept_table.classes):
        kept_counts[:, classes.index(name)] = kept_table.images[:, column]
    assignment = assign_splits(
        new_ids,
        membership[new_rows],
        existing=kept,
        counts=kept_counts,
        ratios=dict(opts.split_ratios),
        classes=classes,
        seed=opts.seed,
    ).assignment
    counted = count_tasks(
        tasks,
        schema,
        split_of=dict(assignment),
        splits=splits,
        min_count=opts.merge_min_count or None,
    )
    table = counted.table
    known = table.without(UNKNOWN)
    columns = [classes.index(name) for name in known.classes if name in classes]
    return Analysis(
        schema=schema,
        counts=counted,
        splits=dict(assignment),
        imbalance=table_imbalance(known, opts.count_kind),
        strata=_strata(tasks, ids, membership[:, columns], known.classes, opts.strata_fields),
        quotas=deficits(quotas, table, known_classes=schema.classes),
        weights=weights_figures(
            known.classes, known.totals(opts.count_kind).tolist(), scheme=opts.weight_scheme
        ),
        resampling=resample_figures(
            known.classes,
            known.split(training_split(splits), "images").tolist(),
            max_oversample=opts.max_oversample,
        ),
        options=opts,
    )


def _existing_splits(
    tasks: Sequence[Mapping[str, Any]], splits: tuple[str, ...]
) -> dict[int | str, str]:
    found: dict[int | str, str] = {}
    for task in tasks:
        task_id = task.get("id")
        if not isinstance(task_id, int | str):
            continue
        for holder in (task.get("meta"), task.get("data")):
            value = holder.get(SPLIT_FIELD) if isinstance(holder, Mapping) else None
            if value in splits:
                found[task_id] = str(value)
                break
    return found


def _strata(
    tasks: Sequence[Mapping[str, Any]],
    ids: Sequence[int | str],
    membership: np.ndarray[Any, np.dtype[np.bool_]],
    classes: tuple[str, ...],
    fields: Sequence[str],
) -> StrataReport | None:
    if not fields or not ids:
        return None
    by_id = {t.get("id"): t for t in tasks}
    metadata: dict[str, list[object]] = {name: [] for name in fields}
    for task_id in ids:
        task = by_id[task_id]
        data, meta = task.get("data"), task.get("meta")
        for name in fields:
            value = data.get(name) if isinstance(data, Mapping) else None
            if value is None and isinstance(meta, Mapping):
                value = meta.get(name)
            metadata[name].append(value)
    return stratify(membership, classes, metadata)
