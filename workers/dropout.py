"""MC dropout: the dropout layers a model's extra passes switch on, and why some models have none.

With ``mc_passes`` T, every dropout layer (``nn.Dropout``, ``Dropout1d/2d/3d``,
``AlphaDropout``, ``FeatureAlphaDropout``, or their TorchScript counterparts) is switched to
training for T extra passes, and BALD (``planner.core.acquisition.bald``) is computed from the
``(T, n, C)`` samples in :mod:`workers.inference`, so only one number per item leaves the
worker. A ``torch.export`` program was traced in eval mode and has no dropout left to switch
on, nor has a ``torch.jit.trace`` TorchScript file (its dropout layers remain, their
``training`` flag baked in as False); such a model, or one without dropout layers, gets no BALD
and a warning saying why. So does a batch whose passes all agree although the model has
dropout layers (one it never calls, ``p=0``): its BALD would be 0 for every image, and stored
it would rank the pool as if the model were certain of all of it.
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
NO_SPREAD = (
    "MC-dropout passes all agreed although the model has dropout layers (one its forward "
    "never calls, or with p=0?), so no BALD is stored for those images"
)


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
    layers = dropout_layers(module)
    if not layers:
        frozen = " (a frozen TorchScript file inlines them)" if kind == "torchscript" else ""
        return (
            f"workers.mc_passes ignored: the model has no dropout layers{frozen}, so "
            "MC-dropout passes would all agree and no BALD is stored"
        )
    if kind == "torchscript" and not any(map(_reads_training, layers)):
        return (
            "workers.mc_passes ignored: the TorchScript file was traced (torch.jit.trace), "
            "which bakes its dropout off, so MC-dropout passes would all agree and no BALD is "
            "stored; save the model with torch.jit.script, or use a module:function model, "
            "for BALD"
        )
    return None


def _reads_training(layer: nn.Module) -> bool:
    """Whether a TorchScript dropout layer's forward reads its ``training`` flag, as a
    scripted one does; a traced one holds the flag it was traced with as a constant."""
    graph = getattr(layer, "graph", None)
    if graph is None:  # an eager layer
        return True
    return any(
        node.kind() == "prim::GetAttr" and node.s("name") == "training" for node in graph.nodes()
    )


def mc_samples(module: nn.Module, x: torch.Tensor, passes: int) -> torch.Tensor | None:
    """``(T, n, c)`` softmax outputs with only the dropout layers switched to training; None
    when the passes' logits all agree (see :data:`NO_SPREAD`)."""
    dropouts = dropout_layers(module)
    for layer in dropouts:
        layer.train()
    try:
        logits = [logits_of(module(x)).float() for _ in range(passes)]
    finally:
        for layer in dropouts:
            layer.eval()
    # logits, not probabilities, which a confident model saturates alike in every pass; and
    # a batch of two or more: a lone image whose dropout sees only zeros agrees rightly
    if len(x) > 1 and passes > 1 and all(torch.equal(logits[0], other) for other in logits):
        return None
    return torch.stack([torch.softmax(sample, dim=1) for sample in logits])
