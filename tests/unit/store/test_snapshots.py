"""Count snapshots, batch yields and the fixed stop set, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, timedelta

import numpy as np
import pytest

from planner.core.table import CountTable
from planner.errors import InputError
from planner.store import Store, ensure_project
from planner.store.batches import PlannedItem, create_batch, mark_pushed, refresh_progress
from planner.store.events import count_snapshots, record_counts
from planner.store.models import Task
from planner.store.snapshots import (
    batch_yields,
    count_history,
    snapshot_counts,
    table_from_dict,
    yield_series,
)
from planner.store.stop_set import ensure_stop_set, live_stop_set, stop_set
from tests.unit.store.conftest import T0


def _table(cars: int, rare: int) -> CountTable:
    images = np.array([[cars, rare], [1, 0]], dtype=np.int64)
    return CountTable(
        classes=("Car", "Wheelchair"), splits=("train", "val"), images=images,
        instances=images * 2, pixels=images * 100,
    )  # fmt: skip


def test_a_snapshot_is_kept_per_change_and_once_a_day(store: Store, project_id: int) -> None:
    with store.session() as session:
        assert snapshot_counts(session, project_id, _table(5, 1), annotations=6, at=T0)
        same = T0 + timedelta(minutes=5)
        assert snapshot_counts(session, project_id, _table(5, 1), annotations=6, at=same) is None
        skipped = T0 + timedelta(minutes=10)  # a skip: counts equal, annotations not
        assert snapshot_counts(session, project_id, _table(5, 1), annotations=7, at=skipped)
        assert snapshot_counts(
            session, project_id, _table(5, 1), annotations=7, at=T0 + timedelta(days=1, hours=1)
        )
        kept = count_snapshots(session, project_id)
    assert [s.annotations for s in kept] == [6, 7, 7]
    back = table_from_dict(kept[0].counts, ("Car", "Wheelchair", "Bicycle"), ("train", "val"))
    assert back.images.tolist() == [[5, 1, 0], [1, 0, 0]], "a class added since counts 0"
    assert back.pixels[0, 0] == 500


def test_the_history_is_thinned_to_a_day_s_last_before_the_rate_window(
    store: Store, project_id: int
) -> None:
    stamps = [T0 + timedelta(hours=6 * k) for k in range(12)]  # T0 is 12:00: four a day
    with store.session() as session:
        for k, at in enumerate(stamps):
            record_counts(session, project_id=project_id, counts=_table(k, 0).as_dict(),
                          annotations=k, at=at)  # fmt: skip
        history = count_history(
            session,
            project_id,
            ("Car", "Wheelchair"),
            ("train", "val"),
            since=stamps[1],
            every_since=stamps[8],
            zone=UTC,
        )
    # day 0 from its 18:00 on (since), day 1's 18:00, day 2's 06:00, then all from day 2 12:00
    assert [at for at, _ in history] == [stamps[k] for k in (1, 5, 7, 8, 9, 10, 11)]
    assert [int(t.images[0, 0]) for _, t in history] == [1, 5, 7, 8, 9, 10, 11]


def test_batch_yields_count_items_holding_a_class_short_when_planned(
    store: Store, project_id: int
) -> None:
    with store.session() as session:
        for task, labels in ((1, ["Car"]), (2, ["Wheelchair"]), (3, ["Car", "Wheelchair"])):
            session.add(
                Task(project_id=project_id, ls_task_id=task, state="labelled", labels=labels)
            )
        session.add(Task(project_id=project_id, ls_task_id=4))
        summary = {"classes": {"Car": {"shortfall": 0.0}, "Wheelchair": {"shortfall": 4.0}}}
        items = [PlannedItem(t, rank, "uncertain") for rank, t in enumerate((1, 2, 3, 4), 1)]
        batch = create_batch(session, project_id, items, summary, at=T0)
        mark_pushed(session, batch, 9, at=T0)
        refresh_progress(session, batch, at=T0)
        (found,) = batch_yields(session, project_id)
    assert (found.size, found.labelled, found.hits) == (4, 3, 2)
    assert found.short == ("Wheelchair",)
    assert dict(found.class_hits) == {"Wheelchair": 2}
    assert not found.finished, "one item is still open"
    assert yield_series([found], ["Wheelchair"]) == ([], [], {"Wheelchair": []})


def test_the_stop_set_is_drawn_once(store: Store, project_id: int) -> None:
    with store.session() as session:
        assert (
            ensure_stop_set(session, project_id, [], size=5, rng=np.random.default_rng(0), at=T0)
            == []
        )
        first = ensure_stop_set(
            session, project_id, range(100), size=5, rng=np.random.default_rng(0), at=T0
        )
        again = ensure_stop_set(
            session, project_id, range(200, 300), size=5, rng=np.random.default_rng(1), at=T0
        )
        assert first == again == stop_set(session, project_id)
        assert len(first) == 5
        assert set(first) <= set(range(100))
        with pytest.raises(InputError, match="positive"):
            ensure_stop_set(session, project_id, [1], size=0, rng=np.random.default_rng(0), at=T0)


def test_the_stop_set_in_play_leaves_out_tasks_the_rule_must_not_judge(
    store: Store, project_id: int
) -> None:
    states = ["unlabelled", "labelled", "deleted", "quarantined", "skipped"]
    with store.session() as session:
        other = int(ensure_project(session, ls_project_id=8).id or 0)
        for task_id, state in enumerate(states, start=1):
            session.add(Task(project_id=project_id, ls_task_id=task_id, state=state, image=state))
            # the same Label Studio id in another project: not this stop set's task
            session.add(Task(project_id=other, ls_task_id=task_id, image="other"))
        assert live_stop_set(session, project_id) == [], "nothing drawn, nothing drawn by it"
        assert stop_set(session, project_id) == []
        drawn = range(1, len(states) + 1)
        ensure_stop_set(session, project_id, drawn, size=5, rng=np.random.default_rng(0), at=T0)
        assert live_stop_set(session, project_id) == [(1, "unlabelled"), (2, "labelled")]
