"""Scoring throughput: the workers' full pipeline against forward-only and one-at-a-time.

Same model, same batch size, same precision (``--precision``, as ``workers.precision``), one
run:
  * forward-only: the forward passes of ``workers.inference`` (scaling, channels_last,
    forward, softmax) on tensors decoded beforehand, on ``--threads`` torch threads (all the
    CPUs by default) -- the ceiling of the pipeline;
  * full pipeline: ``workers.inference.score_items`` as the workers run it -- each image
    fetched over HTTP from a Label Studio stand-in on 127.0.0.1 with the API token
    (``--source files``: read from disk), decoded as ``workers.num_workers`` says (``--workers``;
    by default a DataLoader process a CPU on a CPU, a CPU each but one on a GPU), batched,
    forward, softmax, where ``workers.threads`` puts it (``--pipeline-threads``; 0 on a CPU
    with a decode process a CPU: in each decode process, on one thread; else in the scoring
    process on that many threads, 0 = the CPUs the decoders leave), storing each image's
    pixels in a pixel cache of its own, empty at the start (``--pixel-cache-mb``; 0: none);
    the pool scored in chunks of ``--chunk`` tasks (``workers.chunk_size``, 1,024 by default),
    a call each, the decode processes kept from one chunk to the next as a worker keeps them;
  * rescoring: the full pipeline again over the same images with the pixel cache the first
    pass filled, as every later model version scores the pool (no fetch, no decode);
  * one at a time, the way a Label Studio ML backend scores: for each task an HTTP ``/predict``
    request carrying the task JSON goes to a backend stand-in on 127.0.0.1 (its own process,
    the same model and thread count), which fetches the image from the same Label Studio
    stand-in with the token (``--source files``: reads it from the same folder, as
    label-studio-sdk's ``get_local_path`` does where ``LOCAL_FILES_DOCUMENT_ROOT`` is set),
    decodes it, runs a batch-1 forward pass and answers with the prediction JSON.

Both stand-ins run in processes of their own, as the real servers do.

Beside them, the machine's arithmetic ceiling: the FLOP/s of a dense matrix product in the
forward pass's dtype on the same threads (the densest work the CPU or GPU does, measured each
round), over the model's FLOPs an image (torch's FLOP counter: its convolutions and matrix
products) -- the images/s no pipeline of this model at this precision passes, against which
forward-only and the one-at-a-time target are set.

Forward-only, the full pipeline and rescoring run the forward pass as ``workers.compile``
says (``--compile``: off, the default, or on; compiled once, before the warm-up), and
forward-only and the full pipeline the other way are reported beside them; the ML backend
runs the model eagerly, as Label Studio's ML backends do.

The three are run ``--rounds`` times, interleaved (so a machine that gets busier or quieter
mid-run shifts all three alike), after one warm-up each; the median round of each is reported.

    python bench/score_bench.py --write docs/benchmarks.md                 # CPU, small CNN
    python bench/score_bench.py --model bootstrap --size 32 --write ...    # the cold-start net
    python bench/score_bench.py --model resnet50 --size 224 --n 384 --batch 32 \\
        --single 64 --write ...                                            # ResNet-50, CPU
    python3 bench/score_bench.py --model resnet50 --size 224 --n 8192 \\
        --batch 256 --workers 14 --device cuda                            # on a GPU machine

ResNet-50 is torchvision's, or where torchvision cannot be imported beside the installed torch
(the CPU build pinned here has no matching torchvision) the same network from
``bench/resnet.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest.mock import patch
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import torch
import urllib3
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workers.decoders
import workers.inference
from bench.resnet import resnet50 as own_resnet50
from planner.settings import PRECISIONS, WorkerSettings
from workers.batches import FETCHES_PER_PROCESS, chunked, in_process, shares
from workers.bootstrap import BootstrapNet
from workers.compiling import Compiler
from workers.decode import decode
from workers.decoders import Decoders, heap_thresholds, keep_heap
from workers.devices import (
    autocast_dtype,
    decode_workers,
    forward_threads,
    pick_device,
    replicas,
    torch_threads,
    usable_cpus,
)
from workers.images import ImageError, ImageSource
from workers.inference import merge, score_items
from workers.outputs import logits_of
from workers.passes import PassSizes, candidates
from workers.pixels import PixelCache

SECTION = "## Scoring throughput"
SECTION_START = "<!-- score_bench:start -->"
SECTION_END = "<!-- score_bench:end -->"
BLOCK_START = "<!-- score_bench:block"
BLOCK_END = "<!-- score_bench:/block -->"
PREAMBLE = (
    "Written by `bench/score_bench.py --write docs/benchmarks.md`; one block per device, model "
    "and input size, each replaced by its next run. Ratios are measured within one run."
)
MLPERF_RESNET50_H100 = 88_714
MB = 2**20
TOKEN = "bench-token"  # noqa: S105 - the stand-in's own, on 127.0.0.1


def small_cnn(n_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, n_classes),
    )


def torchvision_missing() -> bool:
    """Whether torchvision cannot be imported beside this torch (the CPU build installed here
    has no matching torchvision): then ResNet-50 is ``bench/resnet.py``'s same network."""
    try:
        import torchvision.models  # noqa: F401
    except (ImportError, RuntimeError):
        return True
    return False


def build_model(name: str, n_classes: int) -> nn.Module:
    if name == "resnet50" and torchvision_missing():
        return own_resnet50(n_classes)
    if name == "resnet50":
        from torchvision.models import resnet50

        return resnet50(weights=None, num_classes=n_classes)
    if name == "bootstrap":  # the workers' own cold-start network (logits, embeddings)
        return BootstrapNet(n_classes)
    return small_cnn(n_classes)


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[tuple[int, str]]:
    """JPEG photos-alike (smooth gradients plus grain), as camera datasets hold."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    items = []
    for i in range(n):
        colour = rng.random(3, dtype=np.float32)
        smooth = (ramp[None, :, None] * colour + ramp[:, None, None] * (1 - colour)) * 200
        grain = rng.normal(0, 12, size=(size, size, 3))
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        items.append((i, str(path)))
    return items


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, precision: str
) -> torch.Tensor:
    """What ``score_items`` does to a decoded uint8 batch: scale, channels_last, forward under
    the same autocast dtype, softmax, to CPU."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    x = x.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(device, precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return torch.softmax(logits_of(model(x)).float(), dim=1).cpu()


