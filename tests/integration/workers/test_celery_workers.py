"""Scoring through the real Redis and real `celery worker` processes: the same scores as in
process, secrets kept out of the messages, retries at half the batch, a worker killed
mid-chunk."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import redis
from celery.signals import before_task_publish
from PIL import Image
from sqlmodel import func, select

from planner.errors import TransientError
from planner.store import Store, ensure_project, open_store
from planner.store.models import ScoreRecord, Task
from planner.store.scores import load_scores
from tests.unit.workers.conftest import KeptAliveServer, show_images, worker_config
from workers import dispatch
from workers.batches import chunked
from workers.config import WorkerConfig
from workers.dispatch import _through_celery, score_pool

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/7"
PLANNER = str(Path(sys.executable).parent / "planner")
REPO = Path(__file__).resolve().parents[3]
HOOKS = "tests.integration.workers.hooks"
TOKEN = "worker-side-token-3f9a"


def _start_worker(
    queue: str,
    log: Path,
    *,
    limits: str = "",
    env: dict[str, str] | None = None,
    via_cli: bool = True,
) -> subprocess.Popen[bytes]:
    """``planner worker -c planner.toml`` (or ``run_worker`` called from Python) on ``queue``;
    ``limits``: extra ``[workers]`` lines of its config file."""
    config = log.with_suffix(".toml")
    # the chunks name the test's models: the worker's own settings must allow that code
    entry = f"entry_points = ['{HOOKS}:*']\n"
    config.write_text(f"[workers]\nbroker_url = {REDIS!r}\n{entry}{limits}\n")
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    argv = [PLANNER, "worker", "-c", str(config), "--queues", queue, "--concurrency", "1"]
    if not via_cli:
        code = (
            "from planner.connect import broker_config, worker_own; "
            "from pathlib import Path; from planner.settings import load_settings; "
            "from workers.celery_app import run_worker; "
            f"s = load_settings(Path({str(config)!r})); "
            f"run_worker(broker_config(s), [{queue!r}], own=worker_own(s))"
        )
        argv = [sys.executable, "-c", code]
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture
def queue() -> str:
    return f"score-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _items(count: int) -> list[tuple[int, str]]:
    return [(i, f"/data/local-files/?d=digits/{i - 1:04d}.png") for i in range(201, 201 + count)]


def _copy_store(store: Store, path: Path) -> tuple[Store, int]:
    other = open_store(f"sqlite:///{path}")
    with store.session() as source, other.session() as target:
        other_pid = int(ensure_project(target, ls_project_id=1).id or 0)
        for task in source.exec(select(Task)).all():
            target.add(Task(**{**task.model_dump(), "id": None, "project_id": other_pid}))
    return other, other_pid


def test_celery_gives_the_embedded_scores(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    tmp_path: Path,
    queue: str,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    store, pid = project
    root, _ = digit_files
    (root / "digits" / "corrupt-celery.png").write_bytes(b"not an image")
    bad = [
        (901, "/data/local-files/?d=digits/absent.png"),
        (902, "/data/local-files/?d=digits/corrupt-celery.png"),
        (903, "http://metadata.google.internal/computeMetadata/v1/"),
    ]
    items = _items(57) + bad
    shared = replace(worker_config(store, root), bootstrap_dir=tmp_path / "bootstrap")
    embedded = score_pool(shared, pid, items)
    # a second store with the same tasks, scored through Redis and a worker process that
    # finds the bootstrap network the embedded run trained in the shared folder (its own
    # setting: the task message does not carry the sender's folder)
    other, other_pid = _copy_store(store, tmp_path / "celery.db")
    with other:
        own = f"bootstrap_dir = '{tmp_path / 'bootstrap'}'\n"
        workers.append(_start_worker(queue, tmp_path / "worker.log", limits=own))
        # two decode processes in the worker's prefork child, a daemon that may start them
        cfg = replace(shared, store_url=f"sqlite:///{tmp_path / 'celery.db'}", num_workers=2)
        result = score_pool(replace(cfg, broker_url=REDIS, queue=queue), other_pid, items)
        assert not [w for w in result.warnings if "num_workers" in w], result.warnings
        assert result.model_version == embedded.model_version
        assert (result.scored, result.unscorable, result.chunks) == (57, 3, 2)
        with store.session() as a, other.session() as b:
            mine = load_scores(a, project_id=pid, model_version=result.model_version)
            theirs = load_scores(b, project_id=other_pid, model_version=result.model_version)
    np.testing.assert_array_equal(mine.task_ids, theirs.task_ids)
    np.testing.assert_allclose(mine.probs, theirs.probs, atol=1e-4)
    assert theirs.unscorable == mine.unscorable
    assert sorted(theirs.unscorable) == [901, 902, 903]
    assert "does not exist" in theirs.unscorable[901]
    assert "corrupt" in theirs.unscorable[902]
    assert "allow-list" in theirs.unscorable[903]


@pytest.fixture
def label_studio_stand_in(digit_files: tuple[Path, list[int]]) -> Iterator[str]:
    """Serves ``/data/local-files/?d=...`` to requests carrying ``Token TOKEN`` only;
    ``?d=flaky/NAME`` answers 503 the first time."""
    root, _ = digit_files
    seen: set[str] = set()

    def name_of(path: str) -> str:
        return (parse_qs(urlsplit(path).query).get("d") or [""])[0]

    def status_for(path: str, headers: Message) -> int:
        if headers.get("Authorization") != f"Token {TOKEN}":
            return 401
        name = name_of(path)
        if name.startswith("flaky/") and name not in seen:
            seen.add(name)
            return 503
        return 200

    server = KeptAliveServer(
        lambda path: (root / "digits" / Path(name_of(path)).name).read_bytes(), status_for
    )
    yield server.url
    server.stop()


def test_secrets_stay_out_of_messages_and_failing_chunks_retry_at_half_the_batch(
    project: tuple[Store, int],
    tmp_path: Path,
    queue: str,
    workers: list[subprocess.Popen[bytes]],
    label_studio_stand_in: str,
) -> None:
    store, pid = project
    log = tmp_path / "worker.log"
    limits = "time_limit_s = 20\nsoft_time_limit_s = 3\n"
    env = {
        "PLANNER_LABEL_STUDIO__TOKEN": TOKEN,
        "PLANNER_LABEL_STUDIO__URL": label_studio_stand_in,
        "PLANNER_TEST_HOOK_DIR": str(tmp_path),
    }
    workers.append(_start_worker(queue, log, limits=limits, env=env))
    # the daemon's side knows the token too (in-process scoring needs it), but never sends it
    cfg = replace(
        worker_config(store, Path("/nonexistent")),
        image_root=None,
        label_studio_url=label_studio_stand_in,
        label_studio_token=TOKEN,
        broker_url=REDIS,
        queue=queue,
        batch_size=8,
        chunk_size=10,
    )
    bodies: list[str] = []

    def capture(body: Any = None, **_: object) -> None:
        bodies.append(json.dumps(body))

    before_task_publish.connect(capture, weak=False)
    try:
        greedy = score_pool(replace(cfg, model=f"{HOOKS}:greedy"), pid, _items(10), timeout_s=300)
        slow = score_pool(replace(cfg, model=f"{HOOKS}:slow"), pid, _items(10), timeout_s=300)
        # an image the server cannot give now: the chunk raises TransientError after writing
        # the rest, Celery retries it with backoff, and the retry fetches only that image
        flaky = [(211 + i, f"/data/local-files/?d=digits/{210 + i:04d}.png") for i in range(9)]
        flaky.append((220, "/data/local-files/?d=flaky/0219.png"))
        show_images(store, pid, {220: flaky[-1][1]})
        later = score_pool(replace(cfg, model=f"{HOOKS}:greedy", batch_size=4), pid, flaky)
    finally:
        before_task_publish.disconnect(capture)
    assert len(bodies) == 3
    assert not any(TOKEN in body for body in bodies), "a task message carried the token"
    assert all("label_studio_token" not in body for body in bodies)
    # every image came through the worker's own token: nothing was refused with a 401
    assert (greedy.scored, greedy.unscorable, greedy.retries) == (10, 0, 1)
    assert (slow.scored, slow.unscorable, slow.retries) == (10, 0, 1)
    assert (later.scored, later.skipped, later.retries, later.deferred) == (1, 9, 1, 0)
    with store.session() as session:
        stored = load_scores(session, project_id=pid, model_version=later.model_version)
    assert sorted(stored.task_ids.tolist()) == list(range(201, 221))
    text = log.read_text(errors="replace")
    assert "out of memory at batch 8; retrying at 4" in text
    assert "past its soft time limit at batch 8; retrying at 4" in text


def test_a_worker_killed_mid_chunk_loses_nothing_and_scores_nothing_twice(
    project: tuple[Store, int],
    tmp_path: Path,
    digit_files: tuple[Path, list[int]],
    queue: str,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    store, pid = project
    root, _ = digit_files
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # chunks of 10 in batches of 4, 4, 2: forward pass 8 is the second batch of chunk 3,
    # reached once chunks 1 and 2 (20 rows) and chunk 3's first batch (4 rows) are written
    env = {"PLANNER_TEST_HOOK_DIR": str(hooks), "PLANNER_TEST_BLOCK_AT": "8"}
    # visibility > 2 x 10 + 1: a chunk held through a retry's wait and a busy worker
    limits = "time_limit_s = 10\nretry_backoff_max_s = 1\nvisibility_timeout_s = 22\n"
    cfg = replace(
        worker_config(store, root),
        model=f"{HOOKS}:blocking",
        broker_url=REDIS,
        queue=queue,
        chunk_size=10,
        batch_size=4,
        write_rows=4,  # each batch written as it comes
        num_workers=0,  # the forward passes in the worker process, counted there, in order
    )
    items = _items(100)
    chunks = chunked(items, 10)
    first = _start_worker(queue, tmp_path / "first.log", limits=limits, env=env)
    workers.append(first)
    pool = ThreadPoolExecutor(max_workers=1)
    outcome = pool.submit(_through_celery, cfg, pid, chunks, 300, time.sleep)

    def rows() -> int:
        with store.session() as session:
            return int(session.exec(select(func.count()).select_from(ScoreRecord)).one())

    marker = hooks / "blocked"
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the worker never reached the blocking forward pass"
    blocked_at = time.monotonic()
    assert rows() == 24, "chunks 1-2 and the first batch of chunk 3 were written"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    # the broker hands chunk 3 out again once its visibility timeout has passed; a worker
    # starting after that finds it on its first look
    time.sleep(max(0.0, blocked_at + 23 - time.monotonic()))
    workers.append(
        _start_worker(queue, tmp_path / "second.log", limits=limits, env=env, via_cli=False)
    )
    done = outcome.result(timeout=300)
    pool.shutdown()
    assert not done.errors
    results = done.results

    third = results[2]
    assert third.redelivered, "chunk 3 came back from the broker after the kill"
    assert (third.skipped, third.scored, third.written) == (4, 6, 6)
    assert [r.redelivered for r in results[:2]] == [False, False]
    # nothing was computed or sent to the store twice: every row attempted was inserted
    # (none fell to the unique constraint), and the completed runs plus the killed run's 4
    # rows add up to the 100 items
    assert all(r.scored == r.written for r in results)
    assert sum(r.scored for r in results) + 4 == 100
    forwards = [line.split() for line in (hooks / "forwards.log").read_text().splitlines()]
    assert sum(int(n) for _, n in forwards) == 100, "each image went through the model once"
    assert len({pid_ for pid_, _ in forwards}) == 2, "both workers scored"
    with store.session() as session:
        scored = session.exec(select(ScoreRecord.ls_task_id)).all()
    assert sorted(scored) == [i for i, _ in items], "every item scored exactly once"


def _white_in_chunk_two(
    project: tuple[Store, int], root: Path, queue: str, hook: str, count: int
) -> tuple[WorkerConfig, list[tuple[int, str]]]:
    """A pool of ``count`` items in chunks of 10 whose task 215 shows a white image, and a
    config scoring it with the hooks' model ``hook`` through ``queue``: one batch a chunk,
    its forward pass in the worker's pool process."""
    store, pid = project
    name = f"white-{uuid.uuid4().hex[:8]}.png"
    Image.new("RGB", (32, 32), "white").save(root / "digits" / name)
    items = _items(count)
    items[14] = (215, f"/data/local-files/?d=digits/{name}")
    show_images(store, pid, {215: items[14][1]})
    cfg = replace(
        worker_config(store, root),
        model=f"{HOOKS}:{hook}",
        broker_url=REDIS,
        queue=queue,
        chunk_size=10,
        batch_size=10,
        num_workers=0,
    )
    return cfg, items


