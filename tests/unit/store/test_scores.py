"""Model scores: written once per (task, model version), read back as arrays."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import event
from sqlmodel import col, func, select, update

from planner.errors import InputError
from planner.store import Store, load_scores, prune_scores, unscored, write_scores
from planner.store.batches import PlannedItem, create_batch, move_batch
from planner.store.db import ensure_project, open_store
from planner.store.events import record_model_version
from planner.store.models import Batch, ScoreRecord, Task
from planner.store.scores import forget_scores


def test_scores_are_written_once_and_read_back(store: Store, project_id: int) -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((5, 3)).astype(np.float32)
    embeddings = rng.random((5, 4)).astype(np.float32)
    ids = [14, 10, 12, 11, 13]  # any order in, task-id order out
    args = {"project_id": project_id, "model_version": "m1", "task_ids": ids}
    with store.session() as session:
        assert write_scores(session, **args, probs=probs, embeddings=embeddings) == 5
    with store.session() as session:
        # a redelivered chunk writes nothing, even with different numbers
        assert write_scores(session, **args, probs=probs * 0, embeddings=embeddings) == 0
        assert (
            write_scores(
                session,
                project_id=project_id,
                model_version="m1",
                task_ids=[],
                probs=None,
                unscorable={15: "image 404"},
            )
            == 1
        )
        rows = session.exec(select(func.count()).select_from(ScoreRecord)).one()
        assert rows == 6
    with store.session() as session:
        scores = load_scores(session, project_id=project_id, model_version="m1")
        some = load_scores(session, project_id=project_id, model_version="m1", task_ids=[13, 10])
    order = np.argsort(ids)
    assert scores.task_ids.tolist() == sorted(ids)
    assert scores.task_ids.dtype == np.int64
    np.testing.assert_array_equal(scores.probs, probs[order])
    assert scores.probs.dtype == np.float32
    assert scores.embeddings is not None
    np.testing.assert_array_equal(scores.embeddings, embeddings[order])
    assert scores.unscorable == {15: "image 404"}
    assert some.task_ids.tolist() == [10, 13]
    np.testing.assert_array_equal(some.probs, probs[[1, 4]])
    assert some.unscorable == {}


def test_bald_is_stored_per_row_and_read_back_in_task_order(store: Store, project_id: int) -> None:
    probs = np.full((3, 2), 0.5, np.float32)
    with store.session() as session:
        write_scores(
            session,
            project_id=project_id,
            model_version="mc",
            task_ids=[3, 1, 2],
            probs=probs,
            bald=[0.3, 0.1, 0.2],
        )
        write_scores(
            session, project_id=project_id, model_version="plain", task_ids=[1], probs=probs[:1]
        )
        with pytest.raises(InputError, match="bald must be"):
            write_scores(
                session,
                project_id=project_id,
                model_version="x",
                task_ids=[1],
                probs=probs[:1],
                bald=[0.1, 0.2],
            )
    with store.session() as session:
        mc = load_scores(session, project_id=project_id, model_version="mc")
        plain = load_scores(session, project_id=project_id, model_version="plain")
    assert mc.bald is not None
    np.testing.assert_allclose(mc.bald, [0.1, 0.2, 0.3])
    assert plain.bald is None


def test_unscored_lists_the_missing_ids_in_input_order(store: Store, project_id: int) -> None:
    with store.session() as session:
        write_scores(
            session,
            project_id=project_id,
            model_version="m1",
            task_ids=[12],
            probs=np.ones((1, 2)),
            unscorable={15: "corrupt"},
        )
        done = unscored(
            session, project_id=project_id, model_version="m1", task_ids=[16, 12, 9, 15]
        )
        assert done == [16, 9]  # an unscorable row counts as scored: it will not be retried
        assert unscored(session, project_id=project_id, model_version="m2", task_ids=[12]) == [12]


def _show(store: Store, project_id: int, task_id: int, image: str) -> None:
    """Task ``task_id`` shows ``image`` now (a sync stored it)."""
    with store.session() as session:
        query = select(Task).where(Task.project_id == project_id, Task.ls_task_id == task_id)
        task = session.exec(query).first() or Task(project_id=project_id, ls_task_id=task_id)
        task.image = image
        session.add(task)


def _write(store: Store, project_id: int, value: float, images: dict[int, str] | None) -> int:
    with store.session() as session:
        return write_scores(
            session,
            project_id=project_id,
            model_version="m",
            task_ids=[5, 6],
            probs=np.full((2, 2), value),
            images=images,
        )


def _unscored(store: Store, project_id: int) -> list[int]:
    with store.session() as session:
        return unscored(session, project_id=project_id, model_version="m", task_ids=[5, 6])


def test_scores_of_an_image_the_task_no_longer_shows_are_not_kept(
    store: Store, project_id: int
) -> None:
    """A chunk in flight for a task's old image wrote after the sync forgot its scores: the
    insert then counted the task scored, and the old image's scores stood for the new one."""
    _show(store, project_id, 5, "/img/new.png")
    _show(store, project_id, 6, "/img/six.png")
    with store.session() as session:
        forget_scores(session, project_id=project_id, task_ids=[5])
    old = {5: "/img/old.png", 6: "/img/six.png"}
    assert _write(store, project_id, 0.1, old) == 1, "only task 6's row: 5 shows another image"
    assert _unscored(store, project_id) == [5]
    assert _write(store, project_id, 0.9, {5: "/img/new.png", 6: "/img/six.png"}) == 1
    assert _unscored(store, project_id) == []
    assert _write(store, project_id, 0.5, {5: "/img/new.png", 6: "/img/six.png"}) == 0
    with store.session() as session:
        scores = load_scores(session, project_id=project_id, model_version="m")
    np.testing.assert_allclose(scores.probs, [[0.9, 0.9], [0.1, 0.1]])