def prepared(name: str, device: torch.device) -> nn.Module:
    """The bench's model as ``score_items`` runs it: eval, on ``device``, channels_last."""
    torch.manual_seed(0)
    model = build_model(name, 10).eval().to(device)
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]


def forward_only(
    model: nn.Module, batch: torch.Tensor, device: torch.device, batch_size: int, precision: str
) -> float:
    """Images/s of the forward pass alone, on tensors already decoded."""
    with torch.inference_mode():
        started = time.perf_counter()
        for start in range(0, len(batch), batch_size):
            _predict(model, batch[start : start + batch_size], device, precision)
        _sync(device)
        return len(batch) / (time.perf_counter() - started)


def flops_an_image(model: nn.Module, size: int, device: torch.device) -> float:
    """The FLOPs of one image's forward pass as torch's FLOP counter adds them up: its
    convolutions and matrix products (the element-wise layers, a small part, not counted)."""
    x = torch.zeros((2, 3, size, size), device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / len(x)


def matmul_rate(
    device: torch.device, dtype: torch.dtype, seconds: float = 0.5, n: int | None = None
) -> float:
    """FLOP/s of a square matrix product in ``dtype`` on ``device`` (this process's torch
    threads on a CPU), the densest arithmetic torch runs there; ``n`` rows and columns (by
    default large enough for the device to run at its best)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn((n, n), device=device).to(dtype)
    b = torch.randn((n, n), device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    _sync(device)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        _sync(device)
        done += 1
    return done * 2 * n**3 / (time.perf_counter() - started)


def arithmetic_ceiling(
    model: nn.Module, size: int, device: torch.device, dtype: torch.dtype | None
) -> tuple[float, Callable[[], float]]:
    """The model's FLOPs an image, and a run timing the images/s a matrix product in the
    forward pass's dtype (float32 where no autocast) allows at that count."""
    flops = flops_an_image(model, size, device)
    return flops, lambda: matmul_rate(device, dtype or torch.float32) / flops


def default_heap(run: Callable[[], float]) -> float:
    """``run`` with the decode processes on glibc's initial malloc thresholds (128 KiB each)
    rather than ``workers.decoders.keep_heap``'s."""

    def initial(_worker: int = 0) -> None:
        heap_thresholds(128 * 1024, 128 * 1024)

    # both where it is looked up: the scoring process's call and the decode processes' start
    kept = workers.decoders.keep_heap
    workers.decoders.keep_heap = workers.inference.keep_heap = initial
    try:
        return run()
    finally:
        workers.decoders.keep_heap = workers.inference.keep_heap = kept
        kept()  # this process's own thresholds back for the runs after


def not_ahead(run: Callable[[], float]) -> float:
    """``run`` with no batch asked for ahead: each decode process asks for a batch's images
    when it is handed that batch (before ``workers.ahead``)."""
    # the batches are hinted in the scoring process
    with patch.object(workers.decoders, "hinted", lambda batches, _workers: list(batches)):
        return run()


def _whole_sizes(
    _module: nn.Module, _size: int, _dtype: torch.dtype | None, batch_size: int, **_: Any
) -> PassSizes:
    return PassSizes(batch_size, learn=False)


def whole_passes(run: Callable[[], float]) -> float:
    """``run`` with each forward pass on a CPU taking a whole batch, however large (before
    ``workers.passes``)."""
    with patch.object(workers.inference, "pass_sizes", _whole_sizes):
        return run()


def whole(run: Callable[[], float]) -> float:
    """``run`` with a chunk's batches handed to the decode processes whole, however few
    (before ``workers.batches.shares``)."""
    # the chunk is shared out in the scoring process
    with patch.object(workers.inference, "shares", lambda items, size, _w: chunked(items, size)):
        return run()


def shared_unevenly(n: int, chunk: int, batch: int, workers: int) -> bool:
    """Whether a pool of ``n`` in chunks of ``chunk`` has a chunk whose batches the decode
    processes would share unevenly (where ``whole`` differs from the pipeline)."""
    sizes = {len(c) for c in chunked(range(n), chunk or n)}
    return any(shares(range(k), batch, workers) != chunked(range(k), batch) for k in sizes)


def chunk_runs(
    full: Callable[..., float], n: int, chunk: int, batch: int, workers: int
) -> dict[str, Callable[[], float]]:
    """The full pipeline as it handed the decode processes a pool's chunks before: started
    for every chunk, and handed whole batches however few (where either differs)."""
    runs: dict[str, Callable[[], float]] = {}
    if workers and chunk and chunk < n:
        runs["full_fresh"] = lambda: full(kept=False)
    if shared_unevenly(n, chunk, batch, workers):
        runs["full_whole"] = lambda: whole(full)
    return runs


def replica_runs(
    full: Callable[..., float],
    forward: Callable[..., float],
    workers: int,
    *,
    fed: int,
    batch: int,
) -> dict[str, Callable[[], float]]:
    """What the replicas give: the same decode processes feeding one forward pass on ``fed``
    threads instead, forward-only arranged as the replicas are (the stricter ceiling), and
    where ``workers.passes`` may cut their passes, the passes whole."""
    runs = {
        "full_fed": lambda: full(threads=fed),
        "forward_replicas": lambda: forward(workers),
    }
    if len(candidates(batch)) > 1:
        runs["full_whole_passes"] = lambda: whole_passes(full)
    return runs


def forward_replicas(
    model: nn.Module,
    batch: torch.Tensor,
    batch_size: int,
    precision: str,
    processes: int,
) -> float:
    """Images/s of the forward pass alone in ``processes`` forked copies of the model, one
    torch thread each, the batches dealt out in turn, each run in passes of the size learnt
    on one thread (``workers.passes``, learnt here before they fork, see :func:`learnt`):
    the ceiling of the replicas' own arrangement (a process forked from one whose OpenMP
    threads ran must keep to one)."""
    context = multiprocessing.get_context("fork")
    starts = list(range(0, len(batch), batch_size))
    # on one thread, as the replicas run (a compiled model compiled for it)
    step = one_thread(learnt, model, batch, batch_size, precision)

    def share(k: int) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            for start in starts[k::processes]:
                end = min(start + batch_size, len(batch))
                for first in range(start, end, step):
                    x = batch[first : min(first + step, end)]
                    _predict(model, x, torch.device("cpu"), precision)

    started = time.perf_counter()
    workers = [context.Process(target=share, args=(k,)) for k in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"a forward-only replica failed ({worker.exitcode})")
    return len(batch) / (time.perf_counter() - started)


class _Listening(ThreadingHTTPServer):
    """A server whose listen queue holds the connections a worker's decode processes open at
    once (``socketserver``'s holds 5; in front of a real Label Studio, uWSGI's default is 100
    and nginx's 511 on Linux): with more arriving together, the kernel drops the rest and
    their clients wait a second to try again."""

    request_queue_size = 1024


class _Server(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes; with Nagle's algorithm the body would wait for a
    # delayed ACK (40 ms) on a kept-alive connection, which real servers avoid
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        return


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _label_studio_handler(folder: Path, latency_s: float) -> type[_Server]:
    """Answers ``/data/local-files/?d=NAME`` from ``folder`` to ``Authorization: Token ...``
    requests, as Label Studio serves task images to a worker or an ML backend; each answer
    ``latency_s`` late, as from a server a network round trip away."""

    class Handler(_Server):
        def do_GET(self) -> None:
            if latency_s:
                time.sleep(latency_s)
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                _reply(self, 401, b"", "text/plain")
                return
            name = (parse_qs(urlsplit(self.path).query).get("d") or [""])[0]
            path = folder / Path(name).name
            body = path.read_bytes() if path.is_file() else b""
            _reply(self, 200 if body else 404, body, "image/jpeg")

    return Handler


def _ml_backend_handler(
    model: nn.Module,
    label_studio: str,
    size: int,
    device: torch.device,
    precision: str,
    *,
    document_root: Path | None,
) -> type[_Server]:
    """A Label Studio ML backend: ``POST /predict`` with ``{"tasks": [task]}``; fetches the
    task's image from Label Studio with the token (from ``document_root`` when given, as
    label-studio-sdk's ``get_local_path`` reads a local storage's file where
    ``LOCAL_FILES_DOCUMENT_ROOT`` is set), decodes it, predicts at batch 1 and answers with
    Label Studio's prediction JSON."""
    # a fresh connection per image, as the ML backend SDK's requests.get does
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))
    lock = threading.Lock()  # one model, one forward at a time, as a backend worker runs it

    class Handler(_Server):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            results = []
            for task in request["tasks"]:
                reference = task["data"]["image"]
                if document_root is not None:
                    name = parse_qs(urlsplit(reference).query)["d"][0]
                    body = (document_root / Path(name).name).read_bytes()
                else:
                    response = client.get(
                        label_studio + reference, headers={"Authorization": f"Token {TOKEN}"}
                    )
                    response.raise_for_status()
                    body = response.content
                x = torch.from_numpy(decode(body, size))[None].permute(0, 3, 1, 2)
                with lock, torch.inference_mode():
                    probs = _predict(model, x, device, precision)[0]
                label = int(probs.argmax())
                results.append(
                    {
                        "model_version": "bench",
                        "score": float(probs[label]),
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [str(label)]},
                            }
                        ],
                    }
                )
            _reply(self, 200, json.dumps({"results": results}).encode(), "application/json")

    return Handler


