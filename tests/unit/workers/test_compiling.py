"""The forward pass compiled (``workers.compile``): when, where it runs, and its failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded
from torch import nn
from torch._dynamo.utils import counters

from planner.connect import worker_config as from_settings
from planner.errors import ConfigError
from planner.settings import Settings
from planner.store import Store
from planner.store.scores import load_scores
from tests.unit.workers.conftest import CLASSES, worker_config
from tests.unit.workers.test_inference import ITEMS
from workers import devices
from workers.compiling import COMPILE_AFTER, Compiler
from workers.config import WorkerConfig
from workers.images import ImageSource
from workers.inference import score_items
from workers.pixels import PixelCache
from workers.scoring import Resources, current_model, score_chunk


class Tiny(nn.Module):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Doubled(nn.Module):
    """A stand-in for the compiled module whose logits are twice the model's, so a test can
    tell which of the two scored a batch."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> object:
        out = self.module(x)
        return (2 * out[0], *out[1:]) if isinstance(out, tuple) else 2 * out


def _softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1).numpy()


def test_auto_compiles_a_model_once_the_process_was_asked_for_enough_images() -> None:
    made: list[nn.Module] = []

    def compile_(module: nn.Module) -> nn.Module:
        made.append(module)
        return Doubled(module)

    compiler = Compiler(compile=compile_)
    model, other, scripted = Tiny(), Tiny(), Tiny()
    assert compiler.forward(Tiny(), "module", COMPILE_AFTER) is None, "off by default"
    assert compiler.forward(model, "module", 1, "auto") is None, "auto: not yet worth it"
    assert compiler.forward(model, "module", COMPILE_AFTER - 2, "auto") is None
    compiled = compiler.forward(model, "module", 1, "auto")
    assert isinstance(compiled, Doubled)
    assert compiler.forward(model, "module", 5, "auto") is compiled, "compiled once, reused"
    assert made == [model]
    assert compiler.forward(other, "module", 1, "on") is not None, "on: at the first batch"
    assert compiler.forward(other, "module", 1, "off") is None
    assert compiler.forward(Tiny(), "module", COMPILE_AFTER * 2, "off") is None
    assert compiler.forward(scripted, "torchscript", COMPILE_AFTER, "on") is None
    assert made == [model, other]
    with pytest.raises(ValueError, match="fast"):
        compiler.forward(model, "module", 1, "fast")


@pytest.mark.parametrize("where", ["here", "replicas", "cached"])
def test_batches_of_two_or_more_run_the_compiled_forward_and_one_image_eagerly(
    digit_files: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    where: str,
) -> None:
    root, _ = digit_files
    source = ImageSource(image_root=root)
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    model = Tiny().eval()
    cache = None
    if where == "cached":
        cache = PixelCache(tmp_path / "pixels", 2**24)
        score_items(model, ITEMS, source, image_size=32, num_workers=0, cache=cache)
    compiler = Compiler(compile=Doubled)
    scores = score_items(
        model,
        ITEMS,
        source,
        image_size=32,
        batch_size=len(ITEMS) - 1,  # a batch of 23, then one of 1
        num_workers=2 if where == "replicas" else 0,
        precision="float32",
        cache=cache,
        compile_mode="on",
        compiler=compiler,
    )
    eager = score_items(model, ITEMS, source, image_size=32, precision="float32", num_workers=0)
    assert scores.task_ids == eager.task_ids
    logits = torch.log(torch.from_numpy(eager.probs))  # the model's logits, up to a constant
    np.testing.assert_allclose(scores.probs[:-1], _softmax(2 * logits[:-1]), atol=1e-5)
    np.testing.assert_allclose(scores.probs[-1:], eager.probs[-1:], atol=1e-6)
    assert not scores.warnings


@pytest.mark.parametrize("num_workers", [0, 2])
def test_compiled_scores_are_the_eager_scores(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch, num_workers: int
) -> None:
    root, _ = digit_files
    source = ImageSource(image_root=root)
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    model = Tiny().eval()
    options = {"image_size": 32, "batch_size": 8, "precision": "float32"}
    eager = score_items(model, ITEMS, source, num_workers=0, compile_mode="off", **options)
    compiler = Compiler()
    frames = counters["frames"]["ok"]
    compiled = score_items(
        model, ITEMS, source, num_workers=num_workers, compile_mode="on", compiler=compiler,
        **options,
    )  # fmt: skip
    assert counters["frames"]["ok"] > frames, "torch.compile traced the forward pass"
    assert not compiler.failed
    assert not compiled.warnings
    assert compiled.task_ids == eager.task_ids
    np.testing.assert_allclose(compiled.probs, eager.probs, atol=1e-5)


