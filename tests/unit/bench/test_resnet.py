"""bench/resnet.py: the ResNet-50 the scoring benchmark builds where torchvision is missing is
the published network (torchvision's ``resnet50``: 25,557,032 parameters with 1,000 classes,
4.09 G multiply-adds an image at 224x224)."""

from __future__ import annotations

import torch
from torch import nn

from bench.resnet import resnet50


def _multiply_adds(model: nn.Module, size: int) -> int:
    total = 0

    def count(module: nn.Module, _: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] ** 2
            total += out.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return total


def test_the_published_parameters_and_multiply_adds() -> None:
    model = resnet50(1000)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert round(_multiply_adds(model, 224) / 1e9, 2) == 4.09


def test_logits_for_each_image_at_any_size() -> None:
    model = resnet50(7).eval()
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
