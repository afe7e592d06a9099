"""Batches: numbered, pushed, active, superseded, completed, expired; states only move forward."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from planner.errors import InputError
from planner.store import Store
from planner.store.batches import (
    PlannedItem,
    activate_served,
    active_batch,
    completion_ratio,
    create_batch,
    current_batch,
    expire_stale,
    items_of,
    mark_pushed,
    move_batch,
    move_item,
    move_items,
    refresh_progress,
)
from planner.store.models import Batch, BatchItem, Task
from tests.unit.store.conftest import T0

LATER = T0 + timedelta(hours=1)


def test_pushing_a_batch_supersedes_the_older_one(store: Store, project_id: int) -> None:
    with store.session() as session:
        first = create_batch(session, project_id, [PlannedItem(1, 1, "uncertain")], {}, at=T0)
        second = create_batch(
            session, project_id, [PlannedItem(2, 1, "rare_class", "Wheelchair")], {}, at=T0
        )
        assert (first.number, second.number) == (1, 2)
        assert first.tag != second.tag
        assert active_batch(session, project_id) is None
        assert current_batch(session, project_id) == second
        mark_pushed(session, first, view_id=4, at=T0)
        assert (first.state, first.view_id, first.pushed_at) == ("pushed", 4, T0)
        assert [i.state for i in items_of(session, int(first.id or 0))] == ["pushed"]
        assert active_batch(session, project_id) == first
        mark_pushed(session, second, view_id=5, at=LATER)
        assert first.state == "superseded"
        assert first.closed_at == LATER
        assert [i.state for i in items_of(session, int(first.id or 0))] == ["expired"]
        assert active_batch(session, project_id) == second
        assert second.pushed_at == LATER
        item = items_of(session, int(first.id or 0))[0]
        with pytest.raises(InputError, match="cannot go from 'expired' to 'active'"):
            move_item(item, "active")
        with pytest.raises(InputError, match="cannot go from 'superseded' to 'active'"):
            move_batch(first, "active", at=LATER)
        with pytest.raises(InputError, match="unknown state 'done'"):
            move_item(item, "done")


def test_items_complete_as_their_tasks_get_labelled(store: Store, project_id: int) -> None:
    planned = [PlannedItem(task, rank, "uncertain") for rank, task in enumerate((5, 6, 7), 1)]
    with store.session() as session:
        for task in (5, 6, 7):
            session.add(Task(project_id=project_id, ls_task_id=task, synced_at=T0))
        batch = create_batch(session, project_id, planned, {"k": 3}, at=T0)
        batch_id = int(batch.id or 0)
        assert completion_ratio(session, batch_id) == 0.0
        mark_pushed(session, batch, view_id=None, at=T0)
        assert refresh_progress(session, batch, at=LATER) == 0.0
        task = session.exec(select(Task).where(Task.ls_task_id == 6)).one()
        task.state, task.labels = "labelled", ["Bus"]
        assert refresh_progress(session, batch, at=LATER) == pytest.approx(1 / 3)
        assert move_items(session, batch_id, "expired", [5, 7]) == 2
        assert refresh_progress(session, batch, at=LATER) == pytest.approx(1 / 3)
        assert batch.state == "completed"  # every item finished
        assert batch.closed_at == LATER
        found = {i.ls_task_id: i.found for i in items_of(session, batch_id)}
        assert found == {5: [], 6: ["Bus"], 7: []}
        assert current_batch(session, project_id) is None
        with pytest.raises(InputError, match="from 'completed' to 'expired'"):
            move_items(session, batch_id, "expired", [6])


def test_a_pushed_batch_is_active_once_the_project_serves_it(store: Store, project_id: int) -> None:
    with store.session() as session:
        batch = create_batch(session, project_id, [PlannedItem(1, 1, "a")], {}, at=T0)
        assert activate_served(session, project_id, batch.tag, at=T0) is None  # not pushed yet
        mark_pushed(session, batch, view_id=3, at=T0)
        assert activate_served(session, project_id, None, at=LATER) is None
        assert activate_served(session, project_id, "planner-p1-b99999", at=LATER) is None
        assert batch.state == "pushed"
        assert activate_served(session, project_id, batch.tag, at=LATER) == batch
        assert batch.state == "active"
        assert [i.state for i in items_of(session, int(batch.id or 0))] == ["active"]
        assert activate_served(session, project_id, batch.tag, at=LATER) is None  # once
        assert batch.pushed_at == T0


def test_a_deleted_task_expires_its_item_instead_of_completing_it(
    store: Store, project_id: int
) -> None:
    with store.session() as session:
        for task, state in ((1, "deleted"), (2, "labelled")):
            session.add(Task(project_id=project_id, ls_task_id=task, state=state, synced_at=T0))
        batch = create_batch(
            session, project_id, [PlannedItem(1, 1, "a"), PlannedItem(2, 2, "b")], {}, at=T0
        )
        mark_pushed(session, batch, view_id=None, at=T0)
        assert refresh_progress(session, batch, at=LATER) == pytest.approx(1 / 2)
        states = {i.ls_task_id: i.state for i in items_of(session, int(batch.id or 0))}
        assert states == {1: "expired", 2: "completed"}
        assert batch.state == "completed"


def test_batches_older_than_the_ttl_expire(store: Store, project_id: int) -> None:
    ttl = timedelta(days=7)
    with store.session() as session:
        session.add(Task(project_id=project_id, ls_task_id=2, state="labelled", synced_at=T0))
        old = create_batch(
            session, project_id, [PlannedItem(1, 1, "a"), PlannedItem(2, 2, "b")], {}, at=T0
        )
        mark_pushed(session, old, view_id=None, at=T0)
        refresh_progress(session, old, at=T0)  # task 2 was labelled: its item is done
        young = create_batch(session, project_id, [PlannedItem(3, 1, "a")], {}, at=T0 + ttl)
        assert expire_stale(session, project_id, now=T0 + ttl - timedelta(seconds=1), ttl=ttl) == []
        assert expire_stale(session, project_id, now=T0 + ttl, ttl=ttl) == [old]
        assert (old.state, old.closed_at) == ("expired", T0 + ttl)
        states = {i.ls_task_id: i.state for i in items_of(session, int(old.id or 0))}
        assert states == {1: "expired", 2: "completed"}
        assert young.state == "planned"
        assert active_batch(session, project_id) is None
        with pytest.raises(InputError, match="from 'expired' to 'active'"):
            move_batch(old, "active", at=T0 + ttl)


def test_a_batch_lists_each_task_once(store: Store, project_id: int) -> None:
    with store.session() as session:
        with pytest.raises(InputError, match="each task once"):
            create_batch(
                session, project_id, [PlannedItem(1, 1, "a"), PlannedItem(1, 2, "b")], {}, at=T0
            )
        assert session.exec(select(Batch)).all() == []
    # the database holds the line too
    with store.session() as session:
        batch = create_batch(session, project_id, [PlannedItem(1, 1, "a")], {}, at=T0)
        session.add(BatchItem(batch_id=int(batch.id or 0), ls_task_id=1, rank=2, reason="b"))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()


def test_an_empty_batch_is_complete(store: Store, project_id: int) -> None:
    with store.session() as session:
        batch = create_batch(session, project_id, [], {}, at=T0)
        assert completion_ratio(session, int(batch.id or 0)) == 1.0
