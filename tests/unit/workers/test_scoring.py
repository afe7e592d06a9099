"""Models three ways, and scoring chunks of a pool into the store (embedded, CPU)."""

from __future__ import annotations

import base64
import os
import pickle
import time
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch
from sqlmodel import col, select
from torch import nn

from planner.errors import ConfigError, StoreError, StoreSchemaError
from planner.store import Store
from planner.store.models import Task
from planner.store.scores import load_scores, unscored
from tests.unit.workers.conftest import (
    CLASSES,
    KeptAliveServer,
    broken_png,
    pillow_crashers,
    worker_config,
)
from workers import scoring
from workers.bootstrap import BootstrapNet
from workers.compiling import Compiler
from workers.config import WorkerConfig
from workers.dispatch import score_pool
from workers.images import ImageSource
from workers.inference import Scores, score_items
from workers.models import load_model


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1))


def _items(count: int, start: int = 201) -> list[tuple[int, str]]:
    return [
        (i, f"/data/local-files/?d=digits/{i - 1:04d}.png") for i in range(start, start + count)
    ]


def _legacy_torchscript(model: nn.Module, path: Path) -> None:
    """Users still ship TorchScript files; torch 2.13 deprecates making them, not loading."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path))


def test_export_torchscript_and_entry_point_with_a_plain_state_dict(
    tmp_path: Path, entry_point: Callable[..., str]
) -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.rand(2, 3, 8, 8)
    exported = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(exported))
    loaded = load_model(str(exported))
    assert loaded.version.startswith("tiny-")
    torch.testing.assert_close(loaded.module(x), model(x))
    scripted = tmp_path / "tiny.pt"
    _legacy_torchscript(model, scripted)
    torch.testing.assert_close(load_model(str(scripted)).module(x), model(x))

    entry_point("planner_test_models", make=Tiny)
    weights = tmp_path / "tiny.state"
    torch.save(model.state_dict(), weights)
    from_entry = load_model("planner_test_models:make", weights=weights)
    torch.testing.assert_close(from_entry.module(x), model(x))
    assert from_entry.version.startswith("make-")

    evil = tmp_path / "evil.state"
    evil.write_bytes(pickle.dumps(types.SimpleNamespace(a=1)))
    with pytest.raises(ConfigError, match="not a plain state dict"):
        load_model("planner_test_models:make", weights=evil)
    with pytest.raises(ConfigError, match="cannot import"):
        load_model("no_such_module:make")


def test_mc_dropout_passes_and_embeddings(digit_files: tuple[Path, list[int]]) -> None:
    root, _ = digit_files
    net = BootstrapNet(len(CLASSES)).eval()
    scores = score_items(net, _items(10), ImageSource(image_root=root), mc_passes=4)
    assert scores.probs.shape == (10, 10)
    assert scores.embeddings is not None
    assert scores.embeddings.shape == (10, 64)
    assert scores.mc is not None
    assert scores.mc.shape == (4, 10, 10)
    assert not np.allclose(scores.mc[0], scores.mc[1]), "dropout must vary between passes"
    np.testing.assert_allclose(scores.probs.sum(axis=1), 1.0, rtol=1e-5)


def test_bootstrap_scores_a_pool_once_and_reports_bad_images(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]]
) -> None:
    store, pid = project
    root, targets = digit_files
    cfg = worker_config(store, root)
    items = [*_items(100), (999, "/data/local-files/?d=digits/missing.png")]
    (root / "digits" / "corrupt.png").write_bytes(b"not an image")
    items.append((998, "/data/local-files/?d=digits/corrupt.png"))
    items.append((997, "http://169.254.169.254/latest/meta-data"))
    first = score_pool(cfg, pid, items)
    assert (first.scored, first.unscorable, first.skipped) == (100, 3, 0)
    again = score_pool(cfg, pid, items)
    assert (again.scored, again.skipped) == (0, 103)
    (version,) = first.model_versions
    assert first.model_version == version == again.model_version
    assert first.written == 103, "every row sent was inserted: nothing was scored twice"
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=version)
    assert scores.task_ids.tolist() == list(range(201, 301))
    assert set(scores.unscorable) == {997, 998, 999}
    assert "allow-list" in scores.unscorable[997]
    accuracy = np.mean(scores.probs.argmax(axis=1) == np.asarray(targets[200:300]))
    assert accuracy > 0.6, f"the bootstrap model learned little: accuracy {accuracy:.2f}"


def test_a_broken_png_and_malformed_references_are_recorded_and_the_rest_scored(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """Each of these raised something other than ImageError, which failed the whole chunk: the
    task was never recorded and every cycle failed again on it."""
    store, pid = project
    root, _ = digit_files
    (root / "digits" / "broken-chunk.png").write_bytes(broken_png())
    bad = {
        901: ("/data/local-files/?d=digits/broken-chunk.png", "corrupt or unreadable image"),
        902: ("http://localhost:99999/x.png", "Port out of range"),
        903: ("http://localhost:abc/x.png", "Port could not be cast to integer"),
        904: ("http://[::1/x.png", "Invalid IPv6 URL"),
        905: ("/data/local-files/?d=digits/a%00.png", "not a valid file name"),
        906: (str(root / "digits" / "a\x00.png"), "not a valid file name"),
    }
    cfg = worker_config(
        store,
        root,
        model=f"{__name__}:tiny_factory",
        allowed_hosts=("localhost", "127.0.0.1"),  # resolved and allowed: the port is what fails
        pixel_cache_dir=tmp_path / "pixels",
        pixel_cache_mb=16,
    )
    items = [*_items(6), *((task_id, reference) for task_id, (reference, _) in bad.items())]
    result = score_pool(cfg, pid, items)
    assert (result.scored, result.unscorable, result.deferred) == (6, 6, 0)
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=result.model_version)
    assert scores.task_ids.tolist() == list(range(201, 207))
    assert set(scores.unscorable) == set(bad)
    for task_id, (_, reason) in bad.items():
        assert reason in scores.unscorable[task_id], (task_id, scores.unscorable[task_id])


def test_files_pillow_fails_on_with_any_error_are_unscorable_and_the_rest_scored(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """Pillow 13 raised TypeError, OverflowError and NotImplementedError for these mutated
    files; each failed the whole chunk, every cycle again, and the task never got a row."""
    store, pid = project
    root = tmp_path / "images"
    (root / "digits").mkdir(parents=True)
    for i in range(200, 204):
        source = digit_files[0] / "digits" / f"{i:04d}.png"
        (root / "digits" / source.name).write_bytes(source.read_bytes())
    bad: dict[int, str] = {}
    for task_id, (raised, data) in enumerate(pillow_crashers().items(), start=911):
        (root / "digits" / f"{raised}.img").write_bytes(data)
        bad[task_id] = raised
    cfg = worker_config(store, root, model=f"{__name__}:tiny_factory")
    items = [*_items(4), *((t, f"/data/local-files/?d=digits/{r}.img") for t, r in bad.items())]
    result = score_pool(cfg, pid, items)
    assert (result.scored, result.unscorable) == (4, 3)
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=result.model_version)
    assert scores.task_ids.tolist() == [201, 202, 203, 204]
    assert scores.unscorable == {
        task_id: f"corrupt or unreadable image: {raised}" for task_id, raised in bad.items()
    }


def test_a_chunk_scored_from_an_image_its_task_no_longer_shows_is_not_written(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]]
) -> None:
    """A sync saw task 202 show another image while the chunk was scored from its old one: the
    old image's scores would have stood for the new image for good."""
    store, pid = project
    root, _ = digit_files
    cfg = worker_config(store, root, model=f"{__name__}:tiny_factory")
    items = _items(3)
    items[1] = (202, "/data/local-files/?d=digits/0000.png")  # the task's image before
    result = score_pool(cfg, pid, items)
    assert (result.scored, result.written) == (3, 2)
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=result.model_version)
        todo = unscored(
            session, project_id=pid, model_version=result.model_version, task_ids=[201, 202, 203]
        )
    assert scores.task_ids.tolist() == [201, 203]
    assert todo == [202], "the next scoring scores it from the image it shows"


