"""Embedded pool scoring: a chunk whose images fail for now is retried; settings are checked."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from sqlmodel import select
from torch import nn

from planner.connect import broker_config, worker_own
from planner.connect import worker_config as settings_worker_config
from planner.core.backoff import backoff_s
from planner.daemon.run import _scorer
from planner.errors import ConfigError, TransientError
from planner.health import ScoringRun
from planner.settings import Settings, load_settings
from planner.store import Store
from planner.store.models import Project, ScoreRecord, SyncState, Task
from planner.store.scores import load_scores, unscored
from planner.store.sync_state import last_scoring
from tests.unit.workers.conftest import CLASSES, show_images, worker_config
from workers import celery_app, dispatch
from workers.config import BrokerConfig, WorkerConfig, WorkerOwn
from workers.dispatch import score_pool, settle
from workers.scoring import ChunkResult, Resources, image_source


@pytest.fixture
def flaky(digit_files: tuple[Path, list[int]]) -> Iterator[tuple[str, dict[str, int]]]:
    """Serves the digit PNGs; ``/flaky/...`` answers 503 twice first, ``/down/...`` always."""
    root, _ = digit_files
    hits: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                hits[self.path] = hits.get(self.path, 0) + 1
                count = hits[self.path]
            kind, name = self.path.strip("/").split("/", 1)
            if kind == "down" or (kind == "flaky" and count <= 2):
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write((root / "digits" / name).read_bytes())

        def log_message(self, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_a_chunk_failing_for_now_is_retried_with_backoff_until_scored(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    flaky: tuple[str, dict[str, int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, pid = project
    root, _ = digit_files
    base, hits = flaky
    cfg = replace(
        worker_config(store, root), allowed_hosts=("127.0.0.1",), chunk_size=8, retry_backoff_s=0.5
    )
    caplog.set_level(logging.WARNING, logger="planner.workers")
    items = [(201 + i, f"/data/local-files/?d=digits/{200 + i:04d}.png") for i in range(12)]
    items[3] = (204, f"{base}/flaky/0203.png")
    show_images(store, pid, {204: items[3][1]})
    waits: list[float] = []
    resources = Resources()
    result = score_pool(cfg, pid, items, resources=resources, sleep=waits.append)
    assert (result.scored, result.unscorable, result.deferred) == (12, 0, 0)
    assert waits == [0.5, 1.0], "two retries of the first chunk, backing off"
    assert hits["/flaky/0203.png"] == 3, "the retry fetched the failed image again"
    retries = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert len(retries) == 2, "each retry says why"
    assert "task 204" in retries[0]
    assert "answered 503" in retries[0]
    assert retries[1].endswith("attempt 3 in 1 s")
    (version,) = result.model_versions
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=version)
    assert sorted(scores.task_ids.tolist()) == list(range(201, 213))


def test_an_image_down_for_good_is_left_unscored_after_the_last_retry(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    flaky: tuple[str, dict[str, int]],
) -> None:
    store, pid = project
    root, _ = digit_files
    base, hits = flaky
    cfg = replace(worker_config(store, root), allowed_hosts=("127.0.0.1",), max_retries=2)
    items = [(201, "/data/local-files/?d=digits/0200.png"), (202, f"{base}/down/0201.png")]
    result = score_pool(cfg, pid, items, sleep=lambda _s: None)
    assert (result.scored, result.unscorable, result.deferred) == (1, 0, 1)
    assert hits["/down/0201.png"] == 3, "first try and two retries"
    (version,) = result.model_versions
    with store.session() as session:
        # not recorded as unscorable: the next cycle tries it again
        assert unscored(session, project_id=pid, model_version=version, task_ids=[201, 202]) == [
            202
        ]


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(a, 2.0, 10.0) for a in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        WorkerConfig(store_url="sqlite://", classes=("a",), batch_size=0)
    with pytest.raises(ConfigError, match=r"workers\.fetches_at_once = 0: must be positive"):
        WorkerConfig(store_url="sqlite://", classes=("a",), fetches_at_once=0)
    with pytest.raises(ConfigError, match="classes"):
        WorkerConfig(store_url="sqlite://", classes=())
    with pytest.raises(ConfigError, match="mc_passes = 1"):
        WorkerConfig(store_url="sqlite://", classes=("a",), mc_passes=1)
    with pytest.raises(ConfigError, match="broker_url"):
        BrokerConfig(broker_url="amqp://guest@localhost//")


def test_the_visibility_timeout_outlasts_the_hard_time_limit(tmp_path: Path) -> None:
    derived = BrokerConfig(time_limit_s=3 * 3600)
    assert derived.visibility_s > derived.time_limit_s > derived.soft_limit_s
    # twice the hard limit + the longest retry wait (300 s) + a tenth of the hard limit
    assert (derived.soft_limit_s, derived.visibility_s) == (3 * 3600 - 60, 6 * 3600 + 300 + 1080)
    with pytest.raises(ConfigError, match=r"visibility_timeout_s = 3600.*workers.time_limit_s"):
        BrokerConfig(time_limit_s=3 * 3600, visibility_timeout_s=3600)
    with pytest.raises(ConfigError, match=r"soft_time_limit_s = 90.*workers.time_limit_s = 60"):
        BrokerConfig(time_limit_s=60, soft_time_limit_s=90)
    config = tmp_path / "planner.toml"
    config.write_text("[workers]\ntime_limit_s = 10800\nvisibility_timeout_s = 3600\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ=False)
    (line,) = [x for x in str(caught.value).splitlines() if "workers.visibility" in x]
    assert "workers.visibility_timeout_s = 3600" in line
    assert "workers.time_limit_s = 10800" in line


def test_the_visibility_timeout_outlasts_a_chunk_held_through_a_retry_and_a_busy_worker(
    tmp_path: Path,
) -> None:
    """A worker holds a chunk unacknowledged through its retry's countdown, another chunk's
    run in its process and its own run: Redis must not hand it out again meanwhile."""
    derived = BrokerConfig(time_limit_s=600, retry_backoff_max_s=300)
    assert derived.visibility_s >= 2 * 600 + 300
    assert BrokerConfig(time_limit_s=600, retry_backoff_max_s=300, visibility_timeout_s=1501)
    with pytest.raises(ConfigError, match=r"visibility_timeout_s = 1500: must exceed 1500 s"):
        BrokerConfig(time_limit_s=600, retry_backoff_max_s=300, visibility_timeout_s=1500)
    with pytest.raises(ConfigError, match=r"twice workers.time_limit_s = 600 plus"):
        WorkerConfig(
            store_url="sqlite://", classes=("a",), time_limit_s=600, visibility_timeout_s=660
        )
    config = tmp_path / "planner.toml"
    config.write_text("[workers]\ntime_limit_s = 600\nvisibility_timeout_s = 660\n")
    with pytest.raises(ConfigError, match=r"workers\.retry_backoff_max_s = 300:"):
        load_settings(config, environ=False)
    # a chunk running when the broker connection drops is stopped, not run twice
    app = celery_app.make_app(BrokerConfig(broker_url="redis://127.0.0.1:9/0"))
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is True


def test_the_worker_app_takes_limits_and_secrets_from_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "planner.toml"
    config.write_text(
        "[workers]\nbroker_url = 'redis://127.0.0.1:6379/5'\ntime_limit_s = 600\n"
        "max_retries = 2\nretry_backoff_s = 1.5\npixel_cache_mb = 64\n"
        f"[artifacts]\ndir = '{tmp_path / 'artifacts'}'\n"
    )
    monkeypatch.setenv("PLANNER_CONFIG", str(config))
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", "worker-token")
    app = celery_app._app_from_env.__wrapped__()  # the uncached build
    assert app.conf.task_time_limit == 600
    assert app.conf.task_soft_time_limit == 540
    assert app.conf.broker_transport_options == {"visibility_timeout": 2 * 600 + 300 + 60}
    task = app.tasks[celery_app.SCORE_TASK]
    assert (task.max_retries, task.retry_backoff) == (2, 1.5)
    settings = load_settings(config)
    assert broker_config(settings).broker_url == "redis://127.0.0.1:6379/5"
    assert worker_own(settings) == WorkerOwn(
        None,
        "worker-token",
        tmp_path / "artifacts" / "pixel-cache",
        64,
        bootstrap_dir=tmp_path / "artifacts" / "bootstrap",
        label_studio_url=str(settings.label_studio.url),
        store_url=settings.store.url,
    )


def test_task_messages_carry_neither_secrets_nor_the_senders_pixel_cache() -> None:
    cfg = WorkerConfig(
        store_url="postgresql+psycopg://planner@db/planner",
        classes=("a", "b"),
        store_password="db-secret",
        label_studio_token="ls-secret",
        image_root=Path("/images"),
        upload_root=Path("/label-studio/data/media/upload"),
        pixel_cache_dir=Path("/sender/cache"),
        pixel_cache_mb=100,
        bootstrap_dir=Path("/var/lib/planner/artifacts/bootstrap"),
    )
    payload = celery_app.config_to_dict(cfg)
    text = json.dumps(payload)
    assert "db-secret" not in text
    assert "ls-secret" not in text
    assert "store_password" not in payload
    assert "label_studio_token" not in payload
    assert "pixel_cache_dir" not in payload, "the sender's cache folder is not the worker's"
    assert "bootstrap_dir" not in payload, "nor its bootstrap folder (another container's)"
    smuggled = {
        "label_studio_token": "smuggled",
        "pixel_cache_dir": "/etc",
        "pixel_cache_mb": 9,
        "bootstrap_dir": "/etc",
    }
    received = celery_app.config_from_dict(
        {**payload, **smuggled, "label_studio_url": "http://localhost:8080"}
    )
    assert received.label_studio_token is None, "a message cannot set the worker's secrets"
    assert (received.pixel_cache_dir, received.pixel_cache_mb) == (None, 0)
    assert received.bootstrap_dir is None
    own = received.with_own(
        WorkerOwn(
            "mine",
            "my-token",
            Path("/var/cache/px"),
            512,
            bootstrap_dir=Path("/srv/bootstrap"),
            label_studio_url="http://localhost:8080/",
            store_url="postgresql+psycopg://planner:mine@db/planner",
        )
    )
    assert (own.store_password, own.label_studio_token) == ("mine", "my-token")
    assert (own.pixel_cache_dir, own.pixel_cache_mb) == (Path("/var/cache/px"), 512)
    assert own.bootstrap_dir == Path("/srv/bootstrap")
    assert own.image_root == Path("/images")
    assert own.upload_root == Path("/label-studio/data/media/upload")
    assert own.classes == ("a", "b")


def test_a_chunk_message_with_a_null_image_records_no_image_reference(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]]
) -> None:
    """A task without an image is null in the JSON message, never the file name "None"."""
    store, pid = project
    root, _ = digit_files
    cfg = worker_config(store, root, model="tests.unit.workers.test_scoring:tiny_factory")
    own = WorkerOwn(entry_points=(cfg.model,))
    task = celery_app.make_app(BrokerConfig(broker_url="redis://127.0.0.1:9/0"), own=own).tasks[
        celery_app.SCORE_TASK
    ]
    items = [[1, None], [201, "/data/local-files/?d=digits/0200.png"]]
    show_images(store, pid, {1: ""})  # a task without an image, as the sync stores it
    done = task.apply(args=(celery_app.config_to_dict(cfg), pid, items), throw=True).get()
    assert (done["scored"], done["unscorable"]) == (1, 1)
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=str(done["model_version"]))
    assert scores.unscorable == {1: "the task has no image reference"}


class Greedy(nn.Module):
    """Runs out of memory above 4 images, as a CUDA allocator does (not producible on a CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 10)
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        if len(x) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.head(x.mean(dim=(2, 3)))