def _serve_forever(kind: str, params: dict[str, Any], ports: Any) -> None:
    """A stand-in server's process: Label Studio, or an ML backend with its own model."""
    if kind == "label_studio":
        handler = _label_studio_handler(Path(params["folder"]), params["latency_s"])
    else:
        torch.set_num_threads(params["threads"])
        device = torch.device(params["device"])
        model = prepared(params["model"], device)
        root = params["document_root"]
        handler = _ml_backend_handler(
            model,
            params["label_studio"],
            params["size"],
            device,
            params["precision"],
            document_root=None if root is None else Path(root),
        )
    server = _Listening(("127.0.0.1", 0), handler)
    ports.put(server.server_address[1])
    server.serve_forever()


@dataclass(frozen=True)
class Served:
    """A stand-in server: its address and its process."""

    url: str
    pid: int

    def cpu_s(self) -> float:
        """The CPU seconds its process has used so far (user and system; Linux's /proc)."""
        # the fields after the command name, which may hold spaces: utime and stime are 12th, 13th
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def stand_in(kind: str, **params: Any) -> Iterator[Served]:
    """A stand-in server in a process of its own, as the real ones are (no shared GIL)."""
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    process = context.Process(target=_serve_forever, args=(kind, params, ports), daemon=True)
    process.start()
    try:
        assert process.pid is not None
        yield Served(f"http://127.0.0.1:{ports.get(timeout=120)}", process.pid)
    finally:
        process.terminate()
        process.join(timeout=10)


def server_cpu(
    served: Served, run_once: Callable[[], float], n: int, spent: list[float]
) -> Callable[[], float]:
    """``run_once`` that appends to ``spent`` the CPU ``served`` used an image while it ran,
    in core-milliseconds: the share of the machine a server on another host would not take."""

    def measured() -> float:
        before = served.cpu_s()
        rate = run_once()
        spent.append((served.cpu_s() - before) * 1000 / n)
        return rate

    return measured


