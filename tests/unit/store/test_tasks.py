"""Synced tasks: upserts by Label Studio id, deletions, id lists, the count table."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from planner.core.task_labels import TaskLabels
from planner.store import Store
from planner.store.models import Task
from planner.store.sync_state import get_watermark, record_sync_error, set_watermark
from planner.store.tasks import (
    TaskUpdate,
    count_table,
    labelled_ids,
    mark_deleted,
    mark_gone,
    unlabelled_ids,
    upsert_tasks,
)
from tests.unit.store.conftest import T0


def _update(task_id: int, *classes: str, stamp: str = "", minutes: int = 0) -> TaskUpdate:
    status = "labelled" if classes else "unlabelled"
    labels = TaskLabels(
        task_id,
        status,
        "majority" if classes else "no_annotations",
        classes=classes,
        instances=dict.fromkeys(classes, 1),
        pixels=dict.fromkeys(classes, 0),
    )
    return TaskUpdate(
        ls_task_id=task_id,
        image=f"s3://bucket/{task_id}.jpg",
        meta={"camera": "north"},
        labels=labels,
        annotation_ids=(task_id * 10,) if classes else (),
        annotation_stamp=stamp,
        ls_updated_at=T0 + timedelta(minutes=minutes),
    )


def test_upsert_reports_new_changed_and_unchanged(store: Store, project_id: int) -> None:
    with store.session() as session:
        first = upsert_tasks(session, project_id, [_update(1), _update(2), _update(3)])
    assert (first.new, first.changed, first.unchanged) == ((1, 2, 3), (), ())
    with store.session() as session:
        second = upsert_tasks(
            session,
            project_id,
            [_update(1, minutes=5), _update(2, "Bus", stamp="a20", minutes=5), _update(4)],
        )
    assert (second.new, second.changed, second.unchanged) == ((4,), (2,), (1,))
    with store.session() as session:
        rows = {t.ls_task_id: t for t in session.exec(select(Task))}
        forced = upsert_tasks(session, project_id, [_update(1, minutes=5)], force=True)
    assert forced.changed == (1,)
    assert rows[1].ls_updated_at == T0 + timedelta(minutes=5)  # the bump is kept
    assert rows[2].state == "labelled"
    assert rows[2].labels == ["Bus"]
    assert rows[2].instances == {"Bus": 1}
    assert rows[2].annotation_ids == [20]
    assert rows[2].labelled_at is not None
    assert rows[2].labelled_at.tzinfo is not None
    assert len(rows) == 4


def test_deletions_past_one_id_list_are_all_marked(store: Store, project_id: int) -> None:
    """Marked with an UPDATE per chunk of ids (rows were loaded one object each)."""
    with store.session() as session:
        upsert_tasks(session, project_id, [_update(i) for i in range(1, 2502)])
    with store.session() as session:
        assert mark_deleted(session, project_id, alive={7}) == [i for i in range(1, 2502) if i != 7]
        assert mark_gone(session, project_id, [7, 8, 9999]) == [7]
        assert unlabelled_ids(session, project_id) == []


def test_deleted_tasks_are_kept_and_can_come_back(store: Store, project_id: int) -> None:
    with store.session() as session:
        upsert_tasks(session, project_id, [_update(1), _update(2, "Car", stamp="x"), _update(3)])
        assert mark_deleted(session, project_id, alive={1, 3}) == [2]
        assert mark_deleted(session, project_id, alive={1, 3}) == []
        assert labelled_ids(session, project_id) == []
        assert unlabelled_ids(session, project_id) == [1, 3]
        back = upsert_tasks(session, project_id, [_update(2, "Car", stamp="x")])
        assert back.changed == (2,)
        assert labelled_ids(session, project_id) == [2]


def test_the_count_table_counts_labelled_tasks_by_split(store: Store, project_id: int) -> None:
    with store.session() as session:
        upsert_tasks(
            session,
            project_id,
            [_update(1, "Bus", stamp="a"), _update(2, "Bus", "Car", stamp="b"), _update(3)],
        )
        for task in session.exec(select(Task)):
            task.split = "train" if task.ls_task_id == 1 else "val"
    with store.session() as session:
        table = count_table(session, project_id, ("Bus", "Car"), ("train", "val"))
    assert table.images.tolist() == [[1, 0, 0], [1, 1, 0]]


def test_the_watermark_moves_and_errors_are_kept(store: Store, project_id: int) -> None:
    with store.session() as session:
        assert get_watermark(session, project_id) is None
        set_watermark(session, project_id, T0, at=T0 + timedelta(seconds=3))
    with store.session() as session:
        record_sync_error(session, project_id, "Label Studio answered 502")
    with store.session() as session:
        assert get_watermark(session, project_id) == T0
        state = set_watermark(session, project_id, None, at=T0 + timedelta(hours=1))
        assert state.last_error is None
        assert get_watermark(session, project_id) is None
