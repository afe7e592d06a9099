"""bench/score_bench.py: --write's own marked section, one block per run kind, rest kept; the
ML backend stand-in reads local files where a backend with the document root would; the
arithmetic ceiling counts a network's FLOPs and sets the targets against it."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

import workers.decoders
import workers.inference
from bench.score_bench import (
    SECTION_END,
    SECTION_START,
    Served,
    _ceiling,
    _Listening,
    _Server,
    _server,
    arithmetic_ceiling,
    block_key,
    flops_an_image,
    learnt,
    make_images,
    matmul_rate,
    not_ahead,
    one_at_a_time,
    server_cpu,
    shared_unevenly,
    stand_in,
    whole,
    whole_passes,
    write_section,
)
from workers.devices import torch_threads
from workers.passes import candidates, pass_sizes

OTHER = "# Benchmarks\n\n## Label Studio sync\n\nsync figures\n"


def test_a_run_replaces_its_own_block_and_keeps_everything_else() -> None:
    first = write_section(OTHER, "CPU|small|64", "cpu run 1")
    assert first.startswith(OTHER.rstrip("\n"))
    assert first.count(SECTION_START) == 1
    assert first.rstrip("\n").endswith(SECTION_END)
    with_gpu = write_section(first, "H100|resnet50|224", "gpu run")
    notes = with_gpu.replace(SECTION_END, "What the figures say.\n" + SECTION_END)
    tail = notes + "\n## Later section\n\nlater text\n"
    again = write_section(tail, "CPU|small|64", "cpu run 2")
    assert "cpu run 1" not in again
    assert again.index("cpu run 2") < again.index("gpu run") < again.index("What the figures")
    assert again.startswith(OTHER.rstrip("\n"))
    assert again.endswith("## Later section\n\nlater text\n")
    assert again.count(SECTION_START) == again.count(SECTION_END) == 1
    assert write_section(again, "CPU|small|64", "cpu run 2") == again, "a rerun changes nothing"


def test_float32_and_other_fetches_at_once_keep_blocks_of_their_own() -> None:
    run = {"device": "CPU", "model": "small", "size": 64, "source": "http", "latency_ms": 0}
    assert block_key({**run, "dtype": "bfloat16"}) == "CPU|small|64"
    assert block_key({**run, "dtype": "float32"}) == "CPU|small|64|float32"
    late = {**run, "latency_ms": 2, "dtype": "float32"}
    assert block_key(late) == "CPU|small|64|2ms|float32"
    gpu = {**run, "device": "NVIDIA H100 80GB HBM3", "dtype": "float32"}
    assert block_key(gpu) == "NVIDIA_H100_80GB_HBM3|small|64", "a GPU's block by its name"
    many = {**run, "latency_ms": 2, "dtype": "bfloat16", "fetches": 16}
    assert block_key(many) == "CPU|small|64|2ms|16at_once"
    assert block_key({**many, "fetches": 4}) == "CPU|small|64|2ms", "the default's own block"


def test_an_empty_file_gets_the_section() -> None:
    text = write_section("", "CPU|small|64", "cpu run")
    assert text.startswith(SECTION_START)
    assert "## Scoring throughput" in text
    assert "cpu run" in text


def test_the_stand_ins_cpu_is_counted_an_image_of_the_run() -> None:
    served = Served("http://127.0.0.1:1", os.getpid())  # this process stands in for the server
    spent: list[float] = []

    def busy() -> float:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        return 7.0

    assert server_cpu(served, busy, 10, spent)() == 7.0
    # 300 ms of CPU over 10 images, read from /proc in clock ticks (10 ms)
    assert len(spent) == 1
    assert 28 <= spent[0] <= 60


def test_the_block_says_what_the_stand_in_took_of_the_machine() -> None:
    said = _server({"server_ms": 0.5, "full": 1000.0, "cpus": 2})
    assert "0.50 core-ms an image" in said
    assert "(25% of the machine's CPU time" in said
    assert _server({"server_ms": None, "full": 1000.0, "cpus": 2}) == ""


def test_the_ml_backend_reads_local_files_from_the_document_root_as_the_sdk_does(
    tmp_path: Path,
) -> None:
    """With ``--source files`` the one-at-a-time baseline reads the folder, as the pipeline
    does, instead of asking Label Studio (here a closed port) for each image."""
    ((_, path),) = make_images(tmp_path, 1, 32)
    task = [(1, f"/data/local-files/?d={Path(path).name}")]
    params = {"model": "bootstrap", "label_studio": "http://127.0.0.1:1", "size": 32}
    params |= {"device": "cpu", "threads": 1, "precision": "float32"}
    with stand_in("ml_backend", **params, document_root=str(tmp_path)) as backend:
        assert one_at_a_time(backend.url, task) > 0
    with (
        stand_in("ml_backend", **params, document_root=None) as backend,
        pytest.raises(httpx.HTTPError),
    ):
        one_at_a_time(backend.url, task)  # it asks Label Studio, which is not there


def test_a_networks_flops_an_image_are_its_convolutions_and_products() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)
    ).eval()
    # a multiply and an add for each weight at each output position
    conv = 2 * (3 * 3 * 3) * 8 * 16 * 16
    linear = 2 * (8 * 16 * 16) * 10
    assert flops_an_image(net, 16, torch.device("cpu")) == conv + linear


def test_the_ceiling_is_the_images_a_second_a_matrix_products_rate_allows() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16, 10))
    cpu = torch.device("cpu")
    flops, ceiling = arithmetic_ceiling(net.eval(), 4, cpu, None)
    assert flops == flops_an_image(net, 4, cpu)
    with torch_threads(1):
        allowed = matmul_rate(cpu, torch.float32) / flops
        assert 0.3 < ceiling() / allowed < 3, "float32 products where no autocast, per image"


def test_a_matrix_products_rate_is_its_flops_over_the_time_it_took() -> None:
    n, cpu = 384, torch.device("cpu")
    with torch_threads(1):  # the other test process's load weighs on both timings alike
        rate = matmul_rate(cpu, torch.float32, seconds=0.3, n=n)
        a, b = torch.randn((n, n)), torch.randn((n, n))
        started = time.perf_counter()
        for _ in range(100):
            torch.mm(a, b)
        timed_here = 100 * 2 * n**3 / (time.perf_counter() - started)
    # a multiply and an add for each of the n x n x n terms: twice the count would be 2x
    assert 0.6 < rate / timed_here < 1.7


def test_the_ceiling_row_sets_forward_only_and_the_loop_target_against_it() -> None:
    run = {"ceiling": 1000.0, "flops": 3e8, "dtype": "bfloat16"}
    run |= {"forward_vs_ceiling": 0.75, "single_vs_ceiling": 0.2}
    (row,) = _ceiling(run)
    assert "bfloat16 matrix products at 300 GFLOP/s" in row
    assert "the model's 300.0 MFLOP an image | 1,000 |" in row
    assert "forward-only is 0.75x this" in row
    assert "10x the one-at-a-time loop would be 2.00x it" in row
    assert _ceiling({"ceiling": 1000.0}) == [], "a run from before the ceiling has no row"


def test_the_stand_in_listens_for_every_connection_a_worker_opens_at_once() -> None:
    """socketserver's queue of 5 dropped the rest of 32 connections opened together (16
    images at once from each of two decode processes), which waited a second to try again."""
    server = _Listening(("127.0.0.1", 0), _Server)
    try:
        # Linux's tcp_info of a listening socket: tcpi_sacked is its queue's length
        info = server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        unacked, queue = struct.unpack_from("II", info, 24)
        assert unacked == 0, "nothing waits to be accepted"
        assert queue >= 128
    finally:
        server.server_close()


def test_the_run_without_asking_ahead_hints_no_batch_and_puts_the_hints_back() -> None:
    batches = [[(1, "a", None)], [(2, "b", None)], [(3, "c", None)]]

    def hinted_now() -> float:
        first = workers.decoders.hinted(batches, 1)[0]
        return float(len(getattr(first, "ahead", ())))

    assert not_ahead(hinted_now) == 0.0
    assert hinted_now() == 1.0, "asked ahead again after it"


def test_the_run_with_whole_batches_hands_out_batches_and_puts_the_shares_back() -> None:
    def parts_now() -> float:
        return float(len(workers.inference.shares(list(range(256)), 64, 15)))

    assert whole(parts_now) == 4.0, "the chunk's 4 batches"
    assert parts_now() == 15.0, "shared among the 15 processes again after it"


def test_the_whole_batches_run_is_made_only_where_the_shares_differ() -> None:
    assert shared_unevenly(8192, 256, 256, 15), "a GPU's run: one batch a chunk"
    assert shared_unevenly(1000, 256, 16, 2), "the last chunk, 232, is 15 batches"
    assert not shared_unevenly(4096, 256, 16, 2), "the CPU blocks' runs"
    assert not shared_unevenly(4096, 256, 64, 0), "no decode process"


def test_the_run_with_whole_passes_gives_each_pass_its_batch_whole_and_puts_learning_back() -> None:
    model = nn.Conv2d(3, 4, 3).eval()

    def caps_now() -> float:
        return float(len(workers.inference.pass_sizes(model, 64, None, 64).candidates))

    assert whole_passes(caps_now) == 1.0, "the batch alone"
    assert caps_now() == 4.0, "64, 32, 16 and 8 learnt between again after it"


def test_the_bench_learns_a_pass_size_as_a_worker_does_once_a_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    batch = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    with torch_threads(1):
        most = learnt(model, batch, 16, "float32")
        assert most in candidates(16) == [16, 8]
        assert pass_sizes(model, 8, None, 16).chosen is None, "the pipeline's own left to it"
        assert learnt(model, batch[:4], 16, "float32") == most, "learnt once"