def test_a_chunk_failing_on_its_worker_leaves_the_other_chunks_scored(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    queue: str,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    store, pid = project
    cfg, items = _white_in_chunk_two(project, digit_files[0], queue, "poisoned", 30)
    workers.append(_start_worker(queue, tmp_path / "worker.log"))
    result = score_pool(cfg, pid, items, timeout_s=300)
    assert (result.chunks, result.scored, result.failed) == (3, 20, 1)
    (warning,) = result.warnings
    assert "1 of 3 chunk(s) failed" in warning
    assert "RuntimeError: the model cannot take this image" in warning
    with store.session() as session:
        scored = session.exec(select(ScoreRecord.ls_task_id)).all()
    # the other chunks all stored; the failed one's batches without the white image may be
    assert {i for i, _ in items if not 211 <= i <= 220} <= set(scored)
    assert 215 not in scored, "scored next cycle"


def test_a_chunk_that_kills_its_worker_process_is_retried_at_most_max_retries_times(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    queue: str,
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    _, pid = project
    cfg, items = _white_in_chunk_two(project, digit_files[0], queue, "fatal", 20)
    limits = "max_retries = 2\nretry_backoff_s = 0.5\n"
    env = {"PLANNER_TEST_HOOK_DIR": str(tmp_path)}
    workers.append(_start_worker(queue, tmp_path / "worker.log", limits=limits, env=env))
    # redelivered for ever, the chunk would keep the pool from finishing: given up after 60 s
    result = score_pool(cfg, pid, items, timeout_s=60)
    runs = (tmp_path / "fatal.log").read_text().split()
    assert len(runs) == 3, "the first run and max_retries = 2 retries"
    assert len(set(runs)) == 3, "each in a new pool process"
    assert (result.scored, result.failed) == (10, 1)
    (warning,) = result.warnings
    assert "WorkerLostError" in warning


def test_a_pool_sent_where_no_worker_listens_is_given_up_with_what_to_do(
    project: tuple[Store, int],
    digit_files: tuple[Path, list[int]],
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, pid = project
    root, _ = digit_files
    # a Redis database of its own: no test's worker answers pings there
    broker = REDIS.rsplit("/", 1)[0] + "/13"
    monkeypatch.setattr(dispatch, "PING_EVERY_S", 0.5)
    monkeypatch.setattr(dispatch, "NO_WORKER_S", 3.0)
    cfg = replace(worker_config(store, root), broker_url=broker, queue=queue, chunk_size=10)
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match=r"no Celery worker answers .*\(0 of 2 chunk"):
            score_pool(cfg, pid, _items(20))
        assert time.monotonic() - started < 60, "it waited for the stall window"
    finally:
        redis.Redis.from_url(broker).flushdb()  # the two chunks nobody took
    # processes forked from here on (the decode processes of embedded scoring) must not block
    # for good in kombu's after-fork hook on a pool's connection left waiting for a reply:
    # the first child read the one reply off the shared socket, the second waited for ever
    fork = multiprocessing.get_context("fork")
    children = [fork.Process(target=time.sleep, args=(0,)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
        if child.exitcode is None:
            child.kill()
    codes = [child.exitcode for child in children]
    assert codes == [0, 0], "a forked process hung closing the broker's connections"
