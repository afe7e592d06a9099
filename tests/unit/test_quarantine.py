"""Held-apart tasks against the in-memory Label Studio, into a real SQLite store (the real
server's version of these is tests/faults_data/test_bad_data.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from integrations.label_studio.fake import FakeLabelStudio
from planner.quarantine import MODEL_OUTPUT_NOT_FINITE, count_held_apart, held_apart
from planner.status import project_statuses
from planner.store import Store, open_store, write_scores
from planner.store.models import ScoreRecord
from planner.sync import sync_project

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/></Choices>
<RectangleLabels name="box" toName="image"><Label value="Car"/></RectangleLabels>
</View>"""
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def choice(label: str, control: str = "kind") -> dict[str, Any]:
    return {
        "from_name": control,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [label]},
    }


def box(**value: Any) -> dict[str, Any]:
    return {
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {"rectanglelabels": ["Car"], **value},
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as opened:
        yield opened


def _held(store: Store, project_id: int) -> dict[int, str]:
    with store.session() as session:
        return {h.task_id: h.problem for h in held_apart(session, project_id)}


def test_what_is_held_apart_and_what_is_not(store: Store) -> None:
    fake = FakeLabelStudio()
    pid = fake.create_project("p", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(6)])
    fake.annotate(ids[0], [choice("Car")])
    fake.annotate(ids[1], [choice("Scooter")])
    fake.annotate(ids[2], [choice("Car", control="ghost")])
    fake.annotate(ids[3], [choice("Car"), box(x=1, y=1)])  # a box without its size
    fake.annotate(ids[4], [box(x=1, y=1, width=5, height=5)])  # no image size: a pixels note
    report = sync_project(fake, store, pid, now=NOW)
    held = _held(store, report.project_id)
    assert set(held) == {ids[1], ids[2], ids[3]}
    assert "'Scooter' of 'kind' is not in the label config" in held[ids[1]]
    assert "'ghost', a control the label config does not have" in held[ids[2]]
    assert "has no value.width" in held[ids[3]]
    assert {t for t, _ in report.quarantined} == set(held)
    with store.session() as session:
        status = project_statuses(session)[0]
    assert status.held_apart == 3
    assert status.tasks["quarantined"] == 3
    assert {h.task_id for h in status.latest_held} == set(held)
    assert all("Label Studio" in h.fix for h in status.latest_held)


def test_a_fixed_or_deleted_task_leaves_on_the_next_sync(store: Store) -> None:
    fake = FakeLabelStudio()
    pid = fake.create_project("p", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(3)])
    broken = fake.annotate(ids[0], [choice("Scooter")])
    fake.annotate(ids[1], [choice("Lorry")])
    first = sync_project(fake, store, pid, now=NOW)
    assert set(_held(store, first.project_id)) == {ids[0], ids[1]}
    again = sync_project(fake, store, pid, now=NOW + timedelta(minutes=1))
    assert set(_held(store, first.project_id)) == {ids[0], ids[1]}, "kept while still bad"
    assert again.quarantined == (), "an unchanged task is not read again"
    fake.update_annotation(broken, [choice("Wheelchair")])
    fake.delete_task(ids[1])
    sync_project(fake, store, pid, now=NOW + timedelta(minutes=2), reconcile=True)
    assert _held(store, first.project_id) == {}
    with store.session() as session:
        assert count_held_apart(session, first.project_id) == 0


def _first_image_unscorable(
    store: Store, reason: str
) -> tuple[FakeLabelStudio, int, list[int], int]:
    """Three tasks synced, the first's image marked unscorable with ``reason``, synced again:
    the fake, its project, the task ids and the planner's project id."""
    fake = FakeLabelStudio()
    pid = fake.create_project("p", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/img/{i}.png"}} for i in range(3)])
    first = sync_project(fake, store, pid, now=NOW)
    with store.session() as session:
        write_scores(
            session,
            project_id=first.project_id,
            model_version="m1",
            task_ids=[ids[1], ids[2]],
            probs=[[0.5, 0.5], [0.9, 0.1]],
            unscorable={ids[0]: reason},
        )
    sync_project(fake, store, pid, now=NOW + timedelta(minutes=1))
    return fake, pid, ids, first.project_id


def test_an_unscorable_image_is_held_until_the_task_gets_another(store: Store) -> None:
    fake, pid, ids, project_id = _first_image_unscorable(store, "fetching /img/0.png answered 404")
    assert _held(store, project_id) == {ids[0]: "fetching /img/0.png answered 404"}
    state = fake._project(pid)
    task = state.tasks[ids[0]]
    state.tasks[ids[0]] = replace(
        task, data={"image": "/img/0-fixed.png"}, updated_at=NOW + timedelta(minutes=2)
    )
    sync_project(fake, store, pid, now=NOW + timedelta(minutes=3))
    assert _held(store, project_id) == {}
    with store.session() as session:
        marks = session.exec(select(ScoreRecord).where(ScoreRecord.ls_task_id == ids[0])).all()
    assert marks == [], "the unscorable mark went: the next cycle scores the new image"


def test_an_image_the_model_failed_asks_for_a_model_fix_not_an_image_fix(store: Store) -> None:
    _, _, _, project_id = _first_image_unscorable(store, MODEL_OUTPUT_NOT_FINITE)
    with store.session() as session:
        (held,) = held_apart(session, project_id)
    assert held.problem == MODEL_OUTPUT_NOT_FINITE
    assert "fix the model" in held.fix
    assert "make the image readable" not in held.fix