def test_decoding_in_dataloader_processes_gives_the_same_scores(
    digit_files: tuple[Path, list[int]],
) -> None:
    root, _ = digit_files
    torch.manual_seed(0)
    net = BootstrapNet(len(CLASSES)).eval()
    items = [*_items(20), (999, "/data/local-files/?d=digits/missing.png")]
    inline = score_items(net, items, ImageSource(image_root=root), batch_size=8)
    parallel = score_items(net, items, ImageSource(image_root=root), batch_size=8, num_workers=2)
    assert parallel.task_ids == inline.task_ids == list(range(201, 221))
    np.testing.assert_allclose(parallel.probs, inline.probs, rtol=1e-6)
    assert set(parallel.unscorable) == {999}


def test_a_chunk_whose_write_fails_closes_its_image_connections_at_once(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chunk's exception (here held by ``pytest.raises``, elsewhere by a retry) keeps the
    scoring generator's frame alive; its kept-alive connections must not wait for the
    collector, which may finalise the sockets first and warn."""
    store, pid = project
    root, _ = digit_files
    label_studio = KeptAliveServer(
        lambda path: (root / parse_qs(urlsplit(path).query)["d"][0]).read_bytes()
    )
    cfg = replace(
        worker_config(store, root, batch_size=10),
        model=f"{__name__}:tiny_factory",
        image_root=None,
        label_studio_url=label_studio.url,
        write_rows=10,  # the first batch written, mid-chunk
    )
    threads = torch.get_num_threads()

    def failing_write(*args: object, **kwargs: object) -> int:
        raise StoreError("the store went away mid-chunk")

    monkeypatch.setattr(scoring, "write_scores", failing_write)
    try:
        with pytest.raises(StoreError, match="went away") as failed:
            scoring.score_chunk(cfg, pid, _items(30), resources=scoring.Resources())
        assert failed.value.__traceback__ is not None, "the failure is held, as a retry holds it"
        assert label_studio.opened >= 1, "the images did come over HTTP"
        assert label_studio.open_now() == 0, "the image connection outlived the failed chunk"
        assert torch.get_num_threads() == threads
    finally:
        label_studio.stop()


def test_a_cloud_storage_image_is_read_through_label_studio_and_its_score_kept(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]]
) -> None:
    """A task of an S3 storage names its image ``s3://...``; the worker asks Label Studio's
    resolver for it (the real server: tests/integration/label_studio/test_cloud_storage.py),
    and the score row is checked against the reference the task shows, not the resolver's."""
    store, pid = project
    root, _ = digit_files
    stored = {201: "s3://team-bucket/digits/0200.png", 202: "s3://team-bucket/digits/0201.png"}
    with store.session() as session:
        for task in session.exec(select(Task).where(col(Task.ls_task_id).in_(list(stored)))):
            task.image = stored[task.ls_task_id]
            session.add(task)

    def resolve(path: str) -> bytes:
        assert urlsplit(path).path in ("/tasks/201/resolve/", "/tasks/202/resolve/")
        uri = base64.urlsafe_b64decode(parse_qs(urlsplit(path).query)["fileuri"][0]).decode()
        return (root / uri.removeprefix("s3://team-bucket/")).read_bytes()

    label_studio = KeptAliveServer(resolve)
    cfg = replace(
        worker_config(store, root, batch_size=10),
        model=f"{__name__}:tiny_factory",
        label_studio_url=label_studio.url,
    )
    try:
        first = score_pool(cfg, pid, list(stored.items()))
        again = score_pool(cfg, pid, list(stored.items()))
    finally:
        label_studio.stop()
    assert (first.scored, first.unscorable, first.written) == (2, 0, 2)
    assert (again.scored, again.skipped) == (0, 2), "scored once: the rows match the tasks"
    assert label_studio.paths
    assert all("/resolve/" in p for p in label_studio.paths)


def tiny_factory() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


TINY = f"{__name__}:tiny_factory"


def _compiler() -> Compiler:
    """torch.compile with dynamo alone (no inductor code generation): the compiled module
    holds its model as the default's does, in a fraction of the time."""
    return Compiler(compile=lambda module: torch.compile(module, dynamic=True, backend="eager"))


def test_a_worker_keeps_only_the_model_version_it_scores_with_now(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    tmp_path: Path,
    entry_point: Callable[..., str],
) -> None:
    """Every version a watched folder handed a worker stayed loaded (on the GPU, once scored
    with), each compiled one held in the compiler by its compiled module for good."""
    store, pid = project
    root, _ = digit_files
    folder = tmp_path / "models"
    folder.mkdir()
    spec = entry_point("planner_test_versions", make=tiny_factory) + ":make"
    cfg = worker_config(store, root, model=spec, model_dir=folder, compile="on", num_workers=0)
    resources = scoring.Resources(compiler=_compiler())
    held: list[weakref.ref[nn.Module]] = []
    for seed in range(3):  # a training job hands back m0, m1, m2 in turn
        torch.manual_seed(seed)
        handed_back = folder / f"m{seed}.pt"
        torch.save(Tiny().state_dict(), handed_back)
        stamp = time.time() - 60 + seed
        os.utime(handed_back, (stamp, stamp))
        result = scoring.score_chunk(cfg, pid, _items(4), resources=resources)
        assert result.scored == 4
        held.append(weakref.ref(scoring.current_model(cfg, pid, resources).module))
    assert len(resources.models) == 1
    assert [ref() is not None for ref in held] == [False, False, True], "older versions freed"


def test_a_worker_lets_the_bootstrap_network_it_retrained_go(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]]
) -> None:
    store, pid = project
    root, targets = digit_files
    cfg = worker_config(store, root, compile="on", num_workers=0, retrain_min_new_labels=10)
    resources = scoring.Resources(compiler=_compiler())
    first = scoring.score_chunk(cfg, pid, _items(4, start=251), resources=resources)
    held = weakref.ref(scoring.current_model(cfg, pid, resources).module)
    with store.session() as session:
        for task in session.exec(select(Task).where(col(Task.ls_task_id).in_(range(201, 211)))):
            task.state, task.labels = "labelled", [str(targets[task.ls_task_id - 1])]
            session.add(task)
    second = scoring.score_chunk(cfg, pid, _items(4, start=251), resources=resources)
    assert second.model_version != first.model_version, "retrained on 10 new labels"
    assert second.scored == 4
    assert held() is None, "the network trained before is freed, compiled or not"


