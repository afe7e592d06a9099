"""MC-dropout BALD (every dropout kind, TorchScript, the .pt2 warning) and detection outputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from planner.core.acquisition import aggregate_boxes, bald
from planner.errors import ConfigError, InputError
from planner.store import Store
from planner.store.scores import load_scores
from tests.unit.workers.conftest import CLASSES, show_images, worker_config
from workers import devices
from workers.batches import read_pixels
from workers.config import WorkerConfig
from workers.decode import decode
from workers.dispatch import score_pool
from workers.dropout import NO_SPREAD
from workers.images import ImageSource
from workers.inference import score_items
from workers.models import load_model
from workers.pixels import PixelCache

ITEMS = [(i, f"/data/local-files/?d=digits/{i - 1:04d}.png") for i in range(201, 225)]


class SpatialDropoutNet(nn.Module):
    """Only channel-wise dropout: MC passes must find Dropout2d, not just nn.Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.drop = nn.Dropout2d(0.5)
        self.head = nn.Linear(16, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.conv(x))).mean(dim=(2, 3)))


class NoDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def _net(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval()


def test_mc_passes_switch_on_dropout2d_and_give_bald(digit_files: tuple[Path, list[int]]) -> None:
    root, _ = digit_files
    scores = score_items(
        _net(SpatialDropoutNet), ITEMS, ImageSource(image_root=root), mc_passes=6, batch_size=10
    )
    assert scores.mc is not None
    assert scores.mc.shape == (6, 24, 10)
    assert not np.allclose(scores.mc[0], scores.mc[1]), "Dropout2d must vary between passes"
    assert scores.bald is not None
    assert scores.bald.shape == (24,)
    np.testing.assert_allclose(scores.bald, bald(scores.mc), rtol=1e-6)
    assert (scores.bald > 0).all()
    assert scores.warnings == ()


def test_torchscript_dropout_is_switched_on_and_pt2_says_it_cannot(
    digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    root, _ = digit_files
    net = _net(SpatialDropoutNet)
    scripted_path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(scripted_path))
    scripted = load_model(str(scripted_path))
    assert scripted.kind == "torchscript"
    source = ImageSource(image_root=root)
    scores = score_items(scripted.module, ITEMS, source, kind=scripted.kind, mc_passes=4)
    assert scores.bald is not None, "a TorchScript module keeps its dropout submodules"
    assert scores.warnings == ()

    exported_path = tmp_path / "exported.pt2"
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    program = torch.export.export(net, (torch.rand(2, 3, 32, 32),), dynamic_shapes=batch)
    torch.export.save(program, str(exported_path))
    exported = load_model(str(exported_path))
    assert exported.kind == "export"
    blind = score_items(exported.module, ITEMS, source, kind=exported.kind, mc_passes=4)
    assert blind.bald is None
    assert blind.mc is None
    (warning,) = blind.warnings
    assert "torch.export" in warning
    assert "impossible" in warning
    np.testing.assert_allclose(blind.probs, scores.probs, rtol=1e-4, atol=1e-6)

    plain = score_items(_net(NoDropout), ITEMS, source, mc_passes=4)
    assert plain.bald is None
    assert any("no dropout layers" in w for w in plain.warnings)


def test_a_traced_torchscript_file_gets_no_bald_and_says_why_a_scripted_one_gets_bald(
    digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """torch.jit.trace bakes ``train=False`` into each dropout call but keeps the layers:
    the passes all agreed and BALD 0 was stored for every image, silently."""
    root, _ = digit_files
    net = _net(SpatialDropoutNet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(net, torch.rand(2, 3, 32, 32)).save(str(tmp_path / "traced.pt"))
        torch.jit.script(net).save(str(tmp_path / "scripted.pt"))
    source = ImageSource(image_root=root)
    traced = load_model(str(tmp_path / "traced.pt"))
    blind = score_items(traced.module, ITEMS, source, kind=traced.kind, mc_passes=3)
    assert blind.bald is None
    (warning,) = blind.warnings
    assert "torch.jit.trace" in warning
    scripted = load_model(str(tmp_path / "scripted.pt"))
    seen = score_items(scripted.module, ITEMS, source, kind=scripted.kind, mc_passes=3)
    assert seen.bald is not None
    assert (seen.bald > 0).all()
    np.testing.assert_allclose(blind.probs, seen.probs, rtol=1e-5, atol=1e-6)


class UnusedDropout(SpatialDropoutNet):
    """Declares a dropout layer its forward never calls: every MC pass agrees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_passes_that_all_agree_store_no_bald_rather_than_zeros(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], entry_point: Callable[..., str]
) -> None:
    store, pid = project
    root, _ = digit_files
    scores = score_items(_net(UnusedDropout), ITEMS, ImageSource(image_root=root), mc_passes=3)
    assert scores.bald is None
    assert scores.mc is None
    assert scores.warnings == (NO_SPREAD,)
    module = entry_point("planner_test_unused_dropout", make=UnusedDropout)
    cfg = worker_config(store, root, model=f"{module}:make", mc_passes=3)
    result = score_pool(cfg, pid, ITEMS)
    assert result.warnings == (NO_SPREAD,)
    with store.session() as session:
        stored = load_scores(session, project_id=pid, model_version=result.model_version)
    assert stored.task_ids.size == len(ITEMS)
    assert stored.bald is None


@pytest.fixture
def entry_points(entry_point: Callable[..., str]) -> str:
    return entry_point("planner_test_inference", spatial=SpatialDropoutNet, detector=BoxNet)


def test_bald_is_stored_per_item_through_score_pool(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], entry_points: str
) -> None:
    store, pid = project
    root, _ = digit_files
    cfg = replace(worker_config(store, root), model=f"{entry_points}:spatial", mc_passes=5)
    result = score_pool(cfg, pid, ITEMS)
    assert result.warnings == ()
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=result.model_version)
    assert scores.bald is not None
    assert scores.bald.shape == (24,)
    assert np.all((scores.bald >= 0) & (scores.bald <= 1))
    assert scores.bald.max() > 0


class DarkDivides(nn.Module):
    """Divides its features by the image's brightness: NaN for a black image (0/0), as a
    model normalising each image by its spread gives for a constant one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3, len(CLASSES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = x.mean(dim=(2, 3))
        features = features / features.mean(dim=1, keepdim=True)
        return self.head(self.drop(features)), features


@pytest.mark.parametrize("mc_passes", [0, 2])
def test_an_image_the_model_gives_nan_for_is_unscorable_and_the_rest_scored(
    project: tuple[Store, int], tmp_path: Path, entry_point: Callable[..., str], mc_passes: int
) -> None:
    """NaN probabilities were stored as scores, and planning refused them every cycle until
    a new model version; with MC passes BALD refused them in the worker, failing the chunk."""
    store, pid = project
    root = tmp_path / "images"
    root.mkdir()
    for name, value in (("black", 0), ("grey", 128)):
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(root / f"{name}.png")
    images = {1: "/data/local-files/?d=black.png", 2: "/data/local-files/?d=grey.png"}
    show_images(store, pid, images)
    module = entry_point("planner_test_nan", make=DarkDivides)
    cfg = worker_config(store, root, model=f"{module}:make", mc_passes=mc_passes)
    result = score_pool(cfg, pid, list(images.items()))
    assert (result.scored, result.unscorable) == (1, 1)
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version=result.model_version)
    assert scores.task_ids.tolist() == [2]
    assert scores.unscorable == {1: "the model's output holds NaN or inf"}
    assert np.isfinite(scores.probs).all()
    assert (scores.bald is not None) == (mc_passes > 0)


def test_a_detection_image_whose_boxes_hold_nan_is_unscorable_not_the_batch_refused(
    tmp_path: Path,
) -> None:
    for name, value in (("black", 0), ("grey", 128)):
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(tmp_path / f"{name}.png")

    class DarkBoxes(DarkDivides):
        def forward(self, x: torch.Tensor) -> dict[str, object]:  # type: ignore[override]
            logits, _ = super().forward(x)
            return {"box_probs": [torch.softmax(row[None], dim=1) for row in logits]}

    items = [(1, "/data/local-files/?d=black.png"), (2, "/data/local-files/?d=grey.png")]
    scores = score_items(DarkBoxes().eval(), items, ImageSource(image_root=tmp_path))
    assert scores.detection
    assert scores.task_ids == [2]
    assert scores.unscorable == {1: "the model's output holds NaN or inf"}


class BoxNet(nn.Module):
    """Detection-like: image i gets 0-3 boxes (by brightness), each a class distribution.

    ``padded`` returns ``(B, K, C)`` with a mask, else a list of ``(k_i, C)`` tensors.
    """

    def __init__(self, padded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3, len(CLASSES))
        self.padded = padded

    def boxes(self, x: torch.Tensor) -> list[torch.Tensor]:
        pooled = x.mean(dim=(2, 3))
        counts = ((pooled.mean(dim=1) - 0.28) * 30).long().clamp(0, 3)
        out = []
        for i, k in enumerate(counts.tolist()):
            shifts = torch.arange(k, dtype=x.dtype)[:, None]
            out.append(torch.softmax(self.head(pooled[i][None] + shifts), dim=1))
        return out

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        per_image = self.boxes(x)
        if not self.padded:
            return {"box_probs": per_image, "embeddings": x.mean(dim=(2, 3))}
        padded = torch.zeros(len(x), 3, len(CLASSES))
        mask = torch.zeros(len(x), 3, dtype=torch.bool)
        for i, boxes in enumerate(per_image):
            padded[i, : len(boxes)] = boxes
            mask[i, : len(boxes)] = True
        return {"box_probs": padded, "box_mask": mask}


def test_detection_boxes_are_aggregated_per_image(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]], entry_points: str
) -> None:
    store, pid = project
    root, _ = digit_files
    source = ImageSource(image_root=root)
    x = torch.stack([torch.from_numpy(decode(source.read(ref), 32)) for _, ref in ITEMS])
    x = x.permute(0, 3, 1, 2)  # channels first, as the workers batch them
    with torch.no_grad():
        per_image = BoxNet().boxes(x.float() / 255)
    counts = [len(b) for b in per_image]
    assert 0 in counts, "the test wants images without boxes"
    assert len(set(counts)) > 2, "and images with different numbers of boxes"
    expected = aggregate_boxes(
        torch.cat(per_image).numpy(), np.repeat(np.arange(len(ITEMS)), counts), n_images=len(ITEMS)
    )
    listed = score_items(BoxNet(), ITEMS, source, batch_size=7, precision="float32")
    padded = score_items(BoxNet(padded=True), ITEMS, source, batch_size=7, precision="float32")
    assert listed.detection
    assert padded.detection
    np.testing.assert_allclose(listed.probs, expected.presence, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded.probs, expected.presence, rtol=1e-5, atol=1e-6)
    empty = [i for i, k in enumerate(counts) if k == 0]
    assert np.all(listed.probs[empty] == 0), "no box: no class present"
    assert listed.embeddings is not None
    assert listed.embeddings.shape == (24, 3)

    cfg = replace(worker_config(store, root), model=f"{entry_points}:detector", precision="float32")
    result = score_pool(cfg, pid, ITEMS)
    with store.session() as session:
        stored = load_scores(session, project_id=pid, model_version=result.model_version)
    np.testing.assert_allclose(stored.probs, expected.presence, rtol=1e-5, atol=1e-6)


def test_detection_boxes_from_a_bf16_pass_are_rescaled_not_refused(
    digit_files: tuple[Path, list[int]],
) -> None:
    """A bf16 softmax row sums to 1 only within a few parts in a thousand; the core's check
    (1e-4) would refuse it as logits. Rounding is rescaled away, logits are still refused."""
    root, _ = digit_files
    source = ImageSource(image_root=root)
    exact = score_items(BoxNet(padded=True), ITEMS, source, batch_size=7, precision="float32")
    rounded = score_items(BoxNet(padded=True), ITEMS, source, batch_size=7, precision="bfloat16")
    assert rounded.detection
    np.testing.assert_allclose(rounded.probs, exact.probs, atol=1e-2)
    assert not np.array_equal(rounded.probs, exact.probs), "the pass did run in bf16"

    class LogitBoxes(BoxNet):
        def forward(self, x: torch.Tensor) -> dict[str, object]:
            return {"box_probs": [self.head(x.mean(dim=(2, 3))[i][None]) for i in range(len(x))]}

    with pytest.raises(InputError, match=r"not logits|must sum to 1"):
        score_items(LogitBoxes(), ITEMS, source, batch_size=7, precision="bfloat16")


def test_bf16_scores_rank_like_float32(digit_files: tuple[Path, list[int]]) -> None:
    """bf16 moves a probability by a few thousandths and keeps the uncertainty order."""
    root, _ = digit_files
    source = ImageSource(image_root=root)
    model = _net(SpatialDropoutNet)
    exact = score_items(model, ITEMS, source, batch_size=10, precision="float32")
    rounded = score_items(model, ITEMS, source, batch_size=10, precision="bfloat16")
    assert rounded.probs.dtype == np.float32
    np.testing.assert_allclose(rounded.probs, exact.probs, atol=2e-2)
    assert not np.array_equal(rounded.probs, exact.probs), "the pass did run in bf16"

    def entropy(p: np.ndarray) -> np.ndarray:
        return -(p * np.log(np.clip(p, 1e-12, 1))).sum(axis=1)

    order = np.corrcoef(
        np.argsort(np.argsort(entropy(exact.probs))), np.argsort(np.argsort(entropy(rounded.probs)))
    )[0, 1]
    assert order > 0.9, f"rank correlation of the entropies {order:.3f}"


def test_a_bad_precision_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"workers\.precision = 'fp8'"):
        WorkerConfig(store_url=f"sqlite:///{tmp_path}/x.db", classes=CLASSES, precision="fp8")


