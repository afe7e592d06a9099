"""A report built from the example traffic project, with made-up quotas, snapshots and batches."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from planner.core.acquisition import entropy
from planner.core.counting import CountResult, count_tasks
from planner.core.labels import parse_label_config
from planner.core.quotas import Quota, deficits
from planner.core.selection import select_batch
from planner.core.stop_policy import StopConfig, StopState, evaluate_stop_rules
from planner.core.strata import stratify
from planner.examples.traffic import make_example
from planner.reports import BatchRecord, ReportData, build_report

NOW = datetime(2026, 11, 8, 12, 0, tzinfo=UTC)
SPLITS = ("train", "val", "test")
QUOTAS = (
    Quota("Car", target=600),
    Quota("Pedestrian", target=400, split_targets={"train": 300, "val": 40, "test": 40}),
    Quota("Bicycle", target=200, criticality=2.0),
    Quota("Wheelchair", target=80, split_targets={"train": 60, "val": 10, "test": 10}),
)


def _split(task: Mapping[str, Any]) -> str:
    return SPLITS[0] if task["id"] % 10 < 8 else SPLITS[1 + task["id"] % 2]


def count(tasks: list[dict[str, Any]]) -> CountResult:
    schema = parse_label_config(make_example().label_config)
    return count_tasks(tasks, schema, split_of=_split, splits=SPLITS)


@pytest.fixture(scope="session")
def traffic_counts() -> CountResult:
    return count(make_example().tasks)


@pytest.fixture(scope="session")
def traffic_report(traffic_counts: CountResult) -> ReportData:
    example = make_example()
    table = traffic_counts.table
    snapshots = [
        (NOW - timedelta(days=3 - day), count(example.tasks[: 300 * (day + 1)]).table)
        for day in range(3)
    ]
    status = deficits(QUOTAS, table)
    shortfall = [float(s.deficit) for s in status.statuses if s.in_table]
    known = tuple(s.class_name for s in status.statuses if s.in_table)
    columns = [table.classes.index(c) for c in known]
    batch = select_batch(
        example.pool_ids,
        entropy(example.pool_probs),
        example.pool_probs,
        shortfall,
        batch_size=25,
        rng=np.random.default_rng(0),
        classes=known,
    )
    decision = evaluate_stop_rules(
        StopConfig(),
        StopState(deficits={s.class_name: s.deficit for s in status.statuses}),
    )
    labelled = [t for t in traffic_counts.tasks if t.status == "labelled"]
    membership = np.array([[c in t.classes for c in known] for t in labelled])
    by_id = {task["id"]: task for task in example.tasks}
    metadata = {"time": [by_id[t.task_id]["data"]["time"] for t in labelled]}
    batches = [
        BatchRecord("b1", NOW - timedelta(days=2), 50, 20, {"Wheelchair": 5}),
        BatchRecord("b2", NOW - timedelta(days=1), 50, 9, {"Wheelchair": 2}),
    ]
    assert columns  # the table has every quota class
    return build_report(
        project="traffic",
        now=NOW,
        table=table,
        quotas=QUOTAS,
        snapshots=snapshots,
        batches=batches,
        stop=decision,
        next_batch=batch,
        strata=stratify(membership, known, metadata),
    )