def one_at_a_time(backend: str, items: list[tuple[int, str]]) -> float:
    """Images/s of Label Studio asking the ML backend for one task's prediction at a time."""
    with httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        for task_id, reference in items:
            task = {"id": task_id, "data": {"image": reference}}
            response = client.post(backend + "/predict", json={"tasks": [task], "project": "1"})
            response.raise_for_status()
            assert len(response.json()["results"]) == 1
        return len(items) / (time.perf_counter() - started)


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each run once to warm up, then ``rounds`` rounds of all of them, the order rotated."""
    for run_once in runs.values():
        run_once()
    names = list(runs)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            measured[name].append(runs[name]())
    return measured


@dataclass
class Pool:
    """The full pipeline over ``tasks``, chunk by chunk as a worker scores a pool."""

    model: nn.Module
    tasks: list[tuple[int, str]]
    source: ImageSource
    kwargs: dict[str, Any]
    chunk: int
    tmp: Path
    pixel_cache_mb: int

    def rate(self, cache: PixelCache | None, kept: bool = True, **change: Any) -> float:
        """Images/s, the decode processes kept from one chunk to the next (``kept``) or
        started for each; ``change``: options other than the run's."""
        decoders = Decoders() if kept else None
        options = {**self.kwargs, **change, "cache": cache, "decoders": decoders}
        try:
            started = time.perf_counter()
            parts = [
                score_items(self.model, chunk, self.source, **options)
                for chunk in chunked(self.tasks, self.chunk or len(self.tasks))
            ]
            rate = len(self.tasks) / (time.perf_counter() - started)
        finally:
            if decoders is not None:
                decoders.close()
        scores = merge(parts)
        assert len(scores.task_ids) == len(self.tasks), scores.unscorable
        assert not scores.warnings, scores.warnings
        return rate

    def first_pass(self, **change: Any) -> float:
        """``rate`` with an empty pixel cache of its own, as a pool's first model version."""
        if not self.pixel_cache_mb:
            return self.rate(None, **change)
        folder = Path(tempfile.mkdtemp(dir=self.tmp, prefix="cold-"))
        cache = PixelCache(folder, self.pixel_cache_mb * MB)
        try:
            return self.rate(cache, **change)
        finally:
            cache.close()
            shutil.rmtree(folder)


class OnThreads(ImageSource):
    """Each image of a batch read on a thread of its own, as many at once as the decode
    processes fetch together, as they read a batch before ``ImageSource.read_many`` took
    libcurl's multi interface (the decode processes are forked: the class goes with them,
    and each makes its own threads)."""

    def read_many(
        self, references: Sequence[str], *, at_once: int
    ) -> Iterator[tuple[int, bytes | ImageError]]:
        pool = _THREADS.get(os.getpid())
        if pool is None:
            pool = _THREADS[os.getpid()] = ThreadPoolExecutor(at_once, "planner-fetch")
        yield from enumerate(pool.map(self._read_or_error, references))


_THREADS: dict[int, ThreadPoolExecutor] = {}


class ThreadedFiles(OnThreads):
    """Local files read on a decode process's fetch threads, as every image was before
    ``ImageSource.remote`` (then decoded there too; the decode processes are forked: the class
    goes with it)."""

    def remote(self, reference: str) -> bool:
        return True


class Urllib3Source(OnThreads):
    """Label Studio's images fetched with urllib3 as the workers did before libcurl: a
    ``PoolManager`` a process, kept-alive connections, the body streamed by the MiB."""

    def _from_label_studio(self, reference: str) -> bytes:
        pool = _URLLIB3.get(os.getpid())
        if pool is None:  # a forked decode process opens its own
            pool = _URLLIB3[os.getpid()] = urllib3.PoolManager(maxsize=16, retries=False)
        headers = {"Authorization": f"Token {self.label_studio_token}"}
        url = (self.label_studio_url or "") + reference
        response = pool.urlopen("GET", url, headers=headers, redirect=False, preload_content=False)
        try:
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}")
            return b"".join(response.stream(1024 * 1024))
        finally:
            response.release_conn()


_URLLIB3: dict[int, urllib3.PoolManager] = {}


def fetching_runs(pool: Pool, label_studio: str, *, ahead: bool) -> dict[str, Callable[[], float]]:
    """The full pipeline over HTTP as it fetched before: no batch asked for ahead (where
    there are decode processes to ask), each image on a thread of its own, with urllib3."""
    runs: dict[str, Callable[[], float]] = {}
    if ahead:
        runs["full_not_ahead"] = lambda: not_ahead(pool.first_pass)
    threads = OnThreads(label_studio_url=label_studio, label_studio_token=TOKEN)
    runs["full_threads"] = replace(pool, source=threads).first_pass
    urllib3 = Urllib3Source(label_studio_url=label_studio, label_studio_token=TOKEN)
    runs["full_urllib3"] = replace(pool, source=urllib3).first_pass
    return runs


def ratio(measured: dict[str, list[float]], top: str, bottom: str) -> float | None:
    """The median over the rounds of ``top``'s images/s over ``bottom``'s in the same round
    (None where one of them was not run)."""
    if top not in measured or bottom not in measured:
        return None
    pairs = zip(measured[top], measured[bottom], strict=True)
    return statistics.median(f / b for f, b in pairs)


_LEARNT: dict[tuple[int, int, str, int, int], int] = {}


