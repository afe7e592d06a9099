"""Per-image repeat factors for multi-label and detection data (LVIS repeat-factor sampling).

``f_c`` is the fraction of images that contain class ``c``. Class ``c`` gets
``r_c = max(1, sqrt(t / f_c))`` (Gupta et al., LVIS 2019; detectron2 uses ``t = 0.001``), capped at
``max_repeat`` (our addition, default 5; ``None`` is plain LVIS). LVIS's ``t`` was tuned for 1,203
classes; with a handful of classes a rare one is seldom in under 0.1% of the images (seed 001's
Wheelchair, 800 of 120k instances, is in a few percent) and nothing is repeated. ``t = "median"``
takes the median ``f_c`` of the classes found: every class rarer than the median class is repeated
``sqrt(f_median / f_c)`` times, whatever the number of classes. An image gets the largest ``r_c``
over its classes (``aggregate="max"``, LVIS) or their mean (``"mean"``, DataEval's default); an
image with no class gets 1, or 0 with ``keep_empty_images=False`` (left out of the epoch). Every
factor is therefore in ``[1, max_repeat]`` apart from left-out images.

An epoch realises the factors by stochastic rounding: ``floor(r)`` copies of an image plus one more
with probability ``frac(r)``, so image ``I`` appears ``r(I)`` times in expectation. The result
reports what the factors do per class, in expectation per epoch: images that contain ``c`` and
instances of ``c``, before (every image once) and after.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from planner.core.weights import Floats, check_classes
from planner.errors import InputError

Ints = npt.NDArray[np.int64]
Aggregate = Literal["max", "mean"]
Threshold = float | Literal["median"]
AGGREGATES: tuple[Aggregate, ...] = ("max", "mean")
LVIS_THRESHOLD = 0.001
DEFAULT_MAX_REPEAT = 5.0
_BLOCK_CELLS = 1 << 22
"""Rows are processed in blocks of about this many cells so a huge (N, C) input needs no copy."""


@dataclass(frozen=True, slots=True)
class RepeatFactors:
    """Image factors ``(N,)``, class factors ``(C,)`` and the per-class effect per epoch."""

    classes: tuple[str, ...]
    image_factors: Floats
    class_factors: Floats
    image_fraction: Floats
    images_before: Ints
    images_after: Floats
    instances_before: Floats
    instances_after: Floats
    threshold: float
    max_repeat: float | None
    aggregate: Aggregate
    empty: tuple[str, ...]
    """Classes found in no image (factor 1, unused)."""
    capped: tuple[str, ...]
    """Classes whose LVIS factor exceeded ``max_repeat``."""
    empty_images: int
    """Images that contain no class."""

    @property
    def epoch_before(self) -> int:
        return int(self.image_factors.size)

    @property
    def epoch_after(self) -> float:
        """Expected images per epoch: the sum of the image factors."""
        return float(self.image_factors.sum())

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{class: {image_fraction, class_factor, images/instances before and after}}``."""
        return {
            name: {
                "image_fraction": float(self.image_fraction[c]),
                "class_factor": float(self.class_factors[c]),
                "images_before": int(self.images_before[c]),
                "images_after": float(self.images_after[c]),
                "instances_before": float(self.instances_before[c]),
                "instances_after": float(self.instances_after[c]),
            }
            for c, name in enumerate(self.classes)
        }

    def summary(self) -> dict[str, float | str | None]:
        """Dataset-level figures: images, expected epoch length, options."""
        return {
            "images": self.epoch_before,
            "epoch_after": self.epoch_after,
            "empty_images": self.empty_images,
            "threshold": self.threshold,
            "max_repeat": self.max_repeat,
            "aggregate": self.aggregate,
        }