def test_a_model_that_fails_to_compile_is_scored_eagerly_and_not_compiled_again(
    digit_files: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = digit_files
    source = ImageSource(image_root=root)
    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    tried: list[int] = []

    def no_compiler(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
        tried.append(len(inputs))
        raise RuntimeError("no C++ compiler on this machine")

    compiler = Compiler(compile=lambda module: torch.compile(module, backend=no_compiler))
    model = Tiny().eval()
    options = {"image_size": 32, "batch_size": 8, "precision": "float32", "num_workers": 2}
    eager = score_items(model, ITEMS, source, compile_mode="off", **options)
    first = score_items(model, ITEMS, source, compile_mode="on", compiler=compiler, **options)
    assert len(tried) == 1, "tried once, before the decode processes were forked"
    assert model in compiler.failed
    [note] = first.warnings
    assert "torch.compile failed" in note
    assert "no C++ compiler on this machine" in note
    assert "workers.compile = off" in note
    np.testing.assert_array_equal(first.probs, eager.probs)
    again = score_items(model, ITEMS, source, compile_mode="on", compiler=compiler, **options)
    assert len(tried) == 1, "not tried again"
    assert compiler.forward(model, "module", 1, "on") is None
    np.testing.assert_array_equal(again.probs, eager.probs)


class Raising(nn.Module):
    """A compiled forward pass that raises ``error`` as it runs."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize(
    ("error", "wrapped"),
    [
        (SoftTimeLimitExceeded(), False),
        (SoftTimeLimitExceeded(), True),
        (torch.OutOfMemoryError("out of memory"), True),
        (ValueError("the model's own"), False),
    ],
)
def test_a_time_limit_or_the_model_s_own_error_in_a_compiled_pass_is_raised_as_uncompiled(
    digit_files: tuple[Path, list[int]], error: BaseException, wrapped: bool
) -> None:
    root, _ = digit_files

    def struck(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
        raise error  # while compiling: torch wraps it

    def compile_(module: nn.Module) -> nn.Module:
        return torch.compile(module, backend=struck) if wrapped else Raising(error)

    compiler = Compiler(compile=compile_)
    with pytest.raises(type(error)):
        score_items(
            Tiny().eval(), ITEMS, ImageSource(image_root=root), image_size=32, num_workers=0,
            compile_mode="on", compiler=compiler,
        )  # fmt: skip
    assert not compiler.failed, "not the compiler's fault: it is tried again"


def test_workers_compile_is_read_from_the_settings_and_checked(tmp_path: Path) -> None:
    settings = Settings.model_validate({"workers": {"compile": "on"}})
    assert from_settings(settings, CLASSES).compile == "on"
    assert from_settings(Settings(), CLASSES).compile == "off"
    with pytest.raises(ConfigError, match=r"workers\.compile = 'fast'"):
        WorkerConfig(store_url=f"sqlite:///{tmp_path}/x.db", classes=CLASSES, compile="fast")


def test_a_worker_compiles_as_workers_compile_says(
    project: tuple[Store, int], digit_files: tuple[Path, list[int]]
) -> None:
    store, pid = project
    root, _ = digit_files
    resources = Resources(compiler=Compiler(compile=Doubled))
    cfg = worker_config(store, root, compile="on", precision="float32", num_workers=0)
    result = score_chunk(cfg, pid, ITEMS, resources=resources)
    assert result.scored == len(ITEMS)
    model = current_model(cfg, pid, resources)
    with store.session() as session:
        stored = load_scores(session, project_id=pid, model_version=model.version)
    source = ImageSource(image_root=root)
    eager = score_items(model.module, ITEMS, source, precision="float32", num_workers=0)
    assert stored.task_ids.tolist() == eager.task_ids
    logits = torch.log(torch.from_numpy(eager.probs))
    np.testing.assert_allclose(stored.probs, _softmax(2 * logits), atol=1e-5)
