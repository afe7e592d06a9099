"""A CPU replica's forward passes cut to what the core's caches hold of the widest layer."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.unit.workers.test_inference import ITEMS
from tests.unit.workers.test_shares import ReadWhere, SizeSpy, _log
from workers import devices, inference, passes
from workers.batches import Batch, channels_first, cut
from workers.devices import autocast_dtype
from workers.images import ImageSource
from workers.inference import score_items
from workers.passes import CACHE_MULTIPLE, MIN_PASS, cpu_pass, l2_bytes, widest_output
from workers.pixels import PixelCache


def _cache(folder: Path, *levels: tuple[str, str]) -> Path:
    for k, (level, size) in enumerate(levels):
        index = folder / f"index{k}"
        index.mkdir(parents=True)
        (index / "level").write_text(f"{level}\n")
        (index / "size").write_text(f"{size}\n")
    return folder


def test_the_l2_cache_is_read_as_linux_tells_it(tmp_path: Path) -> None:
    sysfs = _cache(tmp_path / "a", ("1", "48K"), ("3", "32M"), ("2", "2048K"))
    assert l2_bytes(sysfs) == 2 * 2**20
    assert l2_bytes(_cache(tmp_path / "b", ("2", "1M"))) == 2**20
    assert l2_bytes(tmp_path / "none") == passes.DEFAULT_L2_BYTES, "not told: the default"
    broken = _cache(tmp_path / "c", ("2", "lots"), ("2", ""), ("2", "512K"))
    assert l2_bytes(broken) == 512 * 2**10, "an entry that cannot be read is passed over"


class Counted(nn.Module):
    """A 3-to-16-channel convolution, then a head; counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_the_widest_layer_output_of_an_image_is_measured_once() -> None:
    model = Counted().eval()
    assert widest_output(model, 8, None) == 16 * 8 * 8 * 4, "the convolution's, in float32"
    assert widest_output(model, 8, torch.bfloat16) == 16 * 8 * 8 * 2, "and in bf16"
    assert widest_output(model, 8, None) == 16 * 8 * 8 * 4
    assert model.calls == 2, "remembered for the model, size and dtype"


class Failing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("this model takes no blank image")


def test_a_model_that_cannot_be_measured_runs_its_batches_whole() -> None:
    with warnings.catch_warnings():  # deprecated, but what a TorchScript file loads as
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Counted().eval())
    assert widest_output(scripted, 8, None) is None, "a TorchScript model takes no hooks"
    assert cpu_pass(scripted, 8, None, 64) == 64
    assert widest_output(Failing(), 8, None) is None
    assert cpu_pass(Failing(), 8, None, 64) == 64


def test_a_pass_holds_what_the_caches_hold_of_the_widest_output_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = Counted().eval()
    widest = 16 * 32 * 32 * 4  # 64 kB an image at 32 px
    for l2, batch, expected in [
        (widest * 24 // CACHE_MULTIPLE, 64, 24),  # 24 images fill the caches
        (widest * 1000, 64, 64),  # never more than the batch
        (widest // CACHE_MULTIPLE, 64, MIN_PASS),  # never fewer than MIN_PASS
        (widest // CACHE_MULTIPLE, MIN_PASS, MIN_PASS),
    ]:
        monkeypatch.setattr(passes, "l2_bytes", lambda l2=l2: l2)
        assert cpu_pass(model, 32, None, batch) == expected


def _batch(ids: list[int]) -> Batch:
    pixels = torch.stack([torch.full((4, 4, 3), i, dtype=torch.uint8) for i in ids])
    return Batch(ids, channels_first(pixels), {99: "corrupt"}, {98: "timed out"}, ("note",))


def test_a_batch_is_cut_into_passes_losing_nothing() -> None:
    parts = cut(_batch(list(range(20))), 8)
    assert [p.ids for p in parts] == [list(range(8)), list(range(8, 16)), list(range(16, 20))]
    for part in parts:
        assert part.pixels is not None
        assert [int(v) for v in part.pixels[:, 0, 0, 0]] == part.ids, "each image its own"
    assert [(p.unscorable, p.deferred, p.notes) for p in parts] == [
        ({99: "corrupt"}, {98: "timed out"}, ("note",)),
        ({}, {}, ()),
        ({}, {}, ()),
    ], "the batch's reasons and notes once"
    whole = _batch([1, 2])
    assert cut(whole, 8) == [whole]


def test_replicas_run_their_shares_in_passes_of_what_the_caches_hold(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two replicas each handed 12 images of a 24-image batch run passes of 8 and 4 where
    the caches hold 8 images' widest output; the scores are one process's on the whole."""
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    ReadWhere.LOG = tmp_path / "reads"
    monkeypatch.setattr(inference, "Images", ReadWhere)
    spy = SizeSpy(tmp_path / "passes")
    widest = widest_output(spy, 32, autocast_dtype(torch.device("cpu"), "auto"))
    assert widest is not None
    monkeypatch.setattr(passes, "l2_bytes", lambda: widest * 8 // CACHE_MULTIPLE)
    source = ImageSource(image_root=root)
    options: dict[str, Any] = {"batch_size": len(ITEMS), "device": "cpu", "image_size": 32}
    alone = score_items(spy, ITEMS, source, num_workers=0, **options)
    _log(ReadWhere.LOG)
    _log(spy.log)  # the measuring pass and the whole batch's
    shared = score_items(spy, ITEMS, source, num_workers=2, **options)
    reads = _log(ReadWhere.LOG)
    assert sorted(n for _, n in reads) == [12, 12]
    scored = _log(spy.log)
    assert sorted(n for _, n in scored) == [4, 4, 8, 8], "each share in passes of 8 and 4"
    assert {pid for pid, _ in scored} == {pid for pid, _ in reads}, "in the replicas"
    assert shared.task_ids == alone.task_ids
    np.testing.assert_allclose(shared.probs, alone.probs, rtol=1e-5, atol=1e-6)
    assert os.getpid() not in {pid for pid, _ in scored}


@pytest.mark.parametrize("where", ["fed", "in-process", "rescoring"])
def test_the_scoring_processs_own_passes_on_a_cpu_are_cut_too(
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    where: str,
) -> None:
    """Fed by decode processes (``threads`` set), with none, or on cached pixels: the scoring
    process's forward passes take 8 images where the caches hold 8, scoring as whole ones."""
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    spy = SizeSpy(tmp_path / "passes")
    widest = widest_output(spy, 32, autocast_dtype(torch.device("cpu"), "auto"))
    assert widest is not None
    source = ImageSource(image_root=root)
    cache = PixelCache(tmp_path / "cache", 64 * 2**20) if where == "rescoring" else None
    options: dict[str, Any] = {
        "batch_size": len(ITEMS), "device": "cpu", "image_size": 32, "threads": 1, "cache": cache,
        "num_workers": 2 if where == "fed" else 0,
    }  # fmt: skip
    try:
        monkeypatch.setattr(passes, "l2_bytes", lambda: widest * 1000)
        whole = score_items(spy, ITEMS, source, **options)  # fills the cache for rescoring
        assert [n for _, n in _log(spy.log) if n > 1] == [len(ITEMS)]
        monkeypatch.setattr(passes, "l2_bytes", lambda: widest * 8 // CACHE_MULTIPLE)
        cut_up = score_items(spy, ITEMS, source, **options)
        assert _log(spy.log) == [(os.getpid(), 8)] * 3, "three passes of 8, here"
        assert cut_up.task_ids == whole.task_ids
        np.testing.assert_allclose(cut_up.probs, whole.probs, rtol=1e-5, atol=1e-6)
    finally:
        if cache is not None:
            cache.close()
