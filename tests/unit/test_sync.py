"""Incremental sync against the in-memory Label Studio, into a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from integrations.label_studio.fake import IGNORE_SKIPPED, FakeLabelStudio
from planner.ports import PushBatch
from planner.status import project_statuses
from planner.store import Store, open_store
from planner.store.batches import PlannedItem, active_batch, create_batch, items_of, mark_pushed
from planner.store.models import Batch, Task
from planner.store.scores import unscored, write_scores
from planner.store.tasks import count_table, tasks_in_state, unlabelled_ids
from planner.sync import SyncOptions, sync_project
from tests.unit.integrations.contract import SkipsOne

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/></Choices>
</View>"""
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def choice(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": "kind", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as opened:
        yield opened


@pytest.fixture
def fake() -> FakeLabelStudio:
    return FakeLabelStudio()


def _project(fake: FakeLabelStudio, n: int = 20) -> tuple[int, list[int]]:
    pid = fake.create_project("traffic", CONFIG)
    ids = fake.import_tasks(
        pid, [{"data": {"image": f"/img/{i}.png", "time": "day"}} for i in range(n)]
    )
    return pid, ids


def _totals(store: Store, project_id: int) -> dict[str, int]:
    with store.session() as session:
        table = count_table(session, project_id, ("Car", "Wheelchair"), ("train", "val", "test"))
    return dict(zip(table.classes, table.totals("images").tolist(), strict=True))


def test_first_sync_counts_what_was_annotated(fake: FakeLabelStudio, store: Store) -> None:
    pid, ids = _project(fake)
    for task in ids[:8]:
        fake.annotate(task, choice("Car"))
    fake.annotate(ids[8], choice("Wheelchair"))
    fake.annotate(ids[9], [], cancelled=True)
    report = sync_project(fake, store, pid, now=NOW)
    assert report.full
    assert (report.seen, report.new) == (20, 20)
    assert _totals(store, report.project_id) == {"Car": 8, "Wheelchair": 1, "unknown": 0}
    with store.session() as session:
        states = {t.ls_task_id: t.state for t in session.exec(select(Task)).all()}
        splits = {t.ls_task_id: t.split for t in session.exec(select(Task)).all()}
    assert states[ids[9]] == "unlabelled"
    assert all(splits[i] in ("train", "val", "test") for i in ids[:9])
    assert splits[ids[10]] is None


def test_a_second_sync_changes_nothing(fake: FakeLabelStudio, store: Store) -> None:
    pid, ids = _project(fake)
    fake.annotate(ids[0], choice("Car"))
    sync_project(fake, store, pid, now=NOW)
    again = sync_project(fake, store, pid, now=NOW + timedelta(minutes=5))
    assert not again.full
    assert (again.new, again.changed) == (0, 0)
    assert again.unchanged == again.seen  # only the overlap window is read again


def test_prediction_pushes_are_not_mistaken_for_annotations(
    fake: FakeLabelStudio, store: Store
) -> None:
    pid, ids = _project(fake)
    fake.annotate(ids[0], choice("Car"))
    first = sync_project(fake, store, pid, now=NOW)
    assert first.watermark is not None
    fake.push_batch(pid, PushBatch("planner-b1", [(ids[3], 1), (ids[4], 2)]))
    fake.predict(ids[0], 0.9, "someone-elses-model")  # a single save, as an ML backend does
    resurfaced = {t.id for t in fake.iter_tasks(pid, updated_after=first.watermark)}
    assert resurfaced == {ids[0], ids[3], ids[4]}, "the pushes bumped updated_at"
    report = sync_project(fake, store, pid, now=NOW + timedelta(minutes=5))
    assert (report.new, report.changed) == (0, 0)
    assert report.unchanged == report.seen >= 3
    assert _totals(store, report.project_id) == {"Car": 1, "Wheelchair": 0, "unknown": 0}


def test_edits_deletions_and_splits_that_never_move(fake: FakeLabelStudio, store: Store) -> None:
    pid, ids = _project(fake)
    annotation = fake.annotate(ids[0], choice("Car"))
    fake.annotate(ids[1], choice("Car"))
    first = sync_project(fake, store, pid, now=NOW)
    with store.session() as session:
        before = {t.ls_task_id: t.split for t in session.exec(select(Task)).all()}
    fake.update_annotation(annotation, choice("Wheelchair"))
    fake.delete_task(ids[1])
    report = sync_project(fake, store, pid, now=NOW + timedelta(minutes=5), reconcile=True)
    assert report.changed == 1
    assert report.deleted == (ids[1],)
    assert _totals(store, first.project_id) == {"Car": 0, "Wheelchair": 1, "unknown": 0}
    with store.session() as session:
        after = {t.ls_task_id: t.split for t in session.exec(select(Task)).all()}
    assert after[ids[0]] == before[ids[0]]


def test_edited_task_data_reaches_the_store(fake: FakeLabelStudio, store: Store) -> None:
    pid, ids = _project(fake)
    fake.annotate(ids[0], choice("Car"))
    sync_project(fake, store, pid, now=NOW)
    for task in (ids[0], ids[1]):  # labelled and not: the annotations are the same
        (current,) = fake.tasks_by_id(pid, [task])
        fake.edit_task_data(task, {**current.data, "time": "night"})
    report = sync_project(fake, store, pid, now=NOW + timedelta(minutes=5))
    assert (report.changed, report.new) == (2, 0)
    with store.session() as session:
        rows = {t.ls_task_id: t for t in session.exec(select(Task)).all()}
    assert [rows[t].meta["time"] for t in ids[:3]] == ["night", "night", "day"]
    assert rows[ids[0]].labels == ["Car"], "the labels stay"
    again = sync_project(fake, store, pid, now=NOW + timedelta(minutes=10))
    assert again.changed == 0


def test_a_task_showing_another_image_loses_its_scores_and_is_scored_again(
    fake: FakeLabelStudio, store: Store
) -> None:
    pid, ids = _project(fake, 3)
    first = sync_project(fake, store, pid, now=NOW)
    with store.session() as session:
        for version in ("m1", "m2"):
            write_scores(
                session,
                project_id=first.project_id,
                model_version=version,
                task_ids=ids,
                probs=[[0.9, 0.1]] * 3,
            )
    (current,) = fake.tasks_by_id(pid, [ids[0]])
    fake.edit_task_data(ids[0], {**current.data, "image": "/data/replaced.png"})
    (other,) = fake.tasks_by_id(pid, [ids[1]])
    fake.edit_task_data(ids[1], {**other.data, "time": "night"})  # same image: scores stay
    sync_project(fake, store, pid, now=NOW + timedelta(minutes=5))
    with store.session() as session:
        for version in ("m1", "m2"):
            left = unscored(
                session, project_id=first.project_id, model_version=version, task_ids=ids
            )
            assert left == [ids[0]], version


def test_bad_data_is_quarantined_and_the_rest_syncs(fake: FakeLabelStudio, store: Store) -> None:
    pid, ids = _project(fake, 5)
    fake.annotate(ids[0], [{"from_name": "kind", "to_name": "image", "type": "choices"}])
    fake.annotate(ids[1], choice("Scooter"))
    fake.annotate(ids[2], choice("Car"))
    report = sync_project(fake, store, pid, now=NOW)
    assert [task for task, _ in report.quarantined] == [ids[0], ids[1]]
    assert "value" in report.quarantined[0][1]
    assert "'Scooter' of 'kind' is not in the label config" in report.quarantined[1][1]
    # an unknown label is held apart, not counted: the config has no class to count it under
    assert _totals(store, report.project_id) == {"Car": 1, "Wheelchair": 0, "unknown": 0}


def test_a_changed_label_config_reads_everything_again(fake: FakeLabelStudio, store: Store) -> None:
    pid, ids = _project(fake, 3)
    fake.annotate(ids[0], choice("Wheelchair"))
    sync_project(fake, store, pid, now=NOW)
    state = fake._project(pid)
    new_config = CONFIG.replace('<Choice value="Wheelchair"/>', '<Choice value="Bicycle"/>')
    state.project = type(state.project)(state.project.id, state.project.title, new_config)
    report = sync_project(fake, store, pid, now=NOW + timedelta(minutes=1))
    assert report.full
    with store.session() as session:
        task = session.exec(select(Task).where(Task.ls_task_id == ids[0])).one()
    assert task.state == "quarantined"
    assert "'Wheelchair' of 'kind' is not in the label config" in str(task.problem)


def test_options_reach_the_split_assignment(fake: FakeLabelStudio, store: Store) -> None:
    pid, ids = _project(fake, 10)
    for task in ids:
        fake.annotate(task, choice("Car"))
    report = sync_project(
        fake, store, pid, now=NOW, options=SyncOptions(split_ratios={"train": 0.5, "val": 0.5})
    )
    assert report.newly_labelled == 10
    with store.session() as session:
        splits = [t.split for t in session.exec(select(Task)).all()]
    assert splits.count("train") == splits.count("val") == 5


class _Twice:
    """A backend whose listing returns an edited task twice, as a keyset listing may."""

    def __init__(self, inner: FakeLabelStudio) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def iter_tasks(self, project_id: int, **kwargs: Any) -> Iterator[Any]:
        tasks = list(self.inner.iter_tasks(project_id, **kwargs))
        yield from tasks
        yield tasks[0]


def test_a_task_listed_twice_is_stored_once(fake: FakeLabelStudio, store: Store) -> None:
    pid, ids = _project(fake, 4)
    fake.annotate(ids[0], choice("Car"))
    report = sync_project(_Twice(fake), store, pid, now=NOW)  # type: ignore[arg-type]
    assert report.new == 4
    with store.session() as session:
        assert len(session.exec(select(Task)).all()) == 4


def test_the_image_is_the_field_the_label_config_names(fake: FakeLabelStudio, store: Store) -> None:
    config = """<View><Header value="$title"/><Text name="caption" value="$caption"/>
<Image name="photo" value="$picture"/>
<Choices name="kind" toName="photo"><Choice value="Car"/></Choices></View>"""
    pid = fake.create_project("named", config)
    data = {"caption": "a red car", "title": "t", "picture": "/data/upload/7/car.png"}
    (task_id,) = fake.import_tasks(pid, [{"data": data}])
    sync_project(fake, store, pid, now=NOW)
    with store.session() as session:
        task = session.exec(select(Task).where(Task.ls_task_id == task_id)).one()
    assert task.image == "/data/upload/7/car.png"
    assert task.meta["caption"] == "a red car"


def test_reconciliation_adds_the_tasks_a_listing_missed(
    fake: FakeLabelStudio, store: Store
) -> None:
    pid, ids = _project(fake, 5)
    fake.annotate(ids[2], choice("Wheelchair"))
    skipping = SkipsOne(fake, ids[2])
    first = sync_project(skipping, store, pid, now=NOW)  # type: ignore[arg-type]
    assert first.seen == 5  # four listed, the fifth found by the reconciliation of a full sync
    assert first.recovered == (ids[2],)
    assert _totals(store, first.project_id)["Wheelchair"] == 1
    fake.annotate(ids[4], choice("Car"))
    later = NOW + timedelta(minutes=5)
    fake.delete_task(ids[0])
    missed = sync_project(SkipsOne(fake, ids[4]), store, pid, now=later)  # type: ignore[arg-type]
    assert (missed.recovered, missed.deleted) == ((), ())  # no reconciliation due yet
    report = sync_project(
        SkipsOne(fake, ids[4]),  # type: ignore[arg-type]
        store,
        pid,
        now=later,
        reconcile=True,
    )
    assert report.recovered == (ids[4],)
    assert report.deleted == (ids[0],)
    assert _totals(store, report.project_id) == {"Car": 1, "Wheelchair": 1, "unknown": 0}
    again = sync_project(fake, store, pid, now=later, reconcile=True)
    assert (again.recovered, again.new, again.changed) == ((), 0, 0)


def test_a_pushed_batch_goes_active_when_served_and_expires_with_age(
    fake: FakeLabelStudio, store: Store
) -> None:
    pid, ids = _project(fake, 4)
    first = sync_project(fake, store, pid, now=NOW)
    with store.session() as session:
        batch = create_batch(session, first.project_id, [PlannedItem(ids[1], 1, "a")], {}, at=NOW)
        tag = batch.tag
        fake.push_batch(pid, PushBatch(tag, [(ids[1], 1)]))
        mark_pushed(session, batch, view_id=1, at=NOW)
    options = SyncOptions(batch_ttl=timedelta(days=2))
    sync_project(fake, store, pid, now=NOW + timedelta(minutes=1), options=options)
    with store.session() as session:
        row = session.exec(select(Batch).where(Batch.tag == tag)).one()
        assert row.state == "active"
        assert [i.state for i in items_of(session, int(row.id or 0))] == ["active"]
    stale = sync_project(
        fake, store, pid, now=NOW + timedelta(days=2), options=options, reconcile=True
    )
    assert stale.expired_batches == (tag,)
    with store.session() as session:
        row = session.exec(select(Batch).where(Batch.tag == tag)).one()
        assert row.state == "expired"
        assert active_batch(session, first.project_id) is None


def test_a_listing_shifted_by_an_edit_is_compared_with_the_store_at_once(
    fake: FakeLabelStudio, store: Store
) -> None:
    pid, ids = _project(fake, 8)
    first = sync_project(fake, store, pid, now=NOW)
    annotations = [fake.annotate(task, choice("Car")) for task in ids[:6]]
    edited = iter(annotations)

    def edit_the_oldest(pages_read: int) -> None:  # while the planner reads the second page
        if pages_read == 1:
            fake.update_annotation(next(edited), choice("Wheelchair"))

    fake.between_pages = edit_the_oldest
    listed = [t.id for t in fake.iter_tasks(pid, updated_after=first.watermark, page_size=2)]
    # the edited task moved to the end, the rest one place back: ids[2] slipped past page 2
    assert listed == [ids[0], ids[1], ids[3], ids[4], ids[5], ids[0]]
    options = SyncOptions(page_size=2, overlap=timedelta(0))
    report = sync_project(fake, store, pid, now=NOW + timedelta(minutes=5), options=options)
    # the sync's own listing: 1 2 | ids[1] edited | 4 5 | 0 1: ids[3] slipped past
    assert report.recovered == (ids[3],), "not left for the reconciliation hours later"
    assert _totals(store, first.project_id) == {"Car": 4, "Wheelchair": 2, "unknown": 0}
    fake.between_pages = None
    again = sync_project(fake, store, pid, now=NOW + timedelta(minutes=6), options=options)
    assert (again.new, again.changed, again.recovered) == (0, 0, ())


def _states(store: Store) -> dict[int, str]:
    with store.session() as session:
        return {t.ls_task_id: t.state for t in session.exec(select(Task)).all()}


def test_a_task_label_studio_finished_with_a_skip_leaves_the_pool(
    fake: FakeLabelStudio, store: Store
) -> None:
    pid, ids = _project(fake, 4)
    fake.set_skip_queue(pid, IGNORE_SKIPPED)  # a skip completes the task: never served again
    fake.annotate(ids[0], [], cancelled=True)
    report = sync_project(fake, store, pid, now=NOW)
    assert _states(store)[ids[0]] == "skipped"
    with store.session() as session:
        assert unlabelled_ids(session, report.project_id) == ids[1:], "no batch offers it"
        (status,) = project_statuses(session)
    assert (status.tasks["skipped"], status.tasks["unlabelled"]) == (1, 3)
    assert _totals(store, report.project_id) == {"Car": 0, "Wheelchair": 0, "unknown": 0}
    fake.annotate(ids[0], choice("Car"))
    sync_project(fake, store, pid, now=NOW + timedelta(minutes=5))
    assert _states(store)[ids[0]] == "labelled"
    assert _totals(store, report.project_id)["Car"] == 1


def test_a_task_finished_by_a_changed_skip_queue_leaves_the_pool_when_next_listed(
    fake: FakeLabelStudio, store: Store
) -> None:
    pid, ids = _project(fake, 3)
    fake.annotate(ids[0], [], cancelled=True)
    sync_project(fake, store, pid, now=NOW)
    assert _states(store)[ids[0]] == "unlabelled", "requeued for others: still served"
    fake.set_skip_queue(pid, IGNORE_SKIPPED)  # is_labeled counted again; updated_at stays
    fake.push_batch(pid, PushBatch("planner-b1", [(ids[0], 1)]))  # its rank write bumps it
    report = sync_project(fake, store, pid, now=NOW + timedelta(minutes=5))
    assert report.changed == 1
    assert _states(store)[ids[0]] == "skipped"


def test_annotations_made_from_the_planners_predictions_are_no_labels(
    fake: FakeLabelStudio, store: Store
) -> None:
    pid, ids = _project(fake, 4)
    first = sync_project(fake, store, pid, now=NOW)
    fake.push_batch(pid, PushBatch("planner-b1", [(ids[0], 1), (ids[1], 2)]))
    fake.annotate(ids[1], choice("Car"))
    fake.annotations_from_predictions(pid)  # "Create Annotations From Predictions"
    sync_project(fake, store, pid, now=NOW + timedelta(minutes=5))
    with store.session() as session:
        rows = {t.ls_task_id: t for t in session.exec(select(Task)).all()}
    assert rows[ids[0]].state == "quarantined", "held apart, not a background image"
    assert "Create Annotations From Predictions" in str(rows[ids[0]].problem)
    assert "delete them in Label Studio" in str(rows[ids[0]].problem)
    assert (rows[ids[1]].state, rows[ids[1]].labels) == ("labelled", ["Car"])
    assert _totals(store, first.project_id) == {"Car": 1, "Wheelchair": 0, "unknown": 0}
    with store.session() as session:
        assert sorted(
            t.ls_task_id for t in tasks_in_state(session, first.project_id, "labelled")
        ) == [ids[1]]
