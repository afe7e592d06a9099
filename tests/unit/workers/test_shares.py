"""A chunk's images shared among the decode processes, however few batches it holds: a GPU's
15 decode processes were handed a default chunk of 256 as 4 batches of 64, 11 of them idle."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.workers.test_inference import ITEMS, NoDropout, _net
from workers import devices, inference
from workers.batches import MIN_SHARE, Batch, Images, channels_first, chunked, rebatched, shares
from workers.images import ImageSource
from workers.inference import score_items
from workers.passes import PassSizes


def _most(parts: Sequence[Sequence[object]], workers: int) -> int:
    """The images the busiest decode process is handed (the DataLoader hands part ``j`` to
    process ``j % workers``)."""
    return max(sum(len(p) for p in parts[w::workers]) for w in range(workers))


def test_the_processes_of_a_gpu_share_a_default_chunk_equally() -> None:
    parts = shares(list(range(256)), 64, 15)
    assert len(parts) == 15, "a share for each of the 15 processes, not 4 batches"
    assert {len(p) for p in parts} == {17, 18}
    assert [i for p in parts for i in p] == list(range(256)), "every image once, in order"
    assert shares(list(range(256)), 256, 2) == [list(range(128)), list(range(128, 256))]
    # 64 batches of 64: 5 for 4 of the processes, 4 for the others; 5 shares of 54-55 each
    large = shares(list(range(4096)), 64, 15)
    assert len(large) == 75
    assert {len(p) for p in large} == {54, 55}
    assert _most(large, 15) == 274 < _most(chunked(list(range(4096)), 64), 15) == 320


def test_a_chunk_the_processes_already_share_equally_keeps_its_batches() -> None:
    items = list(range(256))
    assert shares(items, 16, 2) == chunked(items, 16)
    assert shares(items, 64, 4) == chunked(items, 64)
    assert shares(items, 64, 1) == chunked(items, 64), "one process: nothing to share"
    assert shares(items, 64, 0) == chunked(items, 64), "no decode process"
    assert shares(items[:10], 64, 15) == [items[:10]], f"no share under {MIN_SHARE} images"


@given(
    n=st.integers(0, 700), batch_size=st.integers(1, 300), workers=st.integers(0, 16)
)  # fmt: skip
def test_shares_hold_every_image_once_at_most_a_batch_each_and_never_load_a_process_more(
    n: int, batch_size: int, workers: int
) -> None:
    items = list(range(n))
    parts = shares(items, batch_size, workers)
    assert [i for p in parts for i in p] == items
    assert all(0 < len(p) <= batch_size for p in parts)
    plain = chunked(items, batch_size)
    if workers >= 2 and parts and parts != plain:
        fewest = min(MIN_SHARE, batch_size)
        # as many shares each, unless that would make them smaller than MIN_SHARE
        assert len(parts) % workers == 0 or len(parts) == n // fewest
        assert max(map(len, parts)) - min(map(len, parts)) <= 1, "equal shares"
        assert min(map(len, parts)) >= fewest
        assert _most(parts, workers) < _most(plain, workers), "split only where it gains"


def _part(ids: list[int], **reasons: dict[int, str]) -> Batch:
    images = [torch.full((4, 4, 3), i, dtype=torch.uint8) for i in ids]
    pixels = torch.stack(images) if ids else None
    return Batch(
        ids,
        None if pixels is None else channels_first(pixels),
        reasons.get("bad", {}),
        reasons.get("later", {}),
        tuple(reasons.get("notes", {})),
    )


def test_shares_are_joined_into_batches_of_the_batch_size_losing_nothing() -> None:
    parts = [
        _part([1, 2, 3], bad={4: "corrupt"}),
        _part([5, 6, 7], later={8: "timed out"}, notes={"cache off": ""}),
        _part([], bad={9: "missing"}),
        _part([10, 11, 12]),
        _part([13]),
    ]
    out = list(rebatched(parts, 4, torch.device("cpu")))
    assert [b.ids for b in out] == [[1, 2, 3, 5], [6, 7, 10, 11], [12, 13]]
    for batch in out:
        assert batch.pixels is not None
        assert batch.pixels.shape == (len(batch.ids), 3, 4, 4)
        assert batch.pixels.is_contiguous(memory_format=torch.channels_last)
        assert [int(v) for v in batch.pixels[:, 0, 0, 0]] == batch.ids, "each image its own"
    assert out[0].unscorable == {4: "corrupt"}
    assert out[0].deferred == {8: "timed out"}
    assert out[1].unscorable == {9: "missing"}, "with the batch its share's images went to"
    assert "cache off" in out[0].notes
    assert "cache off" in out[2].notes
    assert not out[2].unscorable
    assert not out[2].deferred
    alone = list(rebatched([_part([], bad={1: "corrupt"}), _part([2, 3])], 2, torch.device("cpu")))
    assert [(b.ids, b.unscorable) for b in alone] == [([], {1: "corrupt"}), ([2, 3], {})]
    whole = _part([1, 2])
    [passed] = rebatched([whole], 2, torch.device("cpu"))
    assert passed.pixels is not None
    assert whole.pixels is not None
    assert passed.pixels.data_ptr() == whole.pixels.data_ptr(), "a whole batch is not copied"


class ReadWhere(Images):
    """Notes, for each batch a process reads, its pid and the batch's size in ``LOG`` (a
    file: the decode processes are forked)."""

    LOG: Path

    def _loaded(self, items: Sequence[tuple[int, str, str | None]]) -> Any:
        with self.LOG.open("a") as out:
            out.write(f"{os.getpid()} {len(items)}\n")
        return super()._loaded(items)


class SizeSpy(NoDropout):
    """Notes each forward pass's process and batch size in ``log``."""

    def __init__(self, log: Path) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.log.open("a") as out:
            out.write(f"{os.getpid()} {len(x)}\n")
        return super().forward(x)