def test_a_row_of_another_image_counts_unscored_and_is_replaced(
    store: Store, project_id: int
) -> None:
    """The write's check and the sync's change crossed (SQLite reads outside the write
    transaction): the row of the old image is taken for unscored and the rescoring replaces
    it. A row from before image digests (None) counts as the task's image."""
    _show(store, project_id, 5, "/img/old.png")
    assert _write(store, project_id, 0.1, {5: "/img/old.png"}) == 2
    _show(store, project_id, 5, "/img/new.png")
    with store.session() as session:
        session.execute(
            update(ScoreRecord).where(col(ScoreRecord.ls_task_id) == 6).values(image_digest=None)
        )
    _show(store, project_id, 6, "/img/six.png")
    assert _unscored(store, project_id) == [5]
    assert _write(store, project_id, 0.9, {5: "/img/new.png", 6: "/img/six.png"}) == 1
    assert _unscored(store, project_id) == []
    with store.session() as session:
        scores = load_scores(session, project_id=project_id, model_version="m")
    np.testing.assert_allclose(scores.probs, [[0.9, 0.9], [0.1, 0.1]])


def test_versions_and_projects_are_kept_apart(store: Store, project_id: int) -> None:
    with store.session() as session:
        for version, value in (("m1", 0.25), ("m2", 0.75)):
            write_scores(
                session,
                project_id=project_id,
                model_version=version,
                task_ids=[1],
                probs=np.full((1, 2), value),
            )
        m2 = load_scores(session, project_id=project_id, model_version="m2")
        other = load_scores(session, project_id=project_id + 1, model_version="m2")
    np.testing.assert_array_equal(m2.probs, [[0.75, 0.75]])
    assert m2.embeddings is None
    assert other.task_ids.shape == (0,)
    assert other.probs.shape == (0, 0)


@pytest.mark.parametrize(
    ("probs", "embeddings", "match"),
    [
        (np.zeros((3, 2)), None, "probs must be"),
        (np.zeros(2), None, "probs must be"),
        (None, None, "no probs"),
        (np.zeros((2, 2)), np.zeros((1, 4)), "embeddings must be"),
    ],
)
def test_bad_score_shapes_are_refused(
    store: Store,
    project_id: int,
    probs: np.ndarray | None,
    embeddings: np.ndarray | None,
    match: str,
) -> None:
    with store.session() as session, pytest.raises(InputError, match=match):
        write_scores(
            session,
            project_id=project_id,
            model_version="m",
            task_ids=[1, 2],
            probs=probs,
            embeddings=embeddings,
        )


