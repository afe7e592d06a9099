"""Where images are decoded: threads between forward passes on a CPU, processes on a GPU."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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


def test_decode_processes_are_none_on_a_cpu_and_a_cpu_each_but_one_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(inference, "usable_cpus", lambda: 12)
    assert decode_workers(None, cpu) == 0
    assert decode_workers(None, cuda) == 11
    monkeypatch.setattr(inference, "usable_cpus", lambda: 64)
    assert decode_workers(None, cuda) == inference.MAX_DECODE_WORKERS
    monkeypatch.setattr(inference, "usable_cpus", lambda: 1)
    assert decode_workers(None, cuda) == 0, "one CPU: it decodes and drives the GPU"
    assert decode_workers(3, cpu) == 3, "set by hand, kept"


def test_on_a_cpu_the_forward_pass_gets_every_core_and_no_process_decodes(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = digit_files
    source = ImageSource(image_root=root)
    monkeypatch.setattr(inference, "usable_cpus", lambda: 6)
    spy = ProcessSpy()
    threaded = score_items(spy, ITEMS, source, batch_size=8, device="cpu")
    assert spy.threads == [6, 6, 6]
    assert spy.processes == [0, 0, 0], "no DataLoader process was started"
    spy = ProcessSpy()
    forked = score_items(spy, ITEMS, source, batch_size=8, device="cpu", num_workers=2)
    assert spy.threads == [4, 4, 4], "two decode processes: the forward pass leaves them a core"
    assert min(spy.processes) >= 1
    assert forked.task_ids == threaded.task_ids
    assert (forked.probs == threaded.probs).all()


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
