"""MC dropout: the dropout layers a model's extra passes switch on, and why some models have none.

With ``mc_passes`` T, every dropout layer (``nn.Dropout``, ``Dropout1d/2d/3d``,
``AlphaDropout``, ``FeatureAlphaDropout``, or their TorchScript counterparts) is switched to
training for T extra passes, and BALD (``planner.core.acquisition.bald``) is computed from the
``(T, n, C)`` samples in :mod:`workers.inference`, so only one number per item leaves the
worker. A ``torch.export`` program was traced in eval mode and has no dropout left to switch
on; such a model, or one without dropout layers, gets no BALD and a warning saying why.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.models import ModelKind
from workers.outputs import logits_of

DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_DROPOUT_NAMES = frozenset(t.__name__ for t in DROPOUT_TYPES)


def dropout_layers(module: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``module``, eager or TorchScript (by their original class)."""
    return [
        m
        for m in module.modules()
        if isinstance(m, DROPOUT_TYPES) or getattr(m, "original_name", None) in _DROPOUT_NAMES
    ]


def mc_problem(module: nn.Module, kind: ModelKind = "module") -> str | None:
    """Why MC-dropout passes are impossible for ``module``, or None when they work."""
    if kind == "export":
        return (
            "workers.mc_passes ignored: a torch.export (.pt2) program is traced in eval mode, "
            "its dropout is gone, so MC-dropout passes are impossible and no BALD is stored; "
            "ship a TorchScript file or a module:function model for BALD"
        )
    if not dropout_layers(module):
        frozen = " (a frozen TorchScript file inlines them)" if kind == "torchscript" else ""
        return (
            f"workers.mc_passes ignored: the model has no dropout layers{frozen}, so "
            "MC-dropout passes would all agree and no BALD is stored"
        )
    return None


def mc_samples(module: nn.Module, x: torch.Tensor, passes: int) -> torch.Tensor:
    """``(T, n, c)`` softmax outputs with only the dropout layers switched to training."""
    dropouts = dropout_layers(module)
    for layer in dropouts:
        layer.train()
    try:
        return torch.stack(
            [torch.softmax(logits_of(module(x)).float(), dim=1) for _ in range(passes)]
        )
    finally:
        for layer in dropouts:
            layer.eval()
