"""NaN and inf in what the planner stores as JSON: null on SQLite and the real PostgreSQL."""

from __future__ import annotations

import math

from sqlmodel import select

from integrations.label_studio.fake import FakeLabelStudio
from planner.store import Store
from planner.store.events import record_stop_event
from planner.store.models import StopEventRecord, Task
from planner.sync import sync_project
from tests.unit.store.conftest import T0
from tests.unit.test_sync import CONFIG


def test_a_task_with_nan_in_its_data_syncs_and_stays_unchanged(store: Store) -> None:
    """An empty CSV cell arrives as NaN: PostgreSQL refused the task's JSON and every sync
    failed; SQLite stored it, and since NaN != NaN rewrote the task on every sync."""
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    odd = {"depth": math.nan, "gain": -math.inf, "nested": {"x": math.inf, "y": [1.5, math.nan]}}
    fake.import_tasks(
        pid,
        [{"data": {"image": f"/img/{i}.png", "depth": 1.0}} for i in range(3)]
        + [{"data": {"image": "/img/odd.png", **odd}}],
    )
    first = sync_project(fake, store, pid, now=T0)
    assert (first.new, first.changed) == (4, 0)
    second = sync_project(fake, store, pid, now=T0)
    assert (second.new, second.changed, second.unchanged) == (0, 0, 4)
    with store.session() as session:
        stored = session.exec(select(Task).where(Task.image == "/img/odd.png")).one()
    assert stored.meta == {"image": "/img/odd.png"}, "a value that is not a number is left out"


def test_non_finite_numbers_in_any_json_column_are_stored_as_null(
    store: Store, project_id: int
) -> None:
    with store.session() as session:
        record_stop_event(
            session,
            project_id=project_id,
            rule="kappa",
            fired=False,
            reason="nothing to compare yet",
            numbers={"kappa": math.nan, "eta_days": math.inf, "window": (1.0, -math.inf)},
            at=T0,
        )
        session.add(Task(project_id=project_id, ls_task_id=1, meta={"depth": math.nan}))
    with store.session() as session:
        event = session.exec(select(StopEventRecord)).one()
        task = session.exec(select(Task)).one()
    assert event.numbers == {"kappa": None, "eta_days": None, "window": [1.0, None]}
    assert task.meta == {"depth": None}


def test_a_nul_character_in_task_data_is_stored_as_the_replacement_character(
    store: Store,
) -> None:
    """PostgreSQL's text refuses NUL: a task whose image name held one failed every sync."""
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    fake.import_tasks(
        pid,
        [
            {"data": {"image": "/img/fine.png"}},
            {"data": {"image": "/img/a\x00.png", "note\x00": "x\x00y"}},
        ],
    )
    first = sync_project(fake, store, pid, now=T0)
    assert (first.new, first.changed) == (2, 0)
    second = sync_project(fake, store, pid, now=T0)
    assert (second.new, second.changed, second.unchanged) == (0, 0, 2)
    with store.session() as session:
        images = sorted(t.image or "" for t in session.exec(select(Task)).all())
    assert images == ["/img/a\ufffd.png", "/img/fine.png"]
