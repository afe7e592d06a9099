"""What a model's forward pass may return, turned into per-image class probabilities.

The output contract for a batch ``x: (B, 3, H, W)``:

* classification: ``logits: (B, C)``, or ``(logits, embeddings: (B, D))``, or a dict
  ``{"logits": (B, C), "embeddings": (B, D)}`` (embeddings optional); softmax is applied here.
* detection: a dict with ``"box_probs"``, each box's class distribution over the project's C
  classes (rows sum to 1; drop or renormalise a background column first), either
  a list of B tensors ``(k_i, C)`` (``k_i`` boxes in image i, 0 allowed), or one padded tensor
  ``(B, K, C)`` with ``"box_mask": (B, K)`` bool marking the real boxes (all real when the mask
  is missing); optionally ``"embeddings": (B, D)``. The boxes of each image are aggregated by
  the core (``planner.core.acquisition.aggregate_boxes``, noisy-or presence): the stored
  probabilities are then per-class presence, not a distribution, and an image without boxes
  gets presence 0 in every class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from planner.core.acquisition import aggregate_boxes
from planner.errors import InputError


@dataclass(frozen=True)
class Output:
    """One batch's ``probs: (B, C)`` float32 (CPU) and ``embeddings: (B, D)`` or None."""

    probs: torch.Tensor
    embeddings: torch.Tensor | None
    detection: bool = False


def logits_of(out: object) -> torch.Tensor:
    """The logits of a classification output (what MC-dropout passes need)."""
    if isinstance(out, Mapping):
        if "logits" not in out:
            raise InputError("the model returned a dict without 'logits'; see workers.outputs")
        return torch.as_tensor(out["logits"])
    if isinstance(out, tuple | list):
        return torch.as_tensor(out[0])
    return torch.as_tensor(out)


def read_output(out: object, batch: int, *, reduced: bool = False) -> Output:
    """``out`` of a forward pass over ``batch`` images, by the contract of the module;
    ``reduced``: the pass ran under a bf16/fp16 autocast."""
    if isinstance(out, Mapping) and "box_probs" in out:
        presence = _presence(out, batch, reduced=reduced)
        return Output(presence, _embeddings(out.get("embeddings")), detection=True)
    embeddings = None
    if isinstance(out, Mapping):
        embeddings = out.get("embeddings")
    elif isinstance(out, tuple | list) and len(out) > 1:
        embeddings = out[1]
    probs = torch.softmax(logits_of(out).float(), dim=1).cpu()
    return Output(probs, _embeddings(embeddings))


def finite_rows(
    probs: npt.NDArray[np.float32],
    embeddings: npt.NDArray[np.float32] | None,
    mc: npt.NDArray[np.float32] | None,
) -> npt.NDArray[np.bool_]:
    """``(n,)``: the images whose ``probs: (n, c)``, ``embeddings: (n, d)`` and MC samples
    ``mc: (T, n, c)`` are all finite. A model dividing by an image's spread gives NaN for a
    constant image; stored, planning would refuse that model version's scores every cycle."""
    finite = np.asarray(np.isfinite(probs).all(axis=1), dtype=np.bool_)
    if embeddings is not None:
        finite &= np.isfinite(embeddings).all(axis=1)
    if mc is not None:
        finite &= np.isfinite(mc).all(axis=(0, 2))
    return finite


def _embeddings(value: object) -> torch.Tensor | None:
    return None if value is None else torch.as_tensor(value).float().cpu()


_REDUCED_SLACK = 0.02
"""How far from 1 a bf16 softmax row may sum (8 bits of mantissa: a few parts in a
thousand per term) and still be taken for a distribution and rescaled."""


def _renormalised(probs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Box distributions a bf16/fp16 forward pass computed, rescaled to sum to 1; rows further
    off than rounding explains are left for ``aggregate_boxes`` to refuse (logits, say)."""
    sums = probs.sum(axis=1, keepdims=True)
    rounding = np.abs(sums - 1.0) <= _REDUCED_SLACK
    return np.where(rounding, probs / np.where(rounding, sums, 1.0), probs)


def _presence(out: Mapping[str, object], batch: int, *, reduced: bool) -> torch.Tensor:
    boxes = out["box_probs"]
    if isinstance(boxes, torch.Tensor):
        if boxes.ndim != 3 or boxes.shape[0] != batch:
            raise InputError(f"box_probs must be (B={batch}, K, C), got {tuple(boxes.shape)}")
        mask = out.get("box_mask")
        keep = (
            torch.ones(boxes.shape[:2], dtype=torch.bool)
            if mask is None
            else torch.as_tensor(mask).bool().cpu()
        )
        if keep.shape != boxes.shape[:2]:
            raise InputError(f"box_mask must be {tuple(boxes.shape[:2])}, got {tuple(keep.shape)}")
        keep = keep.to(boxes.device)
        per_image: Sequence[torch.Tensor] = [boxes[i][keep[i]] for i in range(batch)]
    elif isinstance(boxes, Sequence) and len(boxes) == batch:
        per_image = [torch.as_tensor(b) for b in boxes]
    else:
        raise InputError(
            f"box_probs must be a list of {batch} (k_i, C) tensors or a (B, K, C) tensor"
        )
    widths = {int(b.shape[1]) for b in per_image if b.ndim == 2}
    if len(widths) != 1 or any(b.ndim != 2 for b in per_image):
        raise InputError("every image's box_probs must be (k_i, C) with one C for the batch")
    boxes_of = [b.float().cpu() for b in per_image]
    # an image with a NaN box gets NaN presence (unscorable, see ``finite_rows``), its boxes
    # kept from ``aggregate_boxes``, which would refuse the whole batch for them
    broken = [not bool(torch.isfinite(b).all()) for b in boxes_of]
    boxes_of = [b[:0] if nan else b for b, nan in zip(boxes_of, broken, strict=True)]
    probs = torch.cat(boxes_of).numpy().astype(np.float64)
    if reduced:
        probs = _renormalised(probs)
    image = np.repeat(np.arange(batch), [int(b.shape[0]) for b in boxes_of])
    presence = aggregate_boxes(probs, image, n_images=batch).presence.astype(np.float32)
    presence[np.asarray(broken, dtype=bool)] = np.nan
    return torch.from_numpy(presence)
