"""Where the forward pass runs and on what: the device, the CPUs and torch's threads it takes
beside the decode processes, and the precision it runs in.

With ``precision`` ``"auto"`` the forward pass runs in bf16 on a GPU (fp16 where bf16 is
missing) and on a CPU that multiplies bf16 natively (Intel AMX tiles, or AVX-512 BF16 as on AMD
Zen 4: 2-4 times float32's speed), in float32 on other CPUs. How the CPUs are shared between
decoding and the forward pass is told in :mod:`workers.inference`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import torch

from planner.settings import PRECISIONS

MAX_DECODE_WORKERS = 16
"""The most decode processes ``decode_workers`` chooses on its own."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container's limit narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader decode processes: ``num_workers``, or with None one for each CPU on a CPU
    (the forward pass shares them, see :mod:`workers.inference`) and one for each CPU but
    one on a GPU (that one drives it); at most ``MAX_DECODE_WORKERS``. None in a daemonic
    process (a Celery prefork child, the daemon's scoring child), which may not start any:
    there the scoring process reads and decodes on threads."""
    if multiprocessing.current_process().daemon:
        return 0
    if num_workers is not None:
        return num_workers
    spare = usable_cpus() - (device.type != "cpu")
    return max(0, min(MAX_DECODE_WORKERS, spare))


def replicas(cpu: bool, threads: int, num_workers: int) -> bool:
    """Whether the decode processes run the forward pass too (see :mod:`workers.inference`):
    on a CPU,
    ``threads`` 0 and a decode process for every CPU, forked with the model in them (not
    possible on macOS or Windows). Each replica runs on one torch thread: a process forked
    from one whose OpenMP threads have run must not start its own (GNU OpenMP deadlocks)."""
    fork = "fork" in multiprocessing.get_all_start_methods()
    return cpu and not threads and fork and num_workers >= usable_cpus()


def forward_threads(threads: int, num_workers: int) -> int:
    """torch's intra-op threads for a CPU pass: ``threads``, or with 0 the usable CPUs less
    one for each decoding worker (at least 1)."""
    return threads if threads > 0 else max(1, usable_cpus() - num_workers)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def allow_decode_processes() -> None:
    """Let this process start decode processes though it was started as a daemon (a Celery
    prefork child, the daemon's scoring child), which ``multiprocessing`` forbids because a
    daemon's children would outlive it: a DataLoader process watches its parent and ends
    when it ends. Left as it is where the flag cannot be changed (then images are decoded on
    threads, see ``decode_workers``)."""
    process = multiprocessing.current_process()
    if process.daemon:
        with suppress(AssertionError):  # "process has already started": not ours to change
            process.daemon = False


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: Intel AMX tiles or AVX-512 BF16 (without
    either, oneDNN emulates bf16, slower than float32)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of the forward pass on ``device``; None runs it in float32.

    ``"auto"``: bf16 on a GPU that has it, else fp16; bf16 on a CPU with AMX or AVX-512 BF16;
    float32 on any other CPU (bf16 without hardware support is emulated, slower than float32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return None if precision == "float32" else getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None