def learnt(model: nn.Module, batch: torch.Tensor, batch_size: int, precision: str) -> int:
    """The images a forward pass of ``model`` on ``batch``'s images takes on this process's
    torch threads, learnt as a worker's process learns it (``workers.passes``), on ``batch``
    over and over until it is; once a model, size, precision and thread count, and apart from
    the pipeline's own (its replicas, forked from this process, learn for themselves)."""
    key = (id(model), batch.shape[-1], precision, batch_size, torch.get_num_threads())
    if key in _LEARNT:
        return _LEARNT[key]
    cpu = torch.device("cpu")
    sizes = PassSizes(batch_size)
    starts = itertools.cycle(range(0, max(1, len(batch) - batch_size + 1), batch_size))
    with torch.inference_mode():
        while (step := sizes.start()) and sizes.chosen is None:
            start = next(starts)
            for first in range(start, min(start + batch_size, len(batch)), step):
                x = batch[first : min(first + step, start + batch_size)]
                began = time.perf_counter()
                _predict(model, x, cpu, precision)
                sizes.timed(len(x), time.perf_counter() - began)
    _LEARNT[key] = sizes.chosen
    return sizes.chosen


def one_thread(run: Callable[..., int], *args: Any) -> int:
    """``run(*args)`` on one torch thread."""
    with torch_threads(1):
        return run(*args)


def cached_runs(
    timed: Callable[[PixelCache | None], float],
    stack: ExitStack,
    tmp: Path,
    megabytes: int,
    *,
    cut: bool,
) -> dict[str, Callable[[], float]]:
    """Rescoring from a pixel cache the first model version's pass filled, and the full
    pipeline storing no pixels (what storing them costs); where ``cut`` (a CPU's passes
    learnt, ``workers.passes``), rescoring in whole batches too."""
    warm = PixelCache(tmp / "warm", megabytes * MB)
    stack.callback(warm.close)
    timed(warm)
    runs = {"rescore": lambda: timed(warm), "full_uncached": lambda: timed(None)}
    if cut:
        runs["rescore_whole_passes"] = lambda: whole_passes(lambda: timed(warm))
    return runs


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    torch.set_num_threads(args.threads)
    keep_heap()  # as the scoring process has it: forward-only and rescoring alike
    model = prepared(args.model, device)
    dtype = autocast_dtype(device, args.precision)
    compiler = Compiler()  # one for every run: the model is compiled once
    compiled = compiler.forward(model, "module", 0, "on")
    engine = model if args.compile == "off" else compiled
    other, other_mode = (compiled, "on") if args.compile == "off" else (model, "off")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        items = make_images(Path(tmp), args.n, args.size)
        served = stack.enter_context(
            stand_in("label_studio", folder=tmp, latency_s=args.latency_ms / 1000)
        )
        label_studio = served.url
        web_tasks = [(i, f"/data/local-files/?d={Path(p).name}") for i, p in items]
        source = ImageSource(label_studio_url=label_studio, label_studio_token=TOKEN)
        tasks = web_tasks
        if args.source == "files":
            source, tasks = ImageSource(image_root=Path(tmp)), items
        backend = stack.enter_context(
            stand_in(
                "ml_backend",
                model=args.model,
                label_studio=label_studio,
                size=args.size,
                device=str(device),
                threads=args.threads,
                precision=args.precision,
                document_root=tmp if args.source == "files" else None,
            )
        ).url
        pixels = np.stack([decode(source.read(p), args.size) for _, p in tasks])
        decoded = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # as the workers batch them
        if device.type == "cuda":
            decoded = decoded.pin_memory()
        kwargs = {
            "image_size": args.size,
            "batch_size": args.batch,
            "num_workers": args.workers,
            "device": args.device,
            "precision": args.precision,
            "threads": args.pipeline_threads,
            "compile_mode": args.compile,
            "compiler": compiler,
            "fetches": args.fetches,
        }

        pool = Pool(model, tasks, source, kwargs, args.chunk, Path(tmp), args.pixel_cache_mb)
        timed, full = pool.rate, pool.first_pass

        server_ms: list[float] = []  # the stand-in's CPU an image, each full pass
        flops, ceiling = arithmetic_ceiling(model, args.size, device, dtype)
        runs = {
            "ceiling": ceiling,
            "forward": lambda: forward_only(engine, decoded, device, args.batch, args.precision),
            "full": server_cpu(served, full, len(tasks), server_ms),
            "single": lambda: one_at_a_time(backend, web_tasks[: args.single]),
        }
        # whether a forward pass on the CPU may take fewer images (workers.passes)
        cut = device.type == "cpu" and len(candidates(args.batch)) > 1
        if args.pixel_cache_mb:
            runs.update(cached_runs(timed, stack, Path(tmp), args.pixel_cache_mb, cut=cut))
        # what compiling gives, same run
        runs["full_other"] = lambda: full(compile_mode=other_mode)
        runs["forward_other"] = lambda: forward_only(
            other, decoded, device, args.batch, args.precision
        )
        if dtype is not None:  # what the reduced precision gives the pipeline, same run
            runs["full_float32"] = lambda: full(precision="float32")
        workers = decode_workers(args.workers, device)
        fed = max(1, usable_cpus() - workers)
        if replicas(device.type == "cpu", args.pipeline_threads, workers):
            forward = partial(forward_replicas, engine, decoded, args.batch, args.precision)
            runs.update(replica_runs(full, forward, workers, fed=fed, batch=args.batch))
        if workers and device.type == "cpu":
            runs["full_default_heap"] = lambda: default_heap(full)
        runs.update(chunk_runs(full, len(tasks), args.chunk, args.batch, workers))
        if workers and args.source == "files":
            runs["full_threaded"] = replace(
                pool, source=ThreadedFiles(image_root=Path(tmp))
            ).first_pass
        if args.source == "http":  # what asking ahead, libcurl and its multi interface give
            runs.update(fetching_runs(pool, label_studio, ahead=bool(workers)))
        measured = interleaved(runs, args.rounds)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "latency_ms": args.latency_ms,
        "model": args.model,
        "model_note": " (`bench/resnet.py`: torchvision's network, built without torchvision)"
        if args.model == "resnet50" and torchvision_missing()
        else "",
        "size": args.size,
        "batch": args.batch,
        "n": args.n,
        "single_n": args.single,
        "workers": workers,
        "threads": args.threads,
        "replicas": replicas(device.type == "cpu", args.pipeline_threads, workers),
        "pipeline_threads": forward_threads(args.pipeline_threads, workers)
        if device.type == "cpu"
        else args.threads,
        "rounds": args.rounds,
        "source": args.source,
        "cpus": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "load": os.getloadavg()[0],
        # the warm-up's pass left out, as from the images/s
        "server_ms": statistics.median(server_ms[1:]) if args.source == "http" else None,
        "torch": torch.__version__,
        "dtype": "float32" if dtype is None else str(dtype).removeprefix("torch."),
        "compiled": args.compile == "on",
        "flops": flops,
        **{name: statistics.median(values) for name, values in measured.items()},
        **{f"{name}_all": values for name, values in measured.items()},
        # ratios within each round (the machine's load drifts less within one round than
        # across the run), then their median
        "full_vs_forward": ratio(measured, "full", "forward"),
        "full_vs_single": ratio(measured, "full", "single"),
        "rescore_vs_forward": ratio(measured, "rescore", "forward"),
        "rescore_vs_single": ratio(measured, "rescore", "single"),
        "pixel_cache_mb": args.pixel_cache_mb,
        "fed_threads": fed,
        "chunk": args.chunk,
        "fetches": args.fetches,
        "full_vs_fed": ratio(measured, "full", "full_fed"),
        "full_vs_default_heap": ratio(measured, "full", "full_default_heap"),
        "full_vs_forward_replicas": ratio(measured, "full", "forward_replicas"),
        "full_vs_float32": ratio(measured, "full", "full_float32"),
        "full_vs_fresh": ratio(measured, "full", "full_fresh"),
        "full_vs_not_ahead": ratio(measured, "full", "full_not_ahead"),
        "full_vs_whole": ratio(measured, "full", "full_whole"),
        "full_vs_whole_passes": ratio(measured, "full", "full_whole_passes"),
        "rescore_vs_whole_passes": ratio(measured, "rescore", "rescore_whole_passes"),
        # the images a replica's pass takes, as learnt on one thread here
        "cpu_pass": one_thread(learnt, engine, decoded, args.batch, args.precision)
        if cut
        else None,
        "full_vs_threaded": ratio(measured, "full", "full_threaded"),
        "full_vs_urllib3": ratio(measured, "full", "full_urllib3"),
        "full_vs_threads": ratio(measured, "full", "full_threads"),
        "full_vs_other": ratio(measured, "full", "full_other"),
        "forward_vs_other": ratio(measured, "forward", "forward_other"),
        "uncached_vs_forward": ratio(measured, "full_uncached", "forward"),
        "forward_vs_ceiling": ratio(measured, "forward", "ceiling"),
        "single_vs_ceiling": ratio(measured, "single", "ceiling"),
    }


