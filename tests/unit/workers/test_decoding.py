"""Where images are decoded (processes reading several images at once), and the forward
pass's threads on a CPU: every core when its batch was ready, the rest when it waited."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import torch

from planner.connect import worker_config
from planner.settings import Settings
from tests.unit.workers.conftest import KeptAliveServer
from tests.unit.workers.test_inference import ITEMS, NoDropout, _net
from workers import inference
from workers.images import ImageSource
from workers.inference import decode_workers, score_items


class ProcessSpy(NoDropout):
    """Notes, at each forward pass, torch's threads and this process's child processes."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.threads: list[int] = []
        self.processes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(torch.get_num_threads())
        self.processes.append(len(multiprocessing.active_children()))
        return super().forward(x)


def test_decode_processes_are_a_cpu_each_on_a_cpu_and_a_cpu_each_but_one_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(inference, "usable_cpus", lambda: 12)
    assert decode_workers(None, cpu) == 12
    assert decode_workers(None, cuda) == 11
    monkeypatch.setattr(inference, "usable_cpus", lambda: 64)
    assert decode_workers(None, cuda) == inference.MAX_DECODE_WORKERS
    monkeypatch.setattr(inference, "usable_cpus", lambda: 1)
    assert decode_workers(None, cuda) == 0, "one CPU: it decodes and drives the GPU"
    assert decode_workers(None, cpu) == 1
    assert decode_workers(3, cpu) == 3, "set by hand, kept"


def test_a_forward_pass_gets_every_core_when_its_batch_was_ready_and_the_rest_when_not() -> None:
    now = [0.0]  # a clock the batches move: a machine's load cannot blur the decision

    def batches(delays: list[float]) -> Iterator[inference._Batch]:
        for i, delay in enumerate(delays):
            now[0] += delay
            yield [i], torch.zeros(1, 3, 2, 2, dtype=torch.uint8), {}, {}

    just_under = inference.READY_S / 2
    delays = [0.05, 0.0, just_under, 2 * inference.READY_S, 0.0]
    before = torch.get_num_threads()
    seen = []
    try:
        for _ in inference._paced(batches(delays), waited=1, ready=2, clock=lambda: now[0]):
            seen.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2, 2, 1, 2]


def test_decode_processes_score_what_the_scoring_process_scores(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = digit_files
    source = ImageSource(image_root=root)
    monkeypatch.setattr(inference, "usable_cpus", lambda: 6)
    spy = ProcessSpy()
    alone = score_items(spy, ITEMS, source, batch_size=8, device="cpu", num_workers=0)
    assert spy.threads == [6, 6, 6], "no decode process: every CPU for the forward pass"
    assert spy.processes == [0, 0, 0], "no DataLoader process was started"
    spy = ProcessSpy()
    forked = score_items(spy, ITEMS, source, batch_size=8, device="cpu", num_workers=2)
    assert set(spy.threads) <= {4, 6}, "every CPU, or the CPUs less the two decoders"
    assert min(spy.processes) >= 1
    spy = ProcessSpy()
    score_items(spy, ITEMS, source, batch_size=8, device="cpu", num_workers=2, threads=3)
    assert spy.threads == [3, 3, 3], "set by hand, kept"
    assert forked.task_ids == alone.task_ids
    assert (forked.probs == alone.probs).all()


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


def test_threads_starting_together_share_one_client() -> None:
    source = ImageSource(label_studio_url="http://127.0.0.1:9")
    try:
        with ThreadPoolExecutor(16) as pool:
            clients = list(pool.map(lambda _: source._client(), range(64)))
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
        inference.allow_decode_processes()
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