def test_mixed_class_counts_in_one_version_are_refused(store: Store, project_id: int) -> None:
    with store.session() as session:
        for task, width in ((1, 2), (2, 3)):
            write_scores(
                session,
                project_id=project_id,
                model_version="m",
                task_ids=[task],
                probs=np.zeros((1, width)),
            )
        with pytest.raises(InputError, match="mix shapes"):
            load_scores(session, project_id=project_id, model_version="m")


@pytest.mark.slow
def test_a_hundred_thousand_rows_load_vectorised(store: Store, project_id: int) -> None:
    n, c, d = 100_000, 8, 16
    rng = np.random.default_rng(1)
    probs = rng.random((n, c), dtype=np.float32)
    embeddings = rng.random((n, d), dtype=np.float32)
    ids = list(range(1, n + 1))
    with store.session() as session:
        written = write_scores(
            session,
            project_id=project_id,
            model_version="big",
            task_ids=ids,
            probs=probs,
            embeddings=embeddings,
        )
    assert written == n
    started = time.perf_counter()
    with store.session() as session:
        scores = load_scores(session, project_id=project_id, model_version="big")
    elapsed = time.perf_counter() - started
    np.testing.assert_array_equal(scores.probs, probs)
    assert scores.embeddings is not None
    np.testing.assert_array_equal(scores.embeddings, embeddings)
    assert elapsed < 5.0, f"loading {n} score rows took {elapsed:.1f}s"


def _score_versions(store: Store, project_id: int) -> dict[str, int]:
    with store.session() as session:
        rows = session.exec(
            select(ScoreRecord.model_version, func.count())
            .where(ScoreRecord.project_id == project_id)
            .group_by(ScoreRecord.model_version)
        ).all()
    return {str(v): int(n) for v, n in rows}


def test_pruning_keeps_the_newest_recorded_versions_and_the_protected_ones(
    store: Store, project_id: int
) -> None:
    base = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
    probs = np.full((3, 2), 0.5, dtype=np.float32)
    with store.session() as session:
        for i, version in enumerate(["m1", "m2", "m3", "m4", "m5"]):
            write_scores(
                session,
                project_id=project_id,
                model_version=version,
                task_ids=[1, 2, 3],
                probs=probs,
                unscorable={9: "image 404"},
            )
            record_model_version(
                session,
                project_id=project_id,
                version=version,
                source="test",
                at=base + timedelta(hours=i),
            )
        # a worker already scoring a model the daemon has not recorded yet
        write_scores(
            session, project_id=project_id, model_version="m6", task_ids=[1], probs=probs[:1]
        )
    with store.session() as session:
        deleted = prune_scores(session, project_id=project_id, keep=3, protect={"m1"})
    assert deleted == {"m2": 4, "m3": 4}, "m6 (not recorded yet), m5, m4 are the newest; m1 kept"
    assert _score_versions(store, project_id) == {"m1": 4, "m4": 4, "m5": 4, "m6": 1}
    with store.session() as session:
        assert prune_scores(session, project_id=project_id, keep=3, protect={"m1"}) == {}
        again = load_scores(session, project_id=project_id, model_version="m5")
    assert again.task_ids.tolist() == [1, 2, 3], "kept versions read back whole"
    assert again.unscorable == {9: "image 404"}


def _scored(
    store: Store, project_id: int, version: str, at: datetime, *, recorded: bool = True
) -> None:
    """Scores of ``version`` written at ``at`` (and the version recorded then, if ``recorded``)."""
    with store.session() as session:
        write_scores(
            session,
            project_id=project_id,
            model_version=version,
            task_ids=[1, 2],
            probs=np.full((2, 2), 0.5, dtype=np.float32),
        )
        session.execute(
            update(ScoreRecord)
            .where(col(ScoreRecord.model_version) == version)
            .values(created_at=at)
        )
        if recorded:
            record_model_version(
                session, project_id=project_id, version=version, source="test", at=at
            )


