"""Where images are decoded (processes reading several images at once) and where the forward
pass runs on a CPU: in each decode process, one thread each, when there is one a CPU."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import lmdb
import numpy as np
import pytest
import torch

from planner.connect import worker_config
from planner.settings import Settings
from planner.store import Store
from tests.unit.workers.conftest import KeptAliveServer
from tests.unit.workers.conftest import worker_config as store_worker_config
from tests.unit.workers.test_dispatch import Greedy
from tests.unit.workers.test_inference import ITEMS, NoDropout, _net
from workers import devices, inference, pixels
from workers.batches import Images
from workers.decode import decode
from workers.decoders import Decoders, keep_heap
from workers.devices import decode_workers
from workers.dispatch import score_pool
from workers.images import ImageSource
from workers.inference import score_items
from workers.pixels import PixelCache
from workers.scoring import Resources

MB = 2**20


class ProcessSpy(NoDropout):
    """Notes, at each forward pass, the process it ran in, torch's threads there and that
    process's children, in ``log`` (a file: the pass may run in a forked decode process)."""

    def __init__(self, log: Path) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        children = len(multiprocessing.active_children())
        with self.log.open("a") as out:
            out.write(f"{os.getpid()} {torch.get_num_threads()} {children}\n")
        return super().forward(x)

    def passes(self) -> list[tuple[int, int, int]]:
        """``(pid, threads, children)`` of each forward pass so far, then forgotten."""
        lines = self.log.read_text().split() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return [(int(a), int(b), int(c)) for a, b, c in zip(*[iter(lines)] * 3, strict=True)]