def test_running_out_of_memory_retries_once_at_half_the_batch(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    entry_point: Callable[..., str],
) -> None:
    greedy = entry_point("planner_test_greedy", make=Greedy) + ":make"
    store, pid = project
    root, _ = digit_files
    items = [(201 + i, f"/data/local-files/?d=digits/{200 + i:04d}.png") for i in range(10)]
    resources = Resources()
    # scored in this process (no decode processes), where the model notes its batches
    config = worker_config(store, root, num_workers=0)
    cfg = replace(config, model=greedy, batch_size=8, chunk_size=10)
    result = score_pool(cfg, pid, items, resources=resources)
    assert (result.scored, result.retries) == (10, 1)
    (model,) = resources.models.values()
    assert model.module.batches == [8, 4, 4, 2], "failed at 8, then the chunk at 4"
    more = [(211 + i, f"/data/local-files/?d=digits/{210 + i:04d}.png") for i in range(10)]
    with pytest.raises(torch.OutOfMemoryError):  # 16, then 8: still too big, and only once
        score_pool(replace(cfg, batch_size=16), pid, more, resources=resources)
    assert model.module.batches[4:] == [10, 8]


class Poisoned(nn.Module):
    """Fails on a batch holding a white image: an input this model cannot take."""

    error: Exception = RuntimeError("the model cannot take this image")

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).amin(dim=1) > 0.99).any()):
            raise self.error
        return self.head(x.mean(dim=(2, 3)))


