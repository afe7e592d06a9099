"""A CPU's forward passes cut to the size each process learns from its own passes."""

from __future__ import annotations

import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.unit.workers.test_inference import ITEMS
from tests.unit.workers.test_shares import SizeSpy, _log
from workers import devices, passes
from workers.batches import Batch, channels_first, cut
from workers.devices import torch_threads
from workers.images import ImageSource
from workers.inference import Scores, _noted, score_items
from workers.passes import MIN_PASS, TIMED_TURNS, PassSizes, candidates, pass_sizes
from workers.pixels import PixelCache


def test_the_caps_tried_halve_the_batch_down_to_the_fewest_a_pass_takes() -> None:
    assert candidates(64) == [64, 32, 16, 8]
    assert candidates(256) == [256, 128, 64, 32], "four at most"
    assert candidates(20) == [20, 10]
    assert candidates(15) == [15], f"half of it under {MIN_PASS}: whole batches only"
    assert candidates(MIN_PASS) == [MIN_PASS]
    assert candidates(3) == [3]


def _learn(sizes: PassSizes, seconds_an_image: dict[int, list[float]]) -> list[int]:
    """Passes, each of its cap's images taking the next of the cap's seconds an image, until
    a cap is kept; the caps handed out, in order."""
    handed = []
    while (cap := sizes.start()) and sizes.chosen is None:  # a turn closes as the next starts
        handed.append(cap)
        sizes.timed(cap, seconds_an_image[cap].pop(0) * cap)
    return handed


def test_each_cap_is_tried_in_turn_and_the_fastest_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="planner.workers")
    sizes = PassSizes(64)
    turns = TIMED_TURNS + 1
    speed = {64: [0.004] * turns, 32: [0.003] * turns, 16: [0.001] * turns, 8: [0.002] * turns}
    handed = _learn(sizes, speed)
    assert handed == [64, 32, 16, 8] * turns, "every cap a turn, the largest first"
    assert sizes.chosen == 16
    assert sizes.rates() == pytest.approx({64: 250.0, 32: 333.3, 16: 1000.0, 8: 500.0}, rel=1e-3)
    assert [sizes.start() for _ in range(3)] == [16] * 3, "kept for good"
    (said,) = [r.getMessage() for r in caplog.records if "forward passes" in r.getMessage()]
    assert "16 images at most" in said
    assert "64: 250, 32: 333, 16: 1,000, 8: 500" in said, "what it was learnt from, once"


def test_a_smaller_cap_within_the_noise_of_a_larger_one_is_not_kept() -> None:
    """Passes of 8 and 16 within 3% of the batch's whole: the whole batch, not the noise's pick;
    16 over 64 where it is clearly faster."""
    turns = TIMED_TURNS + 1
    near = PassSizes(64)
    _learn(near, {64: [0.00100] * turns, 32: [0.00150] * turns, 16: [0.00098] * turns,
                  8: [0.00099] * turns})  # fmt: skip
    assert near.chosen == 64
    clear = PassSizes(64)
    _learn(clear, {64: [0.00100] * turns, 32: [0.00150] * turns, 16: [0.00090] * turns,
                   8: [0.00099] * turns})  # fmt: skip
    assert clear.chosen == 16


def test_a_caps_first_turn_is_not_counted_and_its_best_turn_is() -> None:
    """Its first turn (kernels for a new shape) may run fast or slow; another process taking
    the CPU only ever slows a turn: the best of the rest counts."""
    sizes = PassSizes(16)
    speed = {
        16: [0.0001, 0.002, 0.002, 0.002],  # fast in its first turn alone
        8: [0.5, 0.001, 0.009, 0.009],  # slow at first, then once fast among two slowed
    }
    _learn(sizes, speed)
    assert sizes.chosen == 8


def test_a_turn_in_which_no_pass_ran_is_no_turn() -> None:
    sizes = PassSizes(16)
    assert sizes.start() == 16
    assert sizes.start() == 16, "nothing timed: still the first cap's turn to come"
    sizes.timed(16, 0.01)
    assert sizes.start() == 8


def test_a_pass_of_no_more_than_half_its_cap_is_no_turn() -> None:
    """A batch's last few images, cut off under a larger cap, tell nothing of the cap."""
    sizes = PassSizes(16)
    assert sizes.start() == 16
    sizes.timed(8, 0.001)
    assert sizes.start() == 16, "8 of 16: the cap's first turn still to come"
    sizes.timed(9, 0.001)
    assert sizes.start() == 8


def test_whole_batches_are_kept_from_the_start_where_not_learnt() -> None:
    assert PassSizes(64, learn=False).chosen == 64
    assert PassSizes(64, learn=False).start() == 64
    assert PassSizes(12).chosen == 12, "a single cap: nothing to learn"


def test_a_size_learnt_elsewhere_is_kept_where_none_was_learnt_here() -> None:
    sizes = PassSizes(64)
    sizes.settle(16)
    assert (sizes.chosen, sizes.start()) == (16, 16)
    sizes.settle(32)
    assert sizes.chosen == 16, "its own first"