class ThreadSpy(NoDropout):
    """Notes torch's thread count at each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return super().forward(x)


def test_a_cpu_pass_leaves_a_core_to_each_decoder_and_restores_the_threads(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = digit_files
    source = ImageSource(image_root=root)
    before = torch.get_num_threads()
    monkeypatch.setattr(devices, "usable_cpus", lambda: 6)
    assert devices.forward_threads(0, 2) == 4
    assert devices.forward_threads(0, 9) == 1, "never below one"
    assert devices.forward_threads(3, 2) == 3, "set by hand, kept"
    spy = ThreadSpy()
    score_items(spy, ITEMS, source, batch_size=12, num_workers=0, device="cpu")
    assert spy.seen == [6, 6], "no decoder process: every usable CPU"
    spy = ThreadSpy()
    score_items(spy, ITEMS, source, batch_size=12, num_workers=0, device="cpu", threads=1)
    assert spy.seen == [1, 1]
    assert torch.get_num_threads() == before, "the process's own setting is back"


def test_a_batch_is_the_decoded_images_channels_first_laid_out_channels_last(
    digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """No image is transposed on its way: the batch the forward pass gets is a view of the
    decoded rows, already in the channels_last layout the model runs in."""
    source = ImageSource(image_root=digit_files[0])
    decoded = np.stack([decode(source.read(ref), 32) for _, ref in ITEMS[:8]])
    cache = PixelCache(tmp_path / "cache", 2**26)
    try:
        for _ in range(2):  # read and stored, then from the cache
            [(ids, batch, *_)] = list(read_pixels(ITEMS[:8], source, 32, cache, batch_size=8))
            assert ids == [task_id for task_id, _ in ITEMS[:8]]
            assert batch is not None
            assert batch.shape == (8, 3, 32, 32)
            assert batch.is_contiguous(memory_format=torch.channels_last)
            assert np.array_equal(batch.numpy(), decoded.transpose(0, 3, 1, 2))
    finally:
        cache.close()