class Unreachable(Poisoned):
    """Fails as every chunk would: the store gone for longer than the retries."""

    error = TransientError("the store is gone")


def poisoned() -> nn.Module:
    return Poisoned()


def unreachable() -> nn.Module:
    return Unreachable()


def _poisoned_pool(
    store: Store, pid: int, root: Path
) -> tuple[WorkerConfig, list[tuple[int, str]]]:
    """Three chunks of 10; task 215, in the second, shows a white image."""
    Image.new("RGB", (32, 32), "white").save(root / "digits" / "white.png")
    items = [(201 + i, f"/data/local-files/?d=digits/{200 + i:04d}.png") for i in range(30)]
    items[14] = (215, "/data/local-files/?d=digits/white.png")
    show_images(store, pid, {215: items[14][1]})
    cfg = worker_config(store, root, model=f"{__name__}:poisoned", num_workers=0)
    return replace(cfg, chunk_size=10, batch_size=10, max_retries=0), items


def test_a_chunk_that_always_fails_leaves_the_other_chunks_scored_and_says_so(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]]
) -> None:
    store, pid = project
    cfg, items = _poisoned_pool(store, pid, digit_files[0])
    result = score_pool(cfg, pid, items)
    assert (result.chunks, result.scored, result.failed) == (3, 20, 1)
    assert result.model_version
    (warning,) = result.warnings
    assert "1 of 3 chunk(s) failed" in warning
    assert "RuntimeError: the model cannot take this image" in warning
    with store.session() as session:
        left = unscored(
            session,
            project_id=pid,
            model_version=result.model_version,
            task_ids=[i for i, _ in items],
        )
    # the failed chunk's batches without the white image may have been stored before it failed
    assert 215 in left, "the failed chunk's items are scored next cycle"
    assert set(left) <= set(range(211, 221)), "every other chunk is stored"