def test_a_copy_in_another_process_warms_up_again_and_reports_only_its_own_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A decode process forked from the scoring process inherits what was timed there; its
    own first pass of each cap is a warm-up again, and it reports only the turns it timed."""
    sizes = PassSizes(16)
    assert sizes.start() == 16
    sizes.timed(16, 0.002)  # warm-up
    assert sizes.start() == 8
    sizes.timed(8, 0.001)  # warm-up
    assert sizes.start() == 16
    sizes.timed(16, 0.002)  # 8,000 images/s
    assert sizes.start() == 8
    assert sizes.report() == ((16, 1, 8000.0),)
    assert sizes.report() == (), "reported once"
    sizes.timed(8, 0.0005)  # the turn under way as the process forks
    parent = os.getpid()
    monkeypatch.setattr(passes.os, "getpid", lambda: parent + 1)  # now the copy
    assert sizes.start() == 8, "the cap timed fewest"
    sizes.timed(8, 0.004)  # its warm-up in this process: not a turn
    assert sizes.start() == 16
    assert sizes.report() == (), "nothing timed here yet, nor the parent's turns again"
    sizes.timed(16, 0.004)  # warm-up here
    assert sizes.start() == 8
    sizes.timed(8, 0.002)  # 4,000 images/s
    assert sizes.start() == 16
    assert sizes.report() == ((8, 1, 4000.0),)
    assert sizes.rates() == {16: 8000.0, 8: 4000.0}, "the turn cut off by the fork not counted"


def test_turns_timed_elsewhere_add_up_until_a_cap_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="planner.workers")
    sizes = PassSizes(16)
    sizes.merge([(16, 2, 1000.0), (8, TIMED_TURNS, 1500.0)])
    assert sizes.chosen is None, f"16 timed twice of {TIMED_TURNS}"
    sizes.merge([(16, 1, 1200.0), (32, 5, 9000.0)], " from elsewhere")
    assert sizes.chosen == 8, "1,500 images/s against 1,200: more than the noise"
    assert sizes.rates() == {16: 1200.0, 8: 1500.0}, "a cap not tried here ignored"
    (said,) = [r.getMessage() for r in caplog.records if "forward passes" in r.getMessage()]
    assert f"process {os.getpid()} from elsewhere: 8 images at most" in said
    sizes.merge([(16, 5, 99000.0)])
    assert (sizes.chosen, sizes.rates()[16]) == (8, 1200.0), "kept: nothing added after"


def _replica(pass_size: int | None, *timings: tuple[int, int, float]) -> Scores:
    """A decode process's scores of one batch with what it timed since its last."""
    probs = np.full((1, 2), 0.5, np.float32)
    return Scores([1], probs, None, pass_size=pass_size, pass_timings=timings)


@pytest.mark.parametrize("pooled", [True, False], ids=["enough-together", "too-few"])
def test_the_scoring_process_weighs_every_replicas_turns_before_one_replicas_pick(
    pooled: bool,
) -> None:
    """One replica kept 8 from its own turns (1,050 against 950 images/s); with the other's
    unsettled turns (16 at 1,100) added, 16 is kept. Where the turns together still fall
    short, the replica's pick is kept."""
    model = nn.Linear(2, 2)
    learnt = partial(pass_sizes, model, 32, None, BATCH)
    other = _replica(None, (16, 2 if pooled else 1, 1100.0), (8, 3, 900.0))
    settled = _replica(8, *([(16, 1, 950.0)] if pooled else []), (8, 3, 1050.0))
    assert len(list(_noted(iter([other, settled]), (), None, None, learnt))) == 2
    assert learnt(threads=1).chosen == (16 if pooled else 8)


def test_a_process_keeps_one_for_each_model_size_dtype_threads_and_batch() -> None:
    model, other = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch_threads(1):
        one = pass_sizes(model, 32, None, 64)
        assert pass_sizes(model, 32, None, 64) is one
        assert pass_sizes(other, 32, None, 64) is not one
        assert pass_sizes(model, 64, None, 64) is not one
        assert pass_sizes(model, 32, torch.bfloat16, 64) is not one
        assert pass_sizes(model, 32, None, 32) is not one
    with torch_threads(2):
        assert pass_sizes(model, 32, None, 64) is not one, "learnt again on other threads"
        assert pass_sizes(model, 32, None, 64, threads=1) is one, "or asked for by its threads"


def _batch(ids: list[int]) -> Batch:
    pixels = torch.stack([torch.full((4, 4, 3), i, dtype=torch.uint8) for i in ids])
    return Batch(ids, channels_first(pixels), {99: "corrupt"}, {98: "timed out"}, ("note",))


def test_a_batch_is_cut_into_passes_losing_nothing() -> None:
    parts = list(cut(_batch(list(range(20))), 8))
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
    assert list(cut(whole, 8)) == [whole]