_STEPS = {"files": "read", "http": "fetch"}
_STORED = ", pixels stored in an empty cache"
_WHERE = {
    "files": "read from local files (by the ML backend too, as label-studio-sdk's "
    "`get_local_path` reads a local storage's files where `LOCAL_FILES_DOCUMENT_ROOT` is set)",
    "http": "fetched over HTTP with the API token from a Label Studio stand-in on 127.0.0.1",
}


def cpu_model() -> str:
    """The CPU's name and whether it multiplies bf16 natively (what ``precision`` auto uses)."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    features = [
        label
        for label, probe in (
            ("AMX", "_is_amx_tile_supported"),
            ("AVX-512 BF16", "_is_avx512_bf16_supported"),
        )
        if getattr(torch.cpu, probe, lambda: False)()
    ]
    return ", ".join([name, *features] if features else [name, "no native bf16"])


def _passes(r: Mapping[str, Any]) -> str:
    most = r.get("cpu_pass")
    if not most or most >= r["batch"]:
        return ""
    return f", in passes of {most} images learnt on one thread (`workers.passes`)"


def _cpu(r: dict[str, Any]) -> str:
    return f" ({r['cpu_model']})" if r.get("cpu_model") and r["device"] == "CPU" else ""


def _late(r: dict[str, Any]) -> str:
    late = float(r.get("latency_ms", 0))
    return f" answering each request {late:g} ms late" if late and r["source"] == "http" else ""


def _pipeline_threads(r: dict[str, Any]) -> str:
    threads = r.get("pipeline_threads", r["threads"])
    if r.get("replicas"):
        return "'s forward passes in each decode process on 1 (a replica of the model a CPU)"
    return f" on {threads}"


def _chunks(r: dict[str, Any]) -> str:
    chunk = int(r.get("chunk") or 0)
    if not chunk or chunk >= int(r["n"]):
        return "scored in one call, "
    return (
        f"scored in chunks of {chunk} (`workers.chunk_size`) as a worker does, its decode "
        "processes kept from one chunk to the next, "
    )


def _compiled(r: dict[str, Any]) -> str:
    if not r.get("compiled"):
        return ""
    return (
        ", compiled (`workers.compile`; forward-only too; the ML backend runs the model "
        "eagerly, as Label Studio's ML backends do)"
    )


def _server(r: dict[str, Any]) -> str:
    """What the Label Studio stand-in took of the machine during the full pipeline's passes."""
    if r.get("server_ms") is None:
        return ""
    ms = float(r["server_ms"])
    share = ms / 1000 * float(r["full"]) / int(r["cpus"])
    return (
        f", the stand-in serving the full pipeline's images on {ms:.2f} core-ms an image "
        f"({share:.0%} of the machine's CPU time while it ran)"
    )


def _fetches(r: Mapping[str, Any]) -> int:
    """The images a decode process asked for at once in run ``r`` (``--fetches``; a run of an
    earlier version of the bench, the default)."""
    return int(r.get("fetches", FETCHES_PER_PROCESS))


def _decoding(r: dict[str, Any]) -> str:
    if int(r["workers"]):
        return (
            f"read and decoded in {r['workers']} DataLoader processes "
            f"({_fetches(r)} images at a time each)"
        )
    return f"read and decoded in the scoring process ({in_process(_fetches(r))} images at a time)"