def test_an_error_every_chunk_would_meet_stops_the_pool_at_once(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]]
) -> None:
    store, pid = project
    cfg, items = _poisoned_pool(store, pid, digit_files[0])
    with pytest.raises(TransientError, match="the store is gone"):
        score_pool(replace(cfg, model=f"{__name__}:unreachable"), pid, items)
    with store.session() as session:
        scored = session.exec(select(ScoreRecord.ls_task_id)).all()
    assert sorted(scored) == list(range(201, 211)), "chunk 3 never ran"


def _daemon_settings(store: Store, pid: int, root: Path, folder: Path) -> Settings:
    """The daemon's settings scoring the poisoned pool, its project given the classes."""
    with store.session() as session:
        row = session.get(Project, pid)
        assert row is not None
        row.classes = list(CLASSES)
        session.add(row)
    return Settings(
        store={"url": store.engine.url.render_as_string(hide_password=False)},
        artifacts={"dir": folder / "artifacts"},
        workers={
            "image_root": root,
            "num_workers": 0,
            "model": f"{__name__}:poisoned",
            "chunk_size": 10,
            "batch_size": 10,
        },
    )


def test_the_daemon_logs_the_failed_chunks_and_pushes_the_rest(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, pid = project
    root, _ = digit_files
    _, items = _poisoned_pool(store, pid, root)
    settings = _daemon_settings(store, pid, root, tmp_path)
    caplog.set_level(logging.WARNING, logger="planner.daemon")
    version = _scorer(settings, store)(pid, items)  # in a child process, as the daemon does
    assert version
    (logged,) = [r.getMessage() for r in caplog.records if "chunk(s) failed" in r.getMessage()]
    assert "1 of 3 chunk(s) failed" in logged


def test_the_daemon_says_once_which_folder_to_give_the_workers(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Images Label Studio serves from its uploads while workers.upload_root is unset: the
    log says what to set at the first scoring of a daemon, not at every cycle; the local
    storage's, read from workers.image_root, are not named."""
    store, pid = project
    root, _ = digit_files
    _, items = _poisoned_pool(store, pid, root)
    items = [item for item in items if item[0] != 215]
    uploads = {301: "/data/upload/1/ab12-a.png", 302: "/data/upload/1/ab12-b.png"}
    with store.session() as session:
        for task_id, image in uploads.items():
            session.add(Task(project_id=pid, ls_task_id=task_id, image=image))
    items += list(uploads.items())
    settings = _daemon_settings(store, pid, root, tmp_path)
    # no Label Studio here: the uploads' chunk fails at once instead of retrying for minutes
    workers = settings.workers.model_copy(update={"max_retries": 0})
    score = _scorer(settings.model_copy(update={"workers": workers}), store)
    caplog.set_level(logging.WARNING, logger="planner.daemon")
    assert score(pid, items)
    hints = [r.getMessage() for r in caplog.records if "served by Label Studio" in r.getMessage()]
    assert hints == [
        "scoring project None: 2 unlabelled tasks' images are served by Label Studio from the "
        "files uploaded into it, some 16 core-ms of its CPU each (docs/benchmarks.md); set "
        "workers.upload_root to its media/upload folder where the workers run to read them "
        "from the disk"
    ]
    caplog.clear()
    assert score(pid, items)
    assert not [r for r in caplog.records if "served by Label Studio" in r.getMessage()]


def test_the_daemon_records_its_last_scoring_run_and_a_clean_run_clears_the_warnings(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """The warnings reached the log alone; status, the report and the dashboard read them
    from the store, where each run replaces the one before."""
    store, pid = project
    root, _ = digit_files
    _, items = _poisoned_pool(store, pid, root)
    ended = iter(
        [datetime(2026, 12, 7, 6, 31, tzinfo=UTC), datetime(2026, 12, 7, 7, 1, tzinfo=UTC)]
    )
    score = _scorer(_daemon_settings(store, pid, root, tmp_path), store, clock=lambda: next(ended))
    version = score(pid, items)
    with store.session() as session:
        first = last_scoring(session.get(SyncState, pid))
    assert first is not None
    assert (first.at, first.model_version, first.failed_chunks) == (
        datetime(2026, 12, 7, 6, 31, tzinfo=UTC),
        version,
        1,
    )
    (warning,) = first.warnings
    assert "1 of 3 chunk(s) failed" in warning
    assert "RuntimeError: the model cannot take this image" in warning
    assert score(pid, [item for item in items if item[0] != 215]) == version  # nothing fails
    with store.session() as session:
        second = last_scoring(session.get(SyncState, pid))
    assert second == ScoringRun(datetime(2026, 12, 7, 7, 1, tzinfo=UTC), version, (), 0)


def _chunk(version: str, scored: int, skipped: int = 0) -> ChunkResult:
    return ChunkResult(model_version=version, scored=scored, unscorable=0, skipped=skipped)


def test_a_pool_names_the_version_every_chunk_agreed_on() -> None:
    # pass 1: the bootstrap network was retrained after the first chunk; pass 2 agrees
    rounds = [
        [_chunk("bootstrap-50-a", 10), _chunk("bootstrap-230-b", 10)],
        [_chunk("bootstrap-230-b", 10), _chunk("bootstrap-230-b", 0, skipped=10)],
    ]
    result = settle(2, rounds)
    assert result.model_version == "bootstrap-230-b"
    assert result.model_versions == ("bootstrap-50-a", "bootstrap-230-b")
    assert (result.scored, result.skipped) == (20, 0)
    assert settle(0, []).model_version == ""


@pytest.mark.parametrize(
    ("message", "own", "sent"),
    [
        ("http://label-studio:8080/", "http://label-studio:8080", True),
        ("https://ls.example.org/", "https://LS.example.org:443/", True),
        ("https://ls.example.org/studio/", "https://ls.example.org/studio", True),
        ("http://attacker.example:8080/", "http://label-studio:8080/", False),
        ("http://label-studio:8081/", "http://label-studio:8080/", False),
        ("http://label-studio:8080/", "https://label-studio:8080/", False),
        ("https://ls.example.org/other/", "https://ls.example.org/studio/", False),
        ("http://label-studio:99999/", "http://label-studio:8080/", False),
    ],
)
def test_the_token_goes_only_to_the_workers_own_label_studio(
    message: str | None, own: str, sent: bool
) -> None:
    received = WorkerConfig(store_url="sqlite://", classes=("a",), label_studio_url=message)
    mine = WorkerOwn(label_studio_token="my-token", label_studio_url=own)
    if sent:
        assert received.with_own(mine).label_studio_token == "my-token"
    else:
        with pytest.raises(ConfigError, match="its token goes only there"):
            received.with_own(mine)
    # a chunk naming no Label Studio gets no token; a worker with none has nothing to leak
    assert replace(received, label_studio_url=None).with_own(mine).label_studio_token is None
    assert received.with_own(WorkerOwn(label_studio_url=own)).label_studio_token is None


@pytest.mark.parametrize(
    ("message", "sent"),
    [
        ("postgresql+psycopg://planner@db:5432/planner", True),
        ("postgresql+psycopg://planner:guess@db:5432/planner", True),
        ("postgresql+psycopg://planner@attacker:5432/planner", False),
        ("postgresql+psycopg://planner@db:5432/other", False),
        ("postgresql+psycopg://admin@db:5432/planner", False),
    ],
)
def test_the_store_password_goes_only_to_the_workers_own_store(message: str, sent: bool) -> None:
    received = WorkerConfig(store_url=message, classes=("a",))
    own_url = "postgresql+psycopg://planner:url-secret@db:5432/planner"
    mine = WorkerOwn(store_password="pw", store_url=own_url)
    if sent:
        assert received.with_own(mine).store_password == "pw"
    else:
        with pytest.raises(ConfigError, match="its password goes only there") as caught:
            received.with_own(mine)
        assert "url-secret" not in str(caught.value)


class _Pool:
    """A Celery group's result as ``_await`` reads it: ``done_at[i]`` is the clock time
    chunk ``i`` finishes (a fake: a pool that stalls for hours can't be waited on here)."""

    def __init__(self, clock: list[float], done_at: list[float]) -> None:
        self.clock, self.done_at = clock, done_at

    def completed_count(self) -> int:
        return sum(t <= self.clock[0] for t in self.done_at)

    def ready(self) -> bool:
        return self.completed_count() == len(self.done_at)


class _Control:
    def __init__(self, clock: list[float], answers_until: float) -> None:
        self.clock, self.answers_until = clock, answers_until

    def ping(self, timeout: float) -> list[dict[str, object]]:
        return [{"worker@host": {"ok": "pong"}}] if self.clock[0] < self.answers_until else []


def _wait(
    done_at: list[float], stall_s: float, answers_until: float = float("inf")
) -> tuple[float, TransientError | None]:
    """Run ``_await`` on a fake clock: the clock time it returned or gave up at, and the error
    it gave up with (None when every chunk finished)."""
    clock = [0.0]
    celery = SimpleNamespace(control=_Control(clock, answers_until))

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    try:
        dispatch._await(
            celery,  # type: ignore[arg-type]
            _Pool(clock, done_at),  # type: ignore[arg-type]
            len(done_at),
            stall_s,
            broker="redis://b",
            sleep=sleep,
            clock=lambda: clock[0],
        )
    except TransientError as error:
        return clock[0], error
    return clock[0], None


def test_a_celery_pool_is_waited_on_as_long_as_chunks_keep_finishing() -> None:
    # five chunks an hour apart: five hours in all, never two without one finishing
    waited, error = _wait([3600.0 * k for k in range(1, 6)], stall_s=2 * 3600)
    assert error is None
    assert waited == pytest.approx(18000, abs=1)


def test_a_celery_pool_where_no_chunk_finishes_is_given_up_after_the_stall_window() -> None:
    waited, error = _wait([600.0, 1e9, 1e9], stall_s=2 * 3600)
    assert error is not None
    assert re.search(r"no chunk finished in 7200 s \(1 of 3 done\)", str(error))
    # the window runs from the last chunk that finished (at 600 s), not from the start
    assert waited == pytest.approx(600 + 7200, abs=1)


def test_a_celery_pool_nobody_works_on_is_given_up_within_a_minute_or_so() -> None:
    waited, error = _wait([1e9, 1e9], stall_s=2 * 3600, answers_until=0.0)
    assert error is not None
    assert re.search(r"no Celery worker answers on redis://b \(0 of 2", str(error))
    # a minute without an answer, give or take a ping's interval: not the two-hour window
    assert 60 <= waited <= 75
    # workers that stop answering (all killed) are noticed as soon: last answer at 290 s
    waited, error = _wait([1e9, 1e9], stall_s=2 * 3600, answers_until=300.0)
    assert error is not None
    assert "no Celery worker answers" in str(error)
    assert "0 of 2" in str(error)
    assert 350 <= waited <= 300 + 75


def test_the_stall_window_outlasts_a_redelivered_chunk_run_to_its_hard_limit() -> None:
    cfg = WorkerConfig(store_url="sqlite://", classes=("a",), time_limit_s=600)
    # visibility 1560 (2 x 600 + 300 + 60) + 600 + the longest retry backoff, 300
    assert cfg.stall_s == 2460
    with pytest.raises(ConfigError, match="visibility_timeout_s"):
        WorkerConfig(
            store_url="sqlite://", classes=("a",), time_limit_s=600, visibility_timeout_s=60
        )


@pytest.mark.parametrize(
    ("model", "allowed", "runs"),
    [
        ("bootstrap", (), True),
        ("/models/handed-back.pt2", (), True),
        ("team.nets:resnet", ("team.nets:resnet",), True),
        ("team.nets:other", ("team.nets:*",), True),
        ("os:abort", ("team.nets:resnet",), False),
        ("team.nets:other", ("team.nets:resnet",), False),
        ("team.nets.evil:net", ("team.nets:*",), False),
    ],
)
def test_a_chunk_may_name_only_the_code_the_workers_own_settings_name(
    model: str, allowed: tuple[str, ...], runs: bool
) -> None:
    received = WorkerConfig(store_url="sqlite://", classes=("a",), model=model)
    mine = WorkerOwn(entry_points=allowed)
    if runs:
        assert received.with_own(mine).model == model
    else:
        with pytest.raises(ConfigError, match="it is not imported; add it"):
            received.with_own(mine)


def test_the_workers_own_model_is_an_entry_point_it_allows(tmp_path: Path) -> None:
    config = tmp_path / "planner.toml"
    config.write_text("[workers]\nmodel = 'team.nets:resnet'\nentry_points = ['lab.models:*']\n")
    own = worker_own(load_settings(config, environ=False))
    assert own.entry_points == ("team.nets:resnet", "lab.models:*")
    default = worker_own(load_settings(None, environ=False))
    assert default.entry_points == (), "bootstrap is no code to allow"


def test_a_relative_bootstrap_folder_is_the_one_the_worker_was_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "planner.toml"
    config.write_text("[workers]\nbootstrap_dir = 'var/bootstrap'\n")
    settings = load_settings(config, environ=False)
    assert worker_own(settings).bootstrap_dir == tmp_path / "var" / "bootstrap"
    assert settings_worker_config(settings, ("a",)).bootstrap_dir == tmp_path / "var" / "bootstrap"


def test_the_image_roots_the_fetches_and_the_writes_reach_the_scoring_job(tmp_path: Path) -> None:
    config = tmp_path / "planner.toml"
    config.write_text(
        "[workers]\nimage_root = '/images'\nupload_root = '/ls/media/upload'\nfetches_at_once = 2\n"
        "write_rows = 7\n"
    )
    cfg = settings_worker_config(load_settings(config, environ=False), ("a",))
    assert (cfg.image_root, cfg.upload_root) == (Path("/images"), Path("/ls/media/upload"))
    assert (cfg.fetches_at_once, cfg.write_rows) == (2, 7)
    assert settings_worker_config(load_settings(environ=False), ("a",)).write_rows == 512
    source = image_source(cfg)
    assert (source.image_root, source.upload_root) == (cfg.image_root, cfg.upload_root)
