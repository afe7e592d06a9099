"""The bootstrap network: trained again only once enough new labels arrived, shared by folder."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from email.message import Message
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import numpy.typing as npt
import pytest
from sqlmodel import select

from planner.daemon.run import _scorer
from planner.settings import Settings
from planner.store import Store
from planner.store.models import Project, ScoreRecord, Task
from planner.store.scores import load_scores
from tests.unit.workers.conftest import CLASSES, KeptAliveServer, worker_config
from workers.bootstrap import latest_saved, needs_training, saved_labelled
from workers.config import WorkerConfig
from workers.dispatch import score_pool
from workers.scoring import Resources, current_model, score_chunk


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
    saved = latest_saved(folder, pid, CLASSES)
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
    saved = latest_saved(tmp_path / "artifacts" / "bootstrap", pid, CLASSES)
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


def test_a_folder_the_network_cannot_be_saved_in_still_scores_with_a_warning(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """A worker whose bootstrap folder it cannot create (a container without the volume, a
    service started in /): before, every chunk trained for 30 epochs, then failed."""
    store, pid = project
    root, _ = digit_files
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # tests run as root: no mode bit would stop them
    cfg = replace(worker_config(store, root, num_workers=0), bootstrap_dir=blocker / "bootstrap")
    items = [(i, f"/data/local-files/?d=digits/{i - 1:04d}.png") for i in range(201, 221)]
    resources = Resources()
    first = score_chunk(cfg, pid, items[:10], resources=resources)
    assert (first.scored, first.unscorable) == (10, 0)
    (warning,) = first.warnings
    assert f"could not be saved in {blocker / 'bootstrap'}" in warning
    assert "kept in this worker's memory only" in warning
    trained = resources.bootstraps[pid]
    # the next chunk scores with the network in memory: not trained again, the same version
    second = score_chunk(cfg, pid, items[10:], resources=resources)
    assert resources.bootstraps[pid] is trained
    assert second.model_version == first.model_version
    assert second.warnings == first.warnings, "every chunk it scores says so"


def _shared(store: Store, root: Path, tmp_path: Path) -> WorkerConfig:
    """A worker config keeping its networks in ``tmp_path / "bootstrap"``, retraining after
    30 new labels, reading images in the scoring process."""
    return replace(
        worker_config(store, root, num_workers=0),
        bootstrap_dir=tmp_path / "bootstrap",
        retrain_min_new_labels=30,
    )


def _pool_probs(
    cfg: WorkerConfig, store: Store, pid: int, resources: Resources
) -> tuple[str, npt.NDArray[np.float32]]:
    """Score tasks 201-240 with ``resources``; the version and its stored probabilities."""
    pool = [(i, f"/data/local-files/?d=digits/{i - 1:04d}.png") for i in range(201, 241)]
    version = score_pool(cfg, pid, pool, resources=resources).model_version
    with store.session() as session:
        probs = load_scores(session, project_id=pid, model_version=version).probs
    return version, probs


def test_a_class_added_gets_a_network_with_its_column_at_once(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """Before: the 10-column network scored on with 11 classes until 30 new labels arrived,
    which no batch brought, since selection refused its probabilities."""
    store, pid = project
    root, _ = digit_files
    cfg = _shared(store, root, tmp_path)
    worker = Resources()
    first, probs = _pool_probs(cfg, store, pid, worker)
    assert probs.shape == (40, 10)
    added = replace(cfg, classes=(*CLASSES, "10"))  # not one new label yet
    # a worker with nothing in memory finds only the 10-class network in the folder
    fresh, probs = _pool_probs(added, store, pid, Resources())
    assert probs.shape == (40, 11)
    assert fresh.startswith("bootstrap-200-")
    assert fresh != first
    # the worker holding the 10-class network in memory takes the 11-class one
    held, probs = _pool_probs(added, store, pid, worker)
    assert probs.shape == (40, 11)
    assert held == fresh


def test_classes_in_another_order_get_a_network_whose_columns_follow_it(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """Same number of classes, other order: before, the old network's columns were read as
    the new order's classes, every digit given another's name."""
    store, pid = project
    root, targets = digit_files
    cfg = _shared(store, root, tmp_path)
    worker = Resources()
    first = current_model(cfg, pid, worker).version
    reordered = replace(cfg, classes=tuple(reversed(CLASSES)))
    for resources in (worker, Resources()):  # in memory, and from the folder
        version, probs = _pool_probs(reordered, store, pid, resources)
        named = [reordered.classes[column] for column in probs.argmax(axis=1)]
        accuracy = np.mean(np.asarray(named) == np.asarray([str(t) for t in targets[200:240]]))
        assert accuracy > 0.6, f"columns read as the wrong classes: accuracy {accuracy:.2f}"
        assert version != first


def test_two_workers_training_at_once_score_with_the_network_saved_first(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """Worker B reads the labelled images from a Label Studio stand-in, one of them failing
    for now; worker A trains and saves while B waits on its images. Before, B's other inputs
    gave it another version at the same label count, and neither worker took the other's
    network: a pool's chunks disagreed until 30 more labels arrived."""
    store, pid = project
    root, _ = digit_files
    cfg = _shared(store, root, tmp_path)
    fetching, saved = threading.Event(), threading.Event()

    def body_for(path: str) -> bytes:
        fetching.set()
        saved.wait(120)
        return (root / parse_qs(urlsplit(path).query)["d"][0]).read_bytes()

    def status_for(path: str, _headers: Message) -> int:
        return 503 if "0007.png" in path else 200

    server = KeptAliveServer(body_for, status_for)
    served = replace(cfg, image_root=None, label_studio_url=server.url)
    try:
        with ThreadPoolExecutor(1) as pool:
            worker_b = pool.submit(current_model, served, pid, Resources())
            assert fetching.wait(120), "worker B never asked for an image"
            first = current_model(cfg, pid, Resources()).version  # worker A
            saved.set()
            assert worker_b.result(timeout=300).version == first
    finally:
        saved.set()
        server.stop()
    assert any("0007.png" in path for path in server.paths), "B's inputs were not A's"
    assert len(list((tmp_path / "bootstrap").glob("*.state"))) == 1
    assert current_model(cfg, pid, Resources()).version == first, "a third worker agrees"
