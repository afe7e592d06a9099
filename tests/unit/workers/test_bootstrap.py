"""The bootstrap network: trained again only once enough new labels arrived, shared by folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlmodel import select

from planner.daemon.run import _scorer
from planner.settings import Settings
from planner.store import Store
from planner.store.models import Project, ScoreRecord, Task
from tests.unit.workers.conftest import CLASSES, worker_config
from workers.bootstrap import latest_saved, needs_training, saved_labelled
from workers.scoring import Resources, current_model


@pytest.mark.parametrize(
    ("trained_on", "labelled_now", "min_new", "expected"),
    [
        (None, 0, 50, False),  # nothing to learn from
        (None, 1, 50, True),  # cold start
        (200, 249, 50, False),
        (200, 250, 50, True),
        (200, 201, 0, True),  # 0 means every new label
        (200, 200, 0, False),
    ],
)
def test_needs_training(
    trained_on: int | None, labelled_now: int, min_new: int, expected: bool
) -> None:
    assert needs_training(trained_on, labelled_now, min_new) is expected


def _label(
    store: Store, pid: int, ls_ids: range, targets: list[int], *, labelled: bool = True
) -> None:
    with store.session() as session:
        for task in session.exec(
            select(Task).where(Task.project_id == pid, Task.ls_task_id.in_(list(ls_ids)))  # type: ignore[attr-defined]
        ).all():
            task.state = "labelled" if labelled else "unlabelled"
            task.labels = [str(targets[task.ls_task_id - 1])] if labelled else []
            session.add(task)


def test_retrained_only_after_enough_new_labels_and_shared_through_the_folder(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    store, pid = project
    root, targets = digit_files
    folder = tmp_path / "bootstrap"
    cfg = replace(worker_config(store, root), bootstrap_dir=folder, retrain_min_new_labels=30)
    first = current_model(cfg, pid, Resources()).version
    assert first.startswith("bootstrap-200-")
    saved = latest_saved(folder, pid)
    assert saved is not None
    assert saved_labelled(saved) == 200

    _label(store, pid, range(201, 221), targets)  # 20 new labels: fewer than 30
    worker, stale = Resources(), Resources()
    assert current_model(cfg, pid, worker).version == first
    # a worker with nothing in memory loads the saved network instead of training another
    assert current_model(cfg, pid, stale).version == first

    _label(store, pid, range(221, 231), targets)  # 30 new labels now
    second = current_model(cfg, pid, worker).version
    assert second.startswith("bootstrap-230-")
    assert second != first
    # the worker that holds the older network picks up the newer one from the folder
    assert current_model(cfg, pid, stale).version == second
    assert len(list(folder.glob("*.state"))) == 2


def test_the_daemon_reuses_the_saved_network_until_enough_labels_arrive(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """Through the daemon's scorer, as in production: a fresh ``score_pool`` every cycle."""
    store, pid = project
    root, targets = digit_files
    _label(store, pid, range(51, 201), targets, labelled=False)  # 50 labelled to start with
    with store.session() as session:
        row = session.get(Project, pid)
        assert row is not None
        row.classes = list(CLASSES)
        session.add(row)
    url = store.engine.url.render_as_string(hide_password=False)
    settings = Settings(
        store={"url": url},
        artifacts={"dir": tmp_path / "artifacts"},
        workers={"image_root": root, "num_workers": 0, "retrain_min_new_labels": 100},
    )
    score = _scorer(settings, store)
    pool = [(i, f"/data/local-files/?d=digits/{i - 1:04d}.png") for i in range(231, 301)]

    first = score(pid, pool)
    assert first.startswith("bootstrap-50-")
    saved = latest_saved(tmp_path / "artifacts" / "bootstrap", pid)
    assert saved is not None
    assert saved_labelled(saved) == 50

    _label(store, pid, range(51, 61), targets)  # 10 new labels: fewer than 100
    assert score(pid, pool) == first, "the saved network is reused, not retrained"

    _label(store, pid, range(61, 231), targets)  # 230 labelled: 180 new
    second = score(pid, pool)
    # "bootstrap-230-..." sorts before "bootstrap-50-..." as text: the scorer must not sort
    assert second.startswith("bootstrap-230-")
    with store.session() as session:
        rows = session.exec(
            select(ScoreRecord.ls_task_id).where(ScoreRecord.model_version == second)
        ).all()
    assert sorted(rows) == [i for i, _ in pool], "the new version scored the whole pool"