class Paced(SizeSpy):
    """A forward pass of ``n`` images sleeps ``pace(n)`` seconds (a CPU whose caches a pass
    of more than 8 images overflows, or one whose passes cost the same however large)."""

    def __init__(self, log: Path, large_slow: bool) -> None:
        super().__init__(log)
        self.large_slow = large_slow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.large_slow:
            time.sleep(len(x) * (0.004 if len(x) > MIN_PASS else 0.0005))
        else:
            time.sleep(0.02)
        return super().forward(x)


def _by_process(logged: list[tuple[int, int]]) -> dict[int, list[int]]:
    """The pass sizes ``SizeSpy`` logged, in order, by the process that ran them."""
    by_process: dict[int, list[int]] = {}
    for pid, size in logged:
        by_process.setdefault(pid, []).append(size)
    return by_process


BATCH = 16
TURNS = 2 * (TIMED_TURNS + 1)  # the turns that learn between the caps 16 and 8


@pytest.mark.parametrize("large_slow", [True, False], ids=["small-passes-faster", "large"])
@pytest.mark.parametrize("where", ["replicas", "fed", "in-process", "rescoring"])
def test_a_cpus_passes_settle_on_the_size_that_ran_fastest(
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    where: str,
    large_slow: bool,
) -> None:
    """Each replica, and the scoring process fed by decode processes, reading for itself or
    rescoring cached pixels, tries passes of 16 and 8 in turn, then keeps to the faster:
    8 where a pass of 16 takes 16 times one of 8's images' time, 16 where a pass takes as
    long however many images; scoring as whole passes do. Replicas started afterwards
    start from what the ones before learnt."""
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    processes = 2 if where == "replicas" else 1  # that run forward passes
    after = 3  # batches each process scores once it has learnt
    n = BATCH * 2 * (TURNS + after)
    items = [(i, ITEMS[i % len(ITEMS)][1]) for i in range(n)]
    paced = Paced(tmp_path / "passes", large_slow)
    source = ImageSource(image_root=root)
    cache = PixelCache(tmp_path / "cache", 64 * 2**20) if where == "rescoring" else None
    options: dict[str, Any] = {
        "batch_size": BATCH, "device": "cpu", "image_size": 32, "cache": cache,
        "threads": 0 if where == "replicas" else 1,
        "num_workers": 2 if where in ("replicas", "fed") else 0,
    }  # fmt: skip
    try:
        if cache is not None:
            score_items(SizeSpy(tmp_path / "other"), items, source, **options)  # fills it
        scores = score_items(paced, items, source, **options)
        logged = _log(paced.log)
    finally:
        if cache is not None:
            cache.close()
    by_process = _by_process(logged)
    assert len(by_process) == processes
    assert (os.getpid() in by_process) == (where != "replicas")
    kept = MIN_PASS if large_slow else BATCH
    for sizes in by_process.values():
        assert sum(sizes) == n // processes
        last = sizes[-after * BATCH // kept :]
        assert last == [kept] * (after * BATCH // kept), f"kept to passes of {kept}"
        assert set(sizes[: len(sizes) - len(last)]) == {BATCH, MIN_PASS}, "both tried"
    assert scores.task_ids == [t for t, _ in items]
    if where == "replicas":  # what they learnt, kept here: the next replicas start from it
        score_items(paced, items[: 4 * BATCH], source, **options)
        assert [size for _, size in _log(paced.log)] == [kept] * (4 * BATCH // kept)
    whole = score_items(SizeSpy(tmp_path / "whole"), items, source, **{**options, "cache": None})
    np.testing.assert_allclose(scores.probs, whole.probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("large_slow", [True, False], ids=["small-passes-faster", "large"])
def test_replicas_retired_before_they_settle_hand_on_what_they_timed(
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    large_slow: bool,
) -> None:
    """Decode processes started for each call (no ``Decoders`` kept) score 4 batches each,
    too few to settle alone; the turns they time add up in the scoring process, so the
    third call's replicas run passes of the faster size from their first batch."""
    root, _ = digit_files
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    paced = Paced(tmp_path / "passes", large_slow)
    source = ImageSource(image_root=root)
    items = [(i, ITEMS[i % len(ITEMS)][1]) for i in range(2 * 4 * BATCH)]
    options = {"batch_size": BATCH, "device": "cpu", "image_size": 32, "num_workers": 2}
    calls = []
    for _ in range(3):
        scores = score_items(paced, items, source, threads=0, **options)
        assert scores.task_ids == [t for t, _ in items]
        calls.append(_by_process(_log(paced.log)))
    assert len({pid for call in calls for pid in call}) == 6, "2 processes a call, each new"
    for by_process in calls[0].values():
        assert set(by_process) == {BATCH, MIN_PASS}, "both tried, neither kept"
    kept = MIN_PASS if large_slow else BATCH
    for by_process in calls[2].values():
        assert by_process == [kept] * (4 * BATCH // kept), f"passes of {kept} from the first"