def repeat_factors(
    classes: Sequence[str],
    presence: npt.ArrayLike,
    *,
    threshold: Threshold = LVIS_THRESHOLD,
    aggregate: Aggregate = "max",
    max_repeat: float | None = DEFAULT_MAX_REPEAT,
    keep_empty_images: bool = True,
) -> RepeatFactors:
    """Repeat factors for ``presence: (N, C)``, bools or per-image instance counts of each class.

    ``threshold``: LVIS's ``t`` (a number > 0) or ``"median"`` (see the module docstring); the
    result holds the ``t`` used.
    """
    names = check_classes(classes)
    table = _check_presence(names, presence)
    if threshold != "median" and (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not (np.isfinite(threshold) and threshold > 0.0)
    ):
        raise InputError(
            f"threshold must be a finite number > 0 or 'median', got {threshold!r}; LVIS uses 0.001"
        )
    if aggregate not in AGGREGATES:
        raise InputError(f"aggregate {aggregate!r} is not one of {AGGREGATES}")
    if max_repeat is not None and not (np.isfinite(max_repeat) and max_repeat >= 1.0):
        raise InputError(f"max_repeat must be a finite number >= 1 or None, got {max_repeat}")

    num_images, num_classes = table.shape
    images_before = np.zeros(num_classes, np.int64)
    instances_before = np.zeros(num_classes, np.float64)
    for block in _blocks(table):
        images_before += (block > 0).sum(axis=0)
        instances_before += block.sum(axis=0, dtype=np.float64)
    fraction: Floats = images_before / num_images
    lvis = np.ones(num_classes, np.float64)
    seen = images_before > 0
    if threshold == "median":
        t = float(np.median(fraction[seen])) if seen.any() else LVIS_THRESHOLD
    else:
        t = float(threshold)
    lvis[seen] = np.maximum(1.0, np.sqrt(t / fraction[seen]))
    class_factors = lvis if max_repeat is None else np.minimum(lvis, max_repeat)

    empty_value = 1.0 if keep_empty_images else 0.0
    image_factors = np.empty(num_images, np.float64)
    images_after = np.zeros(num_classes, np.float64)
    instances_after = np.zeros(num_classes, np.float64)
    start = empty_images = 0
    for block in _blocks(table):
        mask = block > 0
        has_class = mask.any(axis=1)
        if aggregate == "max":
            combined = np.where(mask, class_factors, 0.0).max(axis=1)
        else:
            combined = (mask @ class_factors) / np.maximum(mask.sum(axis=1), 1)
        factors = np.where(has_class, combined, empty_value)
        image_factors[start : start + len(block)] = factors
        images_after += factors @ mask
        instances_after += factors @ block.astype(np.float64)
        start += len(block)
        empty_images += int(np.count_nonzero(~has_class))

    return RepeatFactors(
        classes=names,
        image_factors=image_factors,
        class_factors=class_factors,
        image_fraction=fraction,
        images_before=images_before,
        images_after=images_after,
        instances_before=instances_before,
        instances_after=instances_after,
        threshold=t,
        max_repeat=None if max_repeat is None else float(max_repeat),
        aggregate=aggregate,
        empty=tuple(name for name, s in zip(names, seen, strict=True) if not s),
        capped=tuple(name for name, a, b in zip(names, lvis, class_factors, strict=True) if a > b),
        empty_images=empty_images,
    )


def stochastic_round(factors: npt.ArrayLike, rng: np.random.Generator) -> Ints:
    """Copies ``(N,)`` per image for one epoch: ``floor(r)``, plus one with probability frac(r).

    Draws exactly ``N`` uniforms from ``rng`` whatever the factors, so a seed fixes the epoch.
    """
    r = _check_factors(factors)
    whole = np.floor(r)
    extra = rng.random(r.size) < (r - whole)
    copies: Ints = whole.astype(np.int64) + extra
    return copies


def epoch_indices(
    factors: npt.ArrayLike, rng: np.random.Generator, *, shuffle: bool = True
) -> Ints:
    """Image indices for one epoch, each repeated per ``stochastic_round``; shuffled by ``rng``."""
    copies = stochastic_round(factors, rng)
    indices: Ints = np.repeat(np.arange(copies.size, dtype=np.int64), copies)
    if shuffle:
        rng.shuffle(indices)
    return indices


def _check_presence(names: tuple[str, ...], presence: npt.ArrayLike) -> npt.NDArray[Any]:
    table = np.asarray(presence)
    if table.ndim != 2 or table.shape[1] != len(names) or table.shape[0] == 0:
        raise InputError(
            f"presence has shape {table.shape}, expected (images, {len(names)}) with at least "
            f"one image: a row per image, a column per class {names}"
        )
    if table.dtype.kind not in "biuf":
        raise InputError(f"presence must be bools or instance counts, got dtype {table.dtype}")
    if table.dtype.kind == "f" and not np.isfinite(table).all():
        raise InputError("presence contains NaN or inf; pass bools or instance counts")
    if table.dtype.kind in "if" and (table < 0).any():
        raise InputError("presence contains negative values; pass bools or instance counts")
    return table


def _check_factors(factors: npt.ArrayLike) -> Floats:
    r = np.asarray(factors, dtype=np.float64)
    if r.ndim != 1:
        raise InputError(f"factors must be one per image, shape (N,), got {r.shape}")
    if not np.isfinite(r).all() or (r < 0).any():
        raise InputError("factors must be finite and non-negative")
    return r


def _blocks(table: npt.NDArray[Any]) -> Iterator[npt.NDArray[Any]]:
    rows = max(1, _BLOCK_CELLS // table.shape[1])
    for start in range(0, table.shape[0], rows):
        yield table[start : start + rows]