def test_abandoned_unrecorded_versions_are_pruned_and_the_current_model_kept(
    store: Store, project_id: int
) -> None:
    """Scorings that failed before their version was recorded left scores behind: they rank by
    when they wrote, behind the models scored since (they ranked newest, by name, and the
    current model's scores were the ones deleted)."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(4):
        _scored(store, project_id, f"boot-000{i + 1}", base + timedelta(hours=i), recorded=False)
    for i, version in enumerate(["model-a", "model-b", "model-c"]):
        _scored(store, project_id, version, base + timedelta(days=i + 1))
    with store.session() as session:
        deleted = prune_scores(session, project_id=project_id, keep=4)
    assert deleted == {"boot-0001": 2, "boot-0002": 2, "boot-0003": 2}
    assert set(_score_versions(store, project_id)) == {"model-a", "model-b", "model-c", "boot-0004"}


def test_pruning_keeps_the_current_model_and_the_open_batch_model(
    store: Store, project_id: int
) -> None:
    """Outside the ``keep`` newest, the newest recorded version (the daemon's model) and the
    version an open batch was planned from stay; a scoring in progress (newest, unrecorded)
    ranks first."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i, version in enumerate(["old", "planned-from", "between", "current"]):
        _scored(store, project_id, version, base + timedelta(days=i))
    _scored(store, project_id, "scoring", base + timedelta(days=9), recorded=False)
    with store.session() as session:
        batch = create_batch(
            session,
            project_id,
            [PlannedItem(1, 1, "uncertain")],
            {},
            at=base,
            model_version="planned-from",
        )
        move_batch(batch, "pushed", at=base)
        move_batch(batch, "active", at=base)
    with store.session() as session:
        deleted = prune_scores(session, project_id=project_id, keep=1)
    assert deleted == {"between": 2, "old": 2}
    with store.session() as session:
        for open_batch in session.exec(select(Batch)).all():
            move_batch(open_batch, "completed", at=base)
    with store.session() as session:
        assert prune_scores(session, project_id=project_id, keep=1) == {"planned-from": 2}
    assert set(_score_versions(store, project_id)) == {"current", "scoring"}


def test_pruning_keeps_at_least_one_version(store: Store, project_id: int) -> None:
    with store.session() as session, pytest.raises(InputError, match="at least one"):
        prune_scores(session, project_id=project_id, keep=0)


@pytest.mark.integration
def test_postgres_is_sent_the_same_statements_for_any_number_of_rows(postgres_url: str) -> None:
    """psycopg parses a statement's text once and keeps it while it is under 4,096 bytes and
    50 parameters; a multi-row INSERT or an IN list of a batch's ids was neither, and parsing
    them afresh cost the scoring process about as much as the rows' writing."""
    store = open_store(postgres_url)
    sent: list[tuple[str, int]] = []

    def capture(_conn: object, _cursor: object, statement: str, params: object, *_: object) -> None:
        sent.append((statement, len(params) if isinstance(params, dict) else 0))

    try:
        with store.session() as session:
            pid = int(ensure_project(session, ls_project_id=9).id or 0)
            session.add_all(
                Task(project_id=pid, ls_task_id=i, image=f"{i}.png") for i in range(800)
            )
            session.commit()
        event.listen(store.engine, "before_cursor_execute", capture)
        rng = np.random.default_rng(0)
        for ids in (range(3), range(3, 800)):
            with store.session() as session:
                written = write_scores(
                    session,
                    project_id=pid,
                    model_version="m1",
                    task_ids=list(ids),
                    probs=rng.random((len(ids), 4), dtype=np.float32),
                    images={i: f"{i}.png" for i in ids},
                    unscorable={900 + ids[0]: "corrupt"},
                )
                session.commit()
            assert written == len(ids) + 1
        event.remove(store.engine, "before_cursor_execute", capture)
        with store.session() as session:
            todo = unscored(session, project_id=pid, model_version="m1", task_ids=range(805))
            scores = load_scores(session, project_id=pid, model_version="m1")
    finally:
        store.dispose()
    assert todo == list(range(800, 805))
    assert scores.task_ids.tolist() == list(range(800))
    assert scores.unscorable == {900: "corrupt", 903: "corrupt"}
    assert len(sent) == 4, sent  # each write: the lock on its tasks' images, the insert
    assert sent[0] == sent[2], "the images' lock differs by the number of ids"
    assert sent[1] == sent[3], "the insert differs by the number of rows"
    assert all(len(text.encode()) < 4096 and n < 50 for text, n in sent)