def _ceiling(r: dict[str, Any]) -> list[str]:
    """The arithmetic ceiling's row: the images/s a matrix product's FLOP/s allows the model,
    what forward-only reaches of it, and what >= 10x the one-at-a-time loop would ask of it
    (a run of an earlier version of the bench has none)."""
    if r.get("forward_vs_ceiling") is None:
        return []
    ceiling, flops = float(r["ceiling"]), float(r["flops"])
    needed = 10 * float(r["single_vs_ceiling"])
    return [
        f"| the arithmetic ceiling: {r.get('dtype', 'float32')} matrix products at "
        f"{ceiling * flops / 1e9:,.0f} GFLOP/s on the same threads, over the model's "
        f"{flops / 1e6:,.1f} MFLOP an image | {ceiling:,.0f} | forward-only is "
        f"{float(r['forward_vs_ceiling']):.2f}x this; 10x the one-at-a-time loop would be "
        f"{needed:.2f}x it | |"
    ]


def rows(r: dict[str, Any], command: str) -> list[str]:
    full, forward, single = float(r["full"]), float(r["forward"]), float(r["single"])
    vs_forward, vs_single = float(r["full_vs_forward"]), float(r["full_vs_single"])
    other = "_eager" if r.get("compiled") else "_compiled"
    spread = ", ".join(
        f"{name.replace('_other', other)} {min(r[name + '_all']):,.0f}-{max(r[name + '_all']):,.0f}"
        for name in (
            "forward",
            "full",
            "rescore",
            "single",
            "full_float32",
            "full_fed",
            "forward_replicas",
            "full_default_heap",
            "full_fresh",
            "full_not_ahead",
            "full_whole",
            "full_whole_passes",
            "rescore_whole_passes",
            "full_threaded",
            "full_threads",
            "full_urllib3",
            "full_uncached",
            "full_other",
            "forward_other",
            "ceiling",
        )
        if name in r
    )
    lines = [
        f"**{r['device']}**{_cpu(r)}, {r['model']}{r.get('model_note', '')} at "
        f"{r['size']}x{r['size']}, batch {r['batch']}, "
        f"{r['n']:,} JPEG images {_WHERE[str(r['source'])]}{_late(r)}, {_chunks(r)}"
        f"{_decoding(r)}, "
        f"forward-only and the ML backend on {r['threads']} torch threads, the full pipeline"
        f"{_pipeline_threads(r)} (`workers.threads`), forward in "
        f"{r.get('dtype', 'float32')} with channels_last{_compiled(r)}, {r['cpus']} CPUs "
        f"(load average {r['load']:.1f} at the end){_server(r)}, torch {r['torch']}; "
        f"medians of {r['rounds']} interleaved rounds after a warm-up (range: {spread} "
        f"images/s), ratios the median of each round's ratio. Command: `{command}`",
        "",
        "| pipeline | images/s | ratio | target |",
        "|---|---|---|---|",
        f"| forward-only on pre-decoded tensors | {forward:,.0f} | 1.00 (baseline) | |",
        f"| full pipeline ({_STEPS[str(r['source'])]}, decode, forward, scores"
        f"{_STORED if r.get('pixel_cache_mb') else ''}) | {full:,.0f} | "
        f"{vs_forward:.2f}x forward-only | >= 0.9x |",
        f"| one image at a time: ML-backend /predict per task ({r['single_n']} tasks) | "
        f"{single:,.0f} | full is {vs_single:.1f}x this | >= 10x |",
    ]
    lines += _ceiling(r)
    if "rescore" in r:
        lines.append(
            f"| rescoring, a later model version: pixels from the cache | "
            f"{float(r['rescore']):,.0f} | {float(r['rescore_vs_forward']):.2f}x forward-only, "
            f"{float(r['rescore_vs_single']):.1f}x one at a time | |"
        )
    if r.get("rescore_vs_whole_passes") is not None:
        lines.append(
            "| rescoring, each forward pass on a whole batch (before `workers.passes`) | "
            f"{float(r['rescore_whole_passes']):,.0f} | rescoring is "
            f"{float(r['rescore_vs_whole_passes']):.2f}x this | |"
        )
    at_once = _fetches(r)
    compared = {  # run: what it is; the full pipeline's ratio to it
        "full_float32": 'full pipeline in float32 (`workers.precision = "float32"`)',
        "full_fed": "full pipeline, the decode processes feeding one forward pass in the "
        f"scoring process on {r['fed_threads']} (`workers.threads = {r['fed_threads']}`)",
        "full_default_heap": "full pipeline, the decode processes on glibc's default malloc "
        "thresholds (before `keep_heap`)",
        "full_fresh": "full pipeline, the decode processes started for every chunk (before "
        "`Decoders`)",
        "full_not_ahead": "full pipeline, each decode process asking for a batch's images when "
        "handed it (before `workers.ahead`)",
        "full_whole": "full pipeline, a chunk's batches handed to the decode processes whole, "
        "however few, some processes idle or handed a batch more (before `shares`)",
        "full_whole_passes": "full pipeline, each forward pass on a whole batch (before "
        f"`workers.passes`: {r.get('cpu_pass')} images a pass learnt)",
        "full_threaded": "full pipeline, local files read on the decode processes' fetch "
        f"threads, {at_once} each (before `ImageSource.remote`)",
        "full_threads": "full pipeline, each image of a batch fetched on a thread of its own, "
        f"{at_once} at once (before `ImageSource.read_many`)",
        "full_urllib3": "full pipeline, the images fetched with urllib3 on such threads (before "
        "libcurl)",
        "full_other": "full pipeline, the forward pass compiled (`workers.compile = on`)"
        if not r.get("compiled")
        else "full pipeline, the forward pass not compiled (`workers.compile = off`)",
        "forward_replicas": f"forward-only as the replicas run it: {r['workers']} forked copies "
        f"of the model on 1 torch thread each{_passes(r)}, pre-decoded tensors",
    }
    for name, what in compared.items():
        vs = r.get(f"full_vs_{name.removeprefix('full_')}")
        if vs is not None:
            lines.append(f"| {what} | {float(r[name]):,.0f} | full is {float(vs):.2f}x this | |")
    if r.get("uncached_vs_forward") is not None:
        lines.append(
            f"| full pipeline storing no pixels (`workers.pixel_cache_mb = 0`: every later "
            f"model version reads and decodes again) | {float(r['full_uncached']):,.0f} | "
            f"{float(r['uncached_vs_forward']):.2f}x forward-only | |"
        )
    if r.get("forward_vs_other") is not None:
        lines.append(
            f"| forward-only, {'not ' if r.get('compiled') else ''}compiled | "
            f"{float(r['forward_other']):,.0f} | forward-only is "
            f"{float(r['forward_vs_other']):.2f}x this | |"
        )
    if r["model"] == "resnet50" and str(r["device"]) != "CPU":
        lines.append(
            f"| MLPerf Inference v4.0, ResNet-50, one H100 (offline) | {MLPERF_RESNET50_H100:,} | "
            f"our forward-only is {forward / MLPERF_RESNET50_H100:.2f}x, full "
            f"{full / MLPERF_RESNET50_H100:.2f}x | |"
        )
    return [*lines, ""]