def test_a_worker_neither_creates_nor_migrates_the_store(tmp_path: Path) -> None:
    # the daemon owns the schema: a worker of another version must not move it under it
    missing = tmp_path / "never-made.db"
    cfg = WorkerConfig(store_url=f"sqlite:///{missing}", classes=CLASSES)
    resources = scoring.Resources()
    with pytest.raises(StoreSchemaError, match="does not exist"):
        resources.store(cfg)
    assert not missing.exists()
    (tmp_path / "empty.db").touch()  # an empty SQLite database: no planner tables
    empty = replace(cfg, store_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreSchemaError, match="has no planner tables"):
        resources.store(empty)
    resources.close()


def _counting_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each ``write_scores`` call ``score_chunk`` makes (the real one runs)."""
    rows: list[int] = []
    real = scoring.write_scores

    def counted(*args: object, **kwargs: Any) -> int:
        rows.append(len(kwargs["task_ids"]) + len(kwargs["unscorable"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "write_scores", counted)
    return rows


@pytest.mark.parametrize(
    ("limits", "writes"),
    [((20, 3600.0), [20, 20, 10]), ((1000, 3600.0), [50]), ((1000, 0.0), [10, 10, 10, 10, 10])],
)
def test_a_chunk_writes_its_scores_a_few_hundred_rows_or_seconds_at_a_time(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    limits: tuple[int, float],
    writes: list[int],
) -> None:
    """A transaction a batch cost the scoring process as much CPU again as the rows' own
    writing; held much longer, a worker that dies would score them all again."""
    store, pid = project
    root, _ = digit_files
    monkeypatch.setattr(scoring, "WRITE_S", limits[1])
    written = _counting_writes(monkeypatch)
    cfg = replace(
        worker_config(store, root, batch_size=10, num_workers=0, write_rows=limits[0]),
        model=TINY,
    )
    items = [*_items(49), (999, "/data/local-files/?d=digits/missing.png")]
    result = scoring.score_chunk(cfg, pid, items, resources=scoring.Resources())
    assert (result.scored, result.unscorable, result.written) == (49, 1, 50)
    assert written == writes
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=result.model_version)
    assert scores.task_ids.tolist() == list(range(201, 250))
    assert list(scores.unscorable) == [999]


def test_scores_held_when_the_chunk_fails_are_written_before_it_fails(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault after two batches (their scores held, not yet written): the chunk fails, and
    its retry scores only the rest."""
    store, pid = project
    root, _ = digit_files
    real = scoring.iter_scores

    def two_then_fail(*args: object, **kwargs: object) -> Iterator[Scores]:
        parts = real(*args, **kwargs)  # type: ignore[arg-type]
        try:
            yield next(parts)
            yield next(parts)
            raise RuntimeError("a decode process died")
        finally:
            parts.close()

    monkeypatch.setattr(scoring, "iter_scores", two_then_fail)
    written = _counting_writes(monkeypatch)
    cfg = replace(worker_config(store, root, batch_size=10, num_workers=0), model=TINY)
    with pytest.raises(RuntimeError, match="decode process died"):
        scoring.score_chunk(cfg, pid, _items(50), resources=scoring.Resources())
    assert written == [20]
    monkeypatch.setattr(scoring, "iter_scores", real)
    again = scoring.score_chunk(cfg, pid, _items(50), resources=scoring.Resources())
    assert (again.scored, again.skipped) == (30, 20)