def _log(path: Path) -> list[tuple[int, int]]:
    lines = path.read_text().split() if path.exists() else []
    path.unlink(missing_ok=True)
    return [(int(a), int(b)) for a, b in zip(*[iter(lines)] * 2, strict=True)]


@pytest.mark.parametrize("threads", [1, 0], ids=["feeding-this-process", "replicas"])
def test_a_chunk_of_one_batch_is_read_by_every_decode_process(
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    threads: int,
) -> None:
    """A chunk of one batch (``batch_size`` as large as the chunk): both decode processes
    read half of it; where they feed this process's forward pass (a GPU's way, here
    ``threads`` set) it runs on the whole batch; replicas score their halves. The scores are
    those of one process reading and scoring it all."""
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    ReadWhere.LOG = tmp_path / "reads"
    monkeypatch.setattr(inference, "Images", ReadWhere)
    source = ImageSource(image_root=root)
    spy = SizeSpy(tmp_path / "passes")
    # whole passes: the passes a process learns are workers.passes's (test_passes)
    whole = PassSizes(len(ITEMS), learn=False)
    monkeypatch.setattr(inference, "pass_sizes", lambda *_a, **_k: whole)
    options: dict[str, Any] = {"batch_size": len(ITEMS), "device": "cpu", "threads": threads}
    alone = score_items(spy, ITEMS, source, num_workers=0, **options)
    assert [n for _, n in _log(spy.log)] == [len(ITEMS)]
    assert _log(ReadWhere.LOG) == [(os.getpid(), len(ITEMS))]
    shared = score_items(spy, ITEMS, source, num_workers=2, **options)
    reads = _log(ReadWhere.LOG)
    assert sorted(n for _, n in reads) == [12, 12], "half the chunk each"
    assert len({pid for pid, _ in reads}) == 2
    assert os.getpid() not in {p for p, _ in reads}
    passes = _log(spy.log)
    if threads:
        assert passes == [(os.getpid(), len(ITEMS))], "one forward pass on the whole batch"
    else:
        assert sorted(passes) == sorted(reads), "each replica scores what it read"
    assert shared.task_ids == alone.task_ids
    np.testing.assert_allclose(shared.probs, alone.probs, rtol=1e-5, atol=1e-6)


def test_a_share_failing_to_read_loses_none_of_the_others(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing image in one process's share is unscorable with its reason; the rest of the
    batch, read by the other process, is scored."""
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    items = [*ITEMS[:5], (999, "/data/local-files/?d=digits/missing.png"), *ITEMS[5:]]
    scores = score_items(
        _net(NoDropout), items, ImageSource(image_root=root), batch_size=len(items),
        device="cpu", num_workers=2, threads=1,
    )  # fmt: skip
    assert scores.task_ids == [t for t, _ in ITEMS]
    assert list(scores.unscorable) == [999]
    assert "missing.png" in scores.unscorable[999] or "not found" in scores.unscorable[999].lower()