def block_key(r: dict[str, float | str]) -> str:
    """One block per device, model and input size: a CPU run never replaces GPU figures; nor
    a CPU's float32 forward pass (no native bf16) another's bfloat16 one, nor a run asking
    for other than ``workers.fetches_at_once``'s default a run of the default."""
    key = f"{r['device']}|{r['model']}|{r['size']}"
    if r.get("source", "http") != "http":
        key += f"|{r['source']}"
    elif r.get("latency_ms"):
        key += f"|{r['latency_ms']:g}ms"
    if _fetches(r) != FETCHES_PER_PROCESS:
        key += f"|{_fetches(r)}at_once"
    if r["device"] == "CPU" and r.get("dtype", "bfloat16") == "float32":
        key += "|float32"
    return key.replace(" ", "_").replace("--", "-")


def write_section(existing: str, key: str, block: str) -> str:
    """``existing`` with this benchmark's section (between its HTML comment markers) holding
    ``block`` under ``key``. A block of the same key is replaced; other blocks, the notes after
    them and every other section of the file are kept."""
    if SECTION_START not in existing or SECTION_END not in existing:
        head = existing.rstrip("\n")
        existing = (head + "\n\n" if head else "") + (
            f"{SECTION_START}\n{SECTION}\n\n{PREAMBLE}\n\n{SECTION_END}\n"
        )
    head, rest = existing.split(SECTION_START, 1)
    body, tail = rest.split(SECTION_END, 1)
    intro, *runs = body.split(BLOCK_START)
    blocks: dict[str, str] = {}
    notes = ""
    for run_text in runs:
        name, text = run_text.split(" -->\n", 1)
        inner, _, after = text.partition(BLOCK_END)
        blocks[name.strip()] = inner.strip("\n")
        notes = after.strip("\n")
    blocks[key] = block.strip("\n")
    parts = [intro.strip("\n")]
    parts += [f"{BLOCK_START} {name} -->\n{text}\n{BLOCK_END}" for name, text in blocks.items()]
    if notes:
        parts.append(notes)
    section = SECTION_START + "\n" + "\n\n".join(parts) + "\n" + SECTION_END
    return head + section + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["small", "bootstrap", "resnet50"], default="small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=None, help="workers.num_workers (default: auto)"
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the Label Studio stand-in answers each request this late (a server elsewhere)",
    )
    parser.add_argument("--single", type=int, default=256, help="tasks for the one-at-a-time loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="as workers.precision, all runs"
    )
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads, all runs"
    )
    parser.add_argument(
        "--pipeline-threads",
        type=int,
        default=0,
        help="workers.threads of the full pipeline (0: replicas in the decode processes "
        "when there is one a CPU, else the CPUs they leave)",
    )
    parser.add_argument(
        "--compile",
        choices=["on", "off"],
        default="off",
        help="workers.compile of forward-only, the full pipeline and rescoring (each also "
        "timed the other way); the ML backend runs eagerly",
    )
    parser.add_argument(
        "--fetches",
        type=int,
        default=FETCHES_PER_PROCESS,
        help="images a decode process asks the server for at once, as workers.fetches_at_once",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measured rounds")
    parser.add_argument(
        "--chunk",
        type=int,
        default=WorkerSettings.model_fields["chunk_size"].default,
        help="tasks a call of the full pipeline scores, as workers.chunk_size (0: all at once)",
    )
    parser.add_argument(
        "--pixel-cache-mb",
        type=int,
        default=2048,
        help="workers.pixel_cache_mb of the full pipeline and the rescoring (0: no cache)",
    )
    parser.add_argument(
        "--source",
        choices=["files", "http"],
        default="http",
        help="the images of the full pipeline and the ML backend: over HTTP from a Label "
        "Studio stand-in, or from local files (the ML backend as label-studio-sdk's "
        "get_local_path reads them with LOCAL_FILES_DOCUMENT_ROOT set)",
    )
    parser.add_argument("--write", type=Path, help="put this run into the Markdown file's section")
    args = parser.parse_args()
    result = run(args)
    command = "python bench/score_bench.py " + " ".join(sys.argv[1:])
    text = "\n".join(rows(result, command))
    print(text)
    if args.write:
        existing = args.write.read_text(encoding="utf-8") if args.write.exists() else ""
        block = (
            f"Measured {datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}.\n{text}"
        )
        updated = write_section(existing, block_key(result), block)
        args.write.write_text(updated, encoding="utf-8")


if __name__ == "__main__":
    main()