def test_a_decode_process_a_cpu_scores_its_own_batches_and_the_same_as_one_process(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, _ = digit_files
    source = ImageSource(image_root=root)
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    spy = ProcessSpy(tmp_path / "passes")
    alone = score_items(spy, ITEMS, source, batch_size=8, device="cpu", num_workers=0)
    assert spy.passes() == [(os.getpid(), 2, 0)] * 3, "no decode process: every CPU here"
    replicas = score_items(spy, ITEMS, source, batch_size=8, device="cpu", num_workers=2)
    passes = spy.passes()
    assert len(passes) == 3
    assert os.getpid() not in {pid for pid, _, _ in passes}, "scored in the decode processes"
    assert {threads for _, threads, _ in passes} == {1}, "one torch thread a replica"
    assert replicas.task_ids == alone.task_ids
    assert (replicas.probs == alone.probs).all()
    fed = score_items(spy, ITEMS, source, batch_size=8, device="cpu", num_workers=1)
    passes = spy.passes()
    assert [(pid, threads) for pid, threads, _ in passes] == [(os.getpid(), 1)] * 3, (
        "fewer decoders than CPUs: they feed this process, its forward on the CPU they leave"
    )
    assert min(children for _, _, children in passes) >= 1
    score_items(spy, ITEMS, source, batch_size=8, device="cpu", num_workers=2, threads=3)
    assert [(pid, t) for pid, t, _ in spy.passes()] == [(os.getpid(), 3)] * 3, "set by hand"
    assert (fed.probs == alone.probs).all()


def _resident_after_a_freed_block(keep: bool, out: Any) -> None:
    """In a fresh process: the resident bytes a 40 MB block leaves behind once freed."""
    if keep:
        keep_heap()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    block = bytearray(40 * MB)
    block[::4096] = b"x" * len(block[::4096])  # touched: every page resident
    del block
    out.put(
        (int(Path("/proc/self/statm").read_text().split()[1]) - pages) * os.sysconf("SC_PAGESIZE")
    )


@pytest.mark.skipif(
    not Path("/proc/self/statm").exists() or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="needs Linux with glibc",
)
def test_a_decode_process_keeps_the_memory_a_batch_freed_for_the_next() -> None:
    context = multiprocessing.get_context("spawn")  # a fresh heap, not this process's
    kept = {}
    for keep in (False, True):
        queue = context.Queue()
        process = context.Process(target=_resident_after_a_freed_block, args=(keep, queue))
        process.start()
        kept[keep] = queue.get(timeout=60)
        process.join()
    assert kept[False] < 4 * MB, "by default a block this large is unmapped when freed"
    assert kept[True] > 36 * MB, "kept: the next batch's block needs no page faulted in"


def test_the_scoring_process_and_every_decode_process_keep_their_heap(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, _ = digit_files
    started = tmp_path / "started"

    def spy(worker: int = 0) -> None:
        with started.open("a") as out:
            out.write(f"{os.getpid()}\n")

    monkeypatch.setattr("workers.inference.keep_heap", spy)  # the scoring process's call
    monkeypatch.setattr("workers.decoders.keep_heap", spy)  # each decode process's start
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    source = ImageSource(image_root=root)
    for workers in (2, 1):  # replicas, then decoders feeding this process
        score_items(NoDropout(), ITEMS, source, batch_size=8, device="cpu", num_workers=workers)
        pids = started.read_text().split()
        started.unlink()
        assert pids[0] == str(os.getpid()), "the scoring process first"
        assert len(set(pids[1:])) == workers, "then each decode process"
        assert str(os.getpid()) not in pids[1:]


def test_a_pixel_cache_failing_in_a_decode_process_is_reported_and_nothing_is_lost(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)

    # reads work (the scoring process finds nothing cached); only the decode processes'
    # writes fail, so only they can tell
    monkeypatch.setattr(pixels, "_evicted", full_disk)
    cache = PixelCache(tmp_path / "cache", 64 * MB)
    scores = score_items(
        _net(NoDropout), ITEMS, ImageSource(image_root=root), batch_size=8, device="cpu",
        num_workers=2, cache=cache,
    )  # fmt: skip
    assert len(scores.task_ids) == len(ITEMS)
    assert cache.broken is None, "this process's cache never failed"
    assert any("pixel cache" in note and "No space left" in note for note in scores.warnings)


@pytest.mark.parametrize("num_workers", [1, 0], ids=["feeding-decode-process", "no-decode-process"])
def test_a_pixel_cache_failing_where_batches_feed_the_forward_pass_is_reported(
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    num_workers: int,
) -> None:
    """Decode processes feeding this process's forward pass (fewer than the CPUs, or a GPU's),
    or none: the cache's failure where the batch was read comes with its scores, and kept
    decode processes whose cache is off are not kept."""
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    monkeypatch.setattr(pixels, "_evicted", full_disk)
    cache = PixelCache(tmp_path / "cache", 64 * MB)
    decoders = Decoders()
    try:
        scores = score_items(
            _net(NoDropout), ITEMS, ImageSource(image_root=root), batch_size=8, device="cpu",
            num_workers=num_workers, cache=cache, decoders=decoders,
        )  # fmt: skip
        assert len(scores.task_ids) == len(ITEMS)
        assert any("pixel cache" in note and "No space left" in note for note in scores.warnings)
        assert not decoders.alive, "decode processes with their cache off are not kept"
    finally:
        decoders.close()
        cache.close()


def test_a_replica_running_out_of_memory_is_reported_as_such_for_the_retry_at_half_batch(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
        score_items(
            Greedy(), ITEMS, ImageSource(image_root=root), batch_size=8, device="cpu",
            num_workers=2,
        )  # fmt: skip


@pytest.fixture
def slow_label_studio(digit_files: tuple[Path, list[int]]) -> Iterator[KeptAliveServer]:
    """Answers each image after 50 ms, as a server a network round trip away; counts the
    requests it holds at once."""
    root, _ = digit_files
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def body(path: str) -> bytes:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return (root / parse_qs(urlsplit(path).query)["d"][0]).read_bytes()

    server = KeptAliveServer(body)
    server.most = state  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_the_images_of_a_batch_are_in_flight_together(
    slow_label_studio: KeptAliveServer,
) -> None:
    source = ImageSource(label_studio_url=slow_label_studio.url)
    scores = score_items(_net(NoDropout), ITEMS[:16], source, batch_size=8, device="cpu")
    assert len(scores.task_ids) == 16
    most = slow_label_studio.most["most"]  # type: ignore[attr-defined]
    assert most >= 4, f"at most {most} requests at once: the batch was fetched one by one"
    assert slow_label_studio.open_now() == 0, "the kept-alive connections were closed"


def test_fetches_at_once_caps_what_each_reader_asks_the_server_for(
    slow_label_studio: KeptAliveServer,
) -> None:
    """``workers.fetches_at_once`` is what a decode process keeps under way, twice that on
    the scoring process's threads when there is none: a Label Studio shared with annotators
    is asked for no more."""
    source = ImageSource(label_studio_url=slow_label_studio.url)
    state = slow_label_studio.most  # type: ignore[attr-defined]
    options = {"batch_size": 8, "device": "cpu", "fetches": 1}
    scores = score_items(_net(NoDropout), ITEMS[:16], source, num_workers=1, **options)
    assert len(scores.task_ids) == 16
    assert state["most"] == 1, f"{state['most']} requests at once from one decode process"
    state["most"] = 0
    scores = score_items(_net(NoDropout), ITEMS[:16], source, num_workers=0, **options)
    assert len(scores.task_ids) == 16
    assert state["most"] == 2, f"{state['most']} requests at once on the scoring threads"


def full_disk(*args: object) -> int:
    """In place of the cache's eviction, inside its write: the disk is full (LMDB's error,
    raised where a write would meet it)."""
    raise lmdb.DiskError("mdb_txn_commit: No space left on device")


class WhereLoaded(Images):
    """Notes the thread each image of a batch was read and decoded on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: dict[str, str] = {}

    def _load(self, item: tuple[int, str, str | None]) -> Any:
        self.threads[item[1]] = threading.current_thread().name
        return super()._load(item)


def test_a_decode_process_fetches_the_served_images_together_on_its_own_thread(
    slow_label_studio: KeptAliveServer, digit_files: tuple[Path, list[int]]
) -> None:
    root, _ = digit_files
    # the served images from an allow-listed host: a mounted root reads /data/local-files/
    source = ImageSource(image_root=root, allowed_hosts=("127.0.0.1",))
    local = [(i, str(root / "digits" / f"{i:04d}.png"), None) for i in range(4)]
    web = f"{slow_label_studio.url}/data/local-files/?d=digits"
    served = [(i, f"{web}/{i:04d}.png", None) for i in range(4, 14)]
    mixed = [*local[:2], *served, *local[2:]]
    images = WhereLoaded(source, 8, fetchers=4)  # as a decode process has it
    try:
        assert all(row[1] is not None for row in images.__getitems__(local))
        rows = images.__getitems__(mixed)
        assert [row[0] for row in rows] == [item[0] for item in mixed], "in the batch's order"
        assert all(row[1] is not None for row in rows), [row[2] for row in rows]
        expected = [decode((root / "digits" / f"{i:04d}.png").read_bytes(), 8) for i in range(14)]
        got = {row[0]: row[1] for row in rows}
        assert all(np.array_equal(got[i].numpy(), expected[i]) for i in range(14))  # type: ignore[union-attr]
        assert images.pool is None, "no thread: the served ones wait together on this one"
        here = threading.current_thread().name
        assert {images.threads[ref] for _, ref, _ in local} == {here}
        assert not {ref for _, ref, _ in served} & set(images.threads), "not one at a time"
        assert slow_label_studio.most["most"] == 4, "four at once, as fetchers says"  # type: ignore[attr-defined]
        assert all(row[1] is not None for row in images.__getitems__(served[:6]))
        assert slow_label_studio.opened == 4, "the connections kept alive from batch to batch"
    finally:
        source.close()


def test_with_no_decode_process_local_files_are_decoded_on_every_cpu_too(
    digit_files: tuple[Path, list[int]],
) -> None:
    root, _ = digit_files
    local = [(i, str(root / "digits" / f"{i:04d}.png"), None) for i in range(8)]
    with ThreadPoolExecutor(4, "planner-fetch") as pool:
        images = WhereLoaded(ImageSource(image_root=root), 8, fetchers=4, pool=pool)
        assert all(row[1] is not None for row in images.__getitems__(local))
    assert all(images.threads[ref].startswith("planner-fetch") for _, ref, _ in local)


def test_which_references_wait_on_a_server(tmp_path: Path) -> None:
    mounted = ImageSource(image_root=tmp_path)
    assert mounted.remote("http://images.example/a.jpg")
    assert mounted.remote("https://images.example/a.jpg")
    assert mounted.remote("/data/upload/3/a.jpg")
    assert not mounted.remote("/data/local-files/?d=a.jpg"), "read from the image root"
    assert ImageSource().remote("/data/local-files/?d=a.jpg"), "Label Studio serves it"
    assert mounted.remote("/data/local-files/"), "no path under the root: Label Studio is asked"
    assert not mounted.remote(str(tmp_path / "a.jpg"))
    assert not mounted.remote("file:///srv/a.jpg")
    assert not mounted.remote("s3://bucket/a.jpg"), "refused by read, no wait"
    assert not mounted.remote(None)  # type: ignore[arg-type]


def test_threads_starting_together_share_one_set_of_connections() -> None:
    source = ImageSource(label_studio_url="http://127.0.0.1:9")
    try:
        with ThreadPoolExecutor(16) as pool:
            clients = list(pool.map(lambda _: source._connections(), range(64)))
        assert len({id(c) for c in clients}) == 1
        assert len(source._clients) == 1
    finally:
        source.close()


def test_num_workers_auto_reaches_the_workers_as_none(tmp_path: Path) -> None:
    auto = Settings(artifacts={"dir": tmp_path})  # type: ignore[arg-type]
    assert worker_config(auto, ("a",)).num_workers is None
    three = Settings(artifacts={"dir": tmp_path}, workers={"num_workers": 3})  # type: ignore[arg-type]
    assert worker_config(three, ("a",)).num_workers == 3


def _score_in(root: Path, results: Any, allow: bool = False) -> None:
    if allow:
        devices.allow_decode_processes()
    scores = score_items(
        _net(NoDropout), ITEMS, ImageSource(image_root=root), batch_size=8, num_workers=2
    )
    results.put((decode_workers(3, torch.device("cpu")), len(scores.task_ids), scores.warnings))


def _in_a_daemon(root: Path, *, allow: bool) -> tuple[int, int, tuple[str, ...]]:
    """``_score_in`` run in a daemonic child process: its decode processes, scored, warnings."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_score_in, args=(root, results, allow), daemon=True)
    child.start()
    try:
        found: tuple[int, int, tuple[str, ...]] = results.get(timeout=120)
    finally:
        child.join(timeout=30)
    return found


def test_a_daemonic_process_decodes_on_threads_and_says_why_num_workers_went_unused(
    digit_files: tuple[Path, list[int]],
) -> None:
    """A Celery prefork child and the daemon's scoring child are daemonic: a DataLoader
    process started there fails ("daemonic processes are not allowed to have children")."""
    workers, scored, warnings = _in_a_daemon(digit_files[0], allow=False)
    assert workers == 0
    assert scored == len(ITEMS)
    assert any("num_workers = 2 not used" in w for w in warnings)


def test_a_daemon_allowed_to_decode_in_processes_does(digit_files: tuple[Path, list[int]]) -> None:
    """What the Celery task and the daemon's scoring child do before they score."""
    workers, scored, warnings = _in_a_daemon(digit_files[0], allow=True)
    assert workers == 3
    assert scored == len(ITEMS)
    assert not warnings


def _children() -> set[int]:
    return {child.pid for child in multiprocessing.active_children() if child.pid is not None}


def _gone(pids: set[int], timeout_s: float = 20.0) -> bool:
    """Whether none of ``pids`` is a live child of this process within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while pids & _children():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class Kept:
    """Decode processes a CPU (two), kept between calls by ``decoders``."""

    source: ImageSource
    decoders: Decoders
    options: dict[str, Any]


@pytest.fixture
def kept(digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch) -> Iterator[Kept]:
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    decoders = Decoders()
    options: dict[str, Any] = {"batch_size": 8, "device": "cpu", "num_workers": 2}
    yield Kept(ImageSource(image_root=digit_files[0]), decoders, options)
    decoders.close()


def test_decode_processes_are_kept_from_one_chunk_to_the_next(kept: Kept, tmp_path: Path) -> None:
    source, decoders, options = kept.source, kept.decoders, kept.options
    spy = ProcessSpy(tmp_path / "passes")
    alone = score_items(spy, ITEMS[16:], source, **options)
    spy.passes()
    score_items(spy, ITEMS[:16], source, decoders=decoders, **options)
    first = {pid for pid, _, _ in spy.passes()}
    assert len(first) == 2, "a batch each"
    assert first <= _children(), "still running between calls"
    again = score_items(spy, ITEMS[16:], source, decoders=decoders, **options)
    assert {pid for pid, _, _ in spy.passes()} <= first, "the next call scored in them"
    assert (again.probs == alone.probs).all()
    assert again.task_ids == alone.task_ids
    other = ProcessSpy(tmp_path / "other")  # another model: forked afresh with it
    score_items(other, ITEMS[:16], source, decoders=decoders, **options)
    others = {pid for pid, _, _ in other.passes()}
    assert not others & first
    assert _gone(first), "the first model's processes were shut down"
    assert decoders.started == 2
    fed = score_items(spy, ITEMS[:8], source, decoders=decoders, **{**options, "threads": 1})
    # the other model's processes, shut down for these, may take a moment to go
    assert _gone(others)
    feeding = _children()  # fed to this process's forward pass: kept all the same
    score_items(spy, ITEMS[8:16], source, decoders=decoders, **{**options, "threads": 1})
    assert _children() == feeding
    assert decoders.started == 3
    assert fed.task_ids == [task_id for task_id, _ in ITEMS[:8]]
    decoders.close()
    assert not decoders.alive
    assert _gone(feeding)


def test_kept_decode_processes_go_once_idle(kept: Kept) -> None:
    kept.decoders.idle_s = 0.3
    score_items(_net(NoDropout), ITEMS[:16], kept.source, decoders=kept.decoders, **kept.options)
    running = _children()
    assert kept.decoders.alive
    assert len(running) == 2
    assert _gone(running), "shut down after 0.3 s unused"
    assert not kept.decoders.alive


def test_a_call_cut_short_or_failing_leaves_no_decode_process_behind(kept: Kept) -> None:
    source, decoders, options = kept.source, kept.decoders, kept.options
    batches = inference.iter_scores(_net(NoDropout), ITEMS, source, decoders=decoders, **options)
    assert len(next(batches).task_ids) == 8
    running = _children()
    batches.close()  # a store write failed, say: the rest of the chunk is not read
    assert not decoders.alive, "a half-read batch is not kept"
    assert _gone(running)
    with pytest.raises(torch.OutOfMemoryError):
        score_items(Greedy(), ITEMS, source, decoders=decoders, **options)
    assert not decoders.alive
    assert _gone(_children())
    scores = score_items(_net(NoDropout), ITEMS, source, decoders=decoders, **options)
    assert len(scores.task_ids) == len(ITEMS)
    assert decoders.started == 3


def test_a_call_while_the_kept_processes_are_lent_gets_its_own(kept: Kept) -> None:
    source, decoders, options = kept.source, kept.decoders, kept.options
    net = _net(NoDropout)
    batches = inference.iter_scores(net, ITEMS, source, decoders=decoders, **options)
    first = next(batches)
    meanwhile = score_items(net, ITEMS, source, decoders=decoders, **options)
    rest = list(batches)
    assert meanwhile.task_ids == first.task_ids + [i for r in rest for i in r.task_ids]
    assert decoders.started == 1, "the second call's processes were its own"
    assert decoders.alive


def test_closing_while_a_call_holds_the_processes_ends_them_when_it_returns(kept: Kept) -> None:
    batches = inference.iter_scores(
        _net(NoDropout), ITEMS, kept.source, decoders=kept.decoders, **kept.options
    )
    first = next(batches)
    closing = threading.Thread(target=kept.decoders.close)
    closing.start()
    closing.join(timeout=10)
    assert not closing.is_alive(), "close did not wait on the call"
    assert kept.decoders.alive, "still lent"
    running = _children()
    rest = list(batches)
    assert len(first.task_ids) + sum(len(r.task_ids) for r in rest) == len(ITEMS)
    assert not kept.decoders.alive
    assert _gone(running)


def test_kept_processes_whose_pixel_cache_failed_are_replaced_at_the_next_call(
    kept: Kept, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = pixels._evicted
    monkeypatch.setattr(pixels, "_evicted", full_disk)  # forked into the decode processes
    cache = PixelCache(tmp_path / "cache", 64 * MB)
    spy = ProcessSpy(tmp_path / "passes")
    options = {**kept.options, "cache": cache, "decoders": kept.decoders}
    try:
        failed = score_items(spy, ITEMS, kept.source, **options)
        assert any("No space left" in note for note in failed.warnings)
        assert not kept.decoders.alive, "their cache is off for good: not kept"
        monkeypatch.setattr(pixels, "_evicted", real)  # the disk has room again
        spy.passes()
        score_items(spy, ITEMS, kept.source, **options)
        assert os.getpid() not in {pid for pid, _, _ in spy.passes()}, "read and stored"
        again = score_items(spy, ITEMS, kept.source, **options)
        assert {pid for pid, _, _ in spy.passes()} == {os.getpid()}, "all from the cache now"
        assert len(again.task_ids) == len(ITEMS)
        assert not again.warnings
    finally:
        cache.close()


def test_the_chunks_of_a_pool_share_their_decode_processes(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, pid = project
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    cfg = replace(store_worker_config(store, digit_files[0]), chunk_size=8, num_workers=2)
    items = [(201 + i, f"/data/local-files/?d=digits/{200 + i:04d}.png") for i in range(24)]
    resources = Resources()
    try:
        result = score_pool(cfg, pid, items, resources=resources)
        assert (result.chunks, result.scored) == (3, 24)
        assert resources.decoders.started == 1, "three chunks, one start of the decode processes"
        running = _children()
        assert len(running) == 2
    finally:
        resources.close()
    assert not resources.decoders.alive
    assert _gone(running), "the worker's resources closed: its decode processes gone"
