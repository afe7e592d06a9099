"""Where the forward pass runs and on what: decode processes a CPU, precision a device."""

from __future__ import annotations

import pytest
import torch

from workers import devices
from workers.devices import MAX_DECODE_WORKERS, autocast_dtype, decode_workers


def test_decode_processes_are_a_cpu_each_on_a_cpu_and_a_cpu_each_but_one_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices, "usable_cpus", lambda: 12)
    assert decode_workers(None, cpu) == 12
    assert decode_workers(None, cuda) == 11
    monkeypatch.setattr(devices, "usable_cpus", lambda: 64)
    assert decode_workers(None, cuda) == MAX_DECODE_WORKERS
    monkeypatch.setattr(devices, "usable_cpus", lambda: 1)
    assert decode_workers(None, cuda) == 0, "one CPU: it decodes and drives the GPU"
    assert decode_workers(None, cpu) == 1
    assert decode_workers(3, cpu) == 3, "set by hand, kept"


def test_precision_auto_is_bf16_on_a_bf16_cpu_and_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for amx, avx512_bf16 in ((True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda b=avx512_bf16: b)
        assert autocast_dtype(cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert autocast_dtype(cpu) is None, "bf16 emulated is slower than float32"
    assert autocast_dtype(cpu, "bfloat16") is torch.bfloat16, "asked for, it is given"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda) is torch.float16
    assert autocast_dtype(cuda, "float32") is None
    with pytest.raises(ValueError, match="one of auto, float32"):
        autocast_dtype(cpu, "int8")
