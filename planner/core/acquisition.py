"""Acquisition scores: how much a model's class probabilities say an item is worth labelling.

Every uncertainty score here is oriented the same way, higher = more uncertain, and the
normalised ones lie in [0, 1] so that one ``balance_lambda`` means the same for each:

* least confidence ``1 - max_c p_c``;
* margin, reported as uncertainty ``1 - (p_(1) - p_(2))`` (top two probabilities);
* entropy ``-sum_c p_c log p_c / log C`` (``0 log 0 = 0``; a single class scores 0);
* one-vs-rest: the largest (optionally class-weighted) binary entropy ``H(p_c)`` over the
  classes, in bits, for class distributions and presence probabilities alike;
* BALD from ``T`` Monte-Carlo passes ``H[mean_t p_t] - mean_t H[p_t]`` (divided by ``log C``
  unless ``normalise=False``);
* predicted-minority probability ``sum_c p_c * need_c`` with ``need`` the quota deficits.

Detection models give one probability vector per box; :func:`aggregate_boxes` turns them into
per-image class-presence probabilities and a per-image uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from planner.errors import InputError

FloatArray = npt.NDArray[np.float64]
UncertaintyMethod = Literal["least_confidence", "margin", "entropy"]
SUM_TOLERANCE = 1e-4
"""How far a probability row may sum from 1 (float32 softmax outputs drift by ~1e-6)."""
_CHUNK = 65_536  # rows per block where a full-pool (N, C) temporary would cost memory
_SHOW = 5  # offending rows named in an error message


def _rows(mask: Any) -> str:
    bad = np.flatnonzero(mask)
    shown = ", ".join(str(int(i)) for i in bad[:_SHOW])
    more = f" and {bad.size - _SHOW} more" if bad.size > _SHOW else ""
    return f"{bad.size} row(s): {shown}{more}"


def check_probs(
    probs: npt.ArrayLike,
    *,
    name: str = "probs",
    multilabel: bool = False,
    atol: float = SUM_TOLERANCE,
) -> npt.NDArray[np.floating[Any]]:
    """Validate ``probs: (n, c)`` and return it as a float array (no copy when already float).

    Entries must be finite and in [0, 1]; unless ``multilabel`` (independent per-class
    presence probabilities), each row must sum to 1 within ``atol``. Errors name the rows.
    """
    array = np.asarray(probs)
    if array.dtype.kind in "biu":
        array = array.astype(np.float64)
    if array.dtype.kind != "f":
        raise InputError(f"{name} must be a float array, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] == 0:
        raise InputError(
            f"{name} must have shape (items, classes) with classes >= 1, got {array.shape}"
        )
    for start in range(0, array.shape[0], _CHUNK):
        block = array[start : start + _CHUNK]
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            raise InputError(f"{name} has NaN or inf in {_rows(bad)} (offset {start}); drop them")
        bad = (block < 0).any(axis=1) | (block > 1 + atol).any(axis=1)
        if bad.any():
            raise InputError(
                f"{name} has values outside [0, 1] in {_rows(bad)} (offset {start}); "
                "pass probabilities (softmax or sigmoid outputs), not logits"
            )
        if not multilabel:
            bad = np.abs(block.sum(axis=1, dtype=np.float64) - 1.0) > atol
            if bad.any():
                raise InputError(
                    f"{name} rows must sum to 1 (within {atol:g}); {_rows(bad)} (offset {start}) "
                    "do not; apply softmax, or pass multilabel=True for presence probabilities"
                )
    return array


def check_need(need: npt.ArrayLike, n_classes: int, *, name: str = "need") -> FloatArray:
    """Validate ``need: (c,)``, finite and non-negative (0 for classes whose quota is met)."""
    array = np.asarray(need, dtype=np.float64)
    if array.shape != (n_classes,):
        raise InputError(
            f"{name} must have shape ({n_classes},), one entry per class, got {array.shape}"
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise InputError(f"{name} must be finite and >= 0 (0 for met quotas), got {array.tolist()}")
    return array


def top_two(
    probs: npt.NDArray[np.floating[Any]],
) -> tuple[npt.NDArray[np.intp], FloatArray, npt.NDArray[np.intp], FloatArray]:
    """Best and runner-up class per row of ``probs: (n, c)``: ``(top1, p1, top2, p2)``.

    Ties go to the lower class index. With a single class the runner-up is class 0 with p 0.
    Works in row blocks so only ``(block, c)`` temporaries are made.
    """
    n, c = probs.shape
    top1 = np.zeros(n, np.intp)
    top2 = np.zeros(n, np.intp)
    p1 = np.zeros(n, np.float64)
    p2 = np.zeros(n, np.float64)
    rows = np.arange(min(n, _CHUNK))
    for start in range(0, n, _CHUNK):
        block = np.array(probs[start : start + _CHUNK], dtype=np.float64)
        r = rows[: block.shape[0]]
        end = start + block.shape[0]
        top1[start:end] = best = block.argmax(axis=1)
        p1[start:end] = block[r, best]
        if c > 1:
            block[r, best] = -1.0
            top2[start:end] = second = block.argmax(axis=1)
            p2[start:end] = block[r, second]
    return top1, p1, top2, p2


def least_confidence(probs: npt.ArrayLike) -> FloatArray:
    """``1 - max_c p_c`` per row of ``probs: (n, c)``; ``(n,)``."""
    array = check_probs(probs)
    # check_probs lets rounding past 1 through (1 + 1e-4): no score below 0
    out: FloatArray = np.clip(1.0 - array.max(axis=1).astype(np.float64), 0.0, 1.0)
    return out


def margin(probs: npt.ArrayLike) -> FloatArray:
    """Margin as uncertainty, ``1 - (p_(1) - p_(2))`` per row of ``probs: (n, c)``; ``(n,)``."""
    _, p1, _, p2 = top_two(check_probs(probs))
    out: FloatArray = np.clip(1.0 - (p1 - p2), 0.0, 1.0)
    return out


def _entropy_nats(probs: npt.NDArray[np.floating[Any]]) -> FloatArray:
    """Row entropies in nats with ``0 log 0 = 0``, no warnings; rows in blocks."""
    out = np.empty(probs.shape[0], np.float64)
    for start in range(0, probs.shape[0], _CHUNK):
        block = np.asarray(probs[start : start + _CHUNK], dtype=np.float64)
        logs = np.log(block, out=np.zeros_like(block), where=block > 0)
        out[start : start + block.shape[0]] = -(block * logs).sum(axis=1)
    return out


def entropy(probs: npt.ArrayLike, *, normalise: bool = True) -> FloatArray:
    """Entropy per row of ``probs: (n, c)``, divided by ``log C`` unless ``normalise=False``.

    With a single class there is nothing to be uncertain about: 0.
    """
    array = check_probs(probs)
    nats = _entropy_nats(array)
    c = array.shape[1]
    if not normalise or c == 1:
        return np.zeros_like(nats) if c == 1 else np.maximum(nats, 0.0)
    out: FloatArray = np.clip(nats / math.log(c), 0.0, 1.0)
    return out


def one_vs_rest(
    probs: npt.ArrayLike, *, class_weights: npt.ArrayLike | None = None, multilabel: bool = False
) -> FloatArray:
    """The most uncertain yes/no class decision per row of ``probs: (n, c)``; ``(n,)`` in
    [0, 1].

    ``max_c w_c H(p_c) / max_c w_c`` with ``H`` the binary entropy in bits, so a row scores
    1 when some class of the largest weight has ``p = 0.5``; ``class_weights: (c,)``
    non-negative (default 1). Rows may be class distributions or, with ``multilabel``,
    per-class presence probabilities. Rows in blocks.
    """
    array = check_probs(probs, multilabel=multilabel)
    c = array.shape[1]
    w = np.ones(c) if class_weights is None else check_need(class_weights, c, name="class_weights")
    top = float(w.max())
    out = np.zeros(array.shape[0], np.float64)
    if top <= 0:
        return out
    for start in range(0, array.shape[0], _CHUNK):
        p = np.clip(np.asarray(array[start : start + _CHUNK], dtype=np.float64), 1e-12, 1 - 1e-12)
        h = -(p * np.log(p) + (1 - p) * np.log(1 - p)) / math.log(2)
        out[start : start + p.shape[0]] = (h * (w / top)).max(axis=1)
    clipped: FloatArray = np.clip(out, 0.0, 1.0)
    return clipped


def bald(mc_probs: npt.ArrayLike, *, normalise: bool = True) -> FloatArray:
    """Mutual information from ``mc_probs: (t, n, c)`` (T stochastic passes); ``(n,)``.

    ``H[mean_t p_t] - mean_t H[p_t]``, tiny negatives from rounding clipped to 0, divided by
    ``log C`` unless ``normalise=False`` (then in nats). Accumulates one pass at a time.
    """
    array = np.asarray(mc_probs)
    if array.ndim != 3 or array.shape[0] == 0:
        raise InputError(f"mc_probs must have shape (passes, items, classes), got {array.shape}")
    t, n, c = array.shape
    mean_p = np.zeros((n, c), np.float64)
    mean_h = np.zeros(n, np.float64)
    for k in range(t):
        sample = check_probs(array[k], name=f"mc_probs[{k}]")
        mean_p += sample
        mean_h += _entropy_nats(sample)
    mean_p /= t
    mean_h /= t
    out: FloatArray = np.maximum(_entropy_nats(mean_p) - mean_h, 0.0)
    if c == 1:
        return np.zeros(n, np.float64)
    if normalise:
        out = np.clip(out / math.log(c), 0.0, 1.0)
    return out


def uncertainty(probs: npt.ArrayLike, *, method: UncertaintyMethod = "entropy") -> FloatArray:
    """One of the single-pass scores by name: ``least_confidence``, ``margin`` or ``entropy``."""
    if method == "least_confidence":
        return least_confidence(probs)
    if method == "margin":
        return margin(probs)
    if method == "entropy":
        return entropy(probs)
    raise InputError(
        f"unknown uncertainty method {method!r}; use least_confidence, margin or entropy"
    )


def minority_probability(
    probs: npt.ArrayLike, need: npt.ArrayLike, *, multilabel: bool = False
) -> FloatArray:
    """``sum_c p_c * need_c`` per row of ``probs: (n, c)``, ``need: (c,)`` the deficits; ``(n,)``.

    With ``need`` in item counts this is the expected number of still-needed labels an item
    brings; pass ``need / need.max()`` for a score in [0, 1].
    """
    array = check_probs(probs, multilabel=multilabel)
    weights = check_need(need, array.shape[1])
    out: FloatArray = array @ weights
    return out


@dataclass(frozen=True, slots=True)
class DetectionScores:
    """Per-image scores from per-box probabilities.

    ``presence: (n, c)`` probability that class c is in the image; ``uncertainty: (n,)``;
    ``n_boxes: (n,)`` boxes per image (0 = nothing detected: presence 0, ``empty_uncertainty``).
    """

    presence: FloatArray
    uncertainty: FloatArray
    n_boxes: npt.NDArray[np.int64]

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": int(self.n_boxes.size),
            "images_without_boxes": int((self.n_boxes == 0).sum()),
            "boxes": int(self.n_boxes.sum()),
            "mean_uncertainty": float(self.uncertainty.mean()) if self.uncertainty.size else 0.0,
        }


def aggregate_boxes(
    box_probs: npt.ArrayLike,
    box_image: npt.ArrayLike,
    *,
    n_images: int,
    presence: Literal["noisy_or", "max"] = "noisy_or",
    reduce: Literal["max", "mean"] = "max",
    empty_uncertainty: float = 0.0,
) -> DetectionScores:
    """Per-image presence and uncertainty from ``box_probs: (b, c)`` and ``box_image: (b,)``.

    ``box_image`` holds each box's image index in ``[0, n_images)``; each box row is a class
    distribution (include a background column as a class, or renormalise without it).
    Presence is noisy-or ``1 - prod_b (1 - p_bc)`` (summed in log space) or the max over
    boxes. Uncertainty is the ``reduce`` (max or mean) of the boxes' normalised entropies;
    images with no box get presence 0 and ``empty_uncertainty`` (default 0: nothing seen,
    nothing to be unsure about; exploration picks still reach them).
    """
    probs = check_probs(box_probs, name="box_probs")
    index = np.asarray(box_image)
    if n_images < 0:
        raise InputError(f"n_images must be >= 0, got {n_images}")
    if index.shape != (probs.shape[0],) or (index.size and index.dtype.kind not in "iu"):
        raise InputError(
            f"box_image must be ({probs.shape[0]},) integer image indices, "
            f"got shape {index.shape} dtype {index.dtype}"
        )
    if index.size and (index.min() < 0 or index.max() >= n_images):
        raise InputError(f"box_image values must lie in [0, {n_images}); check n_images")
    if not math.isfinite(empty_uncertainty):
        raise InputError(f"empty_uncertainty must be finite, got {empty_uncertainty}")
    index = index.astype(np.intp)
    c = probs.shape[1]
    counts = np.bincount(index, minlength=n_images).astype(np.int64)
    values = np.asarray(probs, dtype=np.float64)
    if presence == "noisy_or":
        # log(1 - p) is -inf for a certain box: exp then gives presence exactly 1, no warning.
        log_absent = np.log1p(-values, out=np.full_like(values, -np.inf), where=values < 1.0)
        acc = np.zeros((n_images, c), np.float64)
        np.add.at(acc, index, log_absent)
        found: FloatArray = -np.expm1(acc)
    elif presence == "max":
        found = np.zeros((n_images, c), np.float64)
        np.maximum.at(found, index, values)
    else:
        raise InputError(f"presence must be 'noisy_or' or 'max', got {presence!r}")
    box_h = _entropy_nats(values) / math.log(c) if c > 1 else np.zeros(values.shape[0])
    if reduce == "max":
        unc: FloatArray = np.zeros(n_images, np.float64)
        np.maximum.at(unc, index, box_h)
    elif reduce == "mean":
        sums = np.bincount(index, weights=box_h, minlength=n_images)
        unc = np.divide(sums, counts, out=np.zeros(n_images, np.float64), where=counts > 0).astype(
            np.float64
        )
    else:
        raise InputError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    unc[counts == 0] = empty_uncertainty
    return DetectionScores(presence=np.clip(found, 0.0, 1.0), uncertainty=unc, n_boxes=counts)
