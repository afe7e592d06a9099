"""Per-class loss weights from class counts: five schemes, normalisation, clipping, empty classes.

==================  ==========================  =================  ===============================
scheme              raw weight w_c              default normalise  matches
==================  ==========================  =================  ===============================
balanced            N / (C * n_c)               none               sklearn compute_class_weight
inverse_sqrt        n_c ** -1/2                 mean
effective_number    (1 - b) / (1 - b ** n_c)    mean (sum C)       Cui et al., CVPR 2019
median_frequency    median_k f_k / f_c          none               Eigen & Fergus, ICCV 2015
yolo                1 / n_c                     mean (sum C)       YOLOv5 labels_to_class_weights*nc
==================  ==========================  =================  ===============================

``N`` is the sum of the counts, ``C`` the number of classes. For median frequency
``f_c = n_c / image_pixels_c`` (pixels of ``c`` over the pixels of the images that contain ``c``)
when ``image_pixels`` is given, else ``n_c / N``; the median runs over the non-empty classes.

Normalisations: ``none`` keeps the formula's own scale; ``mean`` divides by the mean (sum = C);
``sum`` makes the weights sum to 1; ``expected`` makes ``sum_c w_c * n_c / N = 1``, so the mean
weight over training examples is 1 and the loss scale (and learning rate) stay as they were.

Order: raw formula, empty classes filled, normalised, clipped. Clipping comes last so its bounds
are in the units the loss sees; the normalisation may then hold only approximately. ``max_ratio``
caps every weight at ``max_ratio * min(w)``; ``min_weight`` / ``max_weight`` then bound each one.

Empty classes (``n_c = 0``) never get inf or NaN. Rule ``max`` (the default) gives them the largest
weight among the non-empty classes: they are as rare as classes get, and the weight only matters
once examples arrive. Rule ``one`` evaluates the formula with ``n_c = 1`` (YOLOv5's rule, the
``yolo`` default). Results name the empty classes. With no examples at all every weight is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack

import numpy as np
import numpy.typing as npt

from planner.errors import InputError

WeightScheme = Literal["balanced", "inverse_sqrt", "effective_number", "median_frequency", "yolo"]
SCHEMES: tuple[WeightScheme, ...] = (
    "balanced",
    "inverse_sqrt",
    "effective_number",
    "median_frequency",
    "yolo",
)
Normalisation = Literal["none", "mean", "sum", "expected"]
NORMALISATIONS: tuple[Normalisation, ...] = ("none", "mean", "sum", "expected")
EmptyRule = Literal["max", "one"]
EMPTY_RULES: tuple[EmptyRule, ...] = ("max", "one")
DEFAULT_NORMALISATION: dict[WeightScheme, Normalisation] = {
    "balanced": "none",
    "inverse_sqrt": "mean",
    "effective_number": "mean",
    "median_frequency": "none",
    "yolo": "mean",
}

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ClassWeights:
    """Weights ``(C,)`` for the classes, with the counts and options that produced them."""

    classes: tuple[str, ...]
    counts: Floats
    weights: Floats
    scheme: WeightScheme
    normalisation: Normalisation
    empty_rule: EmptyRule
    empty: tuple[str, ...]
    """Classes with a zero count, weighted by ``empty_rule``."""
    clipped: tuple[str, ...]
    """Classes whose weight clipping changed."""

    def mapping(self) -> dict[str, float]:
        """``{class: weight}``."""
        return {name: float(w) for name, w in zip(self.classes, self.weights, strict=True)}

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{class: {"count": n_c, "weight": w_c}}`` for JSON."""
        return {
            name: {"count": _plain(n), "weight": float(w)}
            for name, n, w in zip(self.classes, self.counts, self.weights, strict=True)
        }


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """Class names as a tuple; rejects an empty list, non-strings and repeats."""
    names = tuple(classes)
    if not names:
        raise InputError("no classes given: pass at least one class name")
    if not all(isinstance(name, str) and name for name in names):
        raise InputError(f"class names must be non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise InputError(f"class names repeat in {names}; pass each class once")
    return names


def check_counts(names: tuple[str, ...], counts: npt.ArrayLike, what: str = "counts") -> Floats:
    """``counts`` as a ``(C,)`` float64 array: finite, non-negative, one per class."""
    try:
        array = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be numbers, one per class: {exc}") from exc
    if array.shape != (len(names),):
        raise InputError(
            f"{what} has shape {array.shape}, expected ({len(names)},): one per class {names}"
        )
    if not np.isfinite(array).all():
        raise InputError(f"{what} contain NaN or inf: {array.tolist()}; pass finite counts")
    if (array < 0).any():
        raise InputError(f"{what} must be non-negative, got {array.tolist()}")
    return array


def class_weights(
    classes: Sequence[str],
    counts: npt.ArrayLike,
    *,
    scheme: WeightScheme = "balanced",
    beta: float = 0.999,
    image_pixels: npt.ArrayLike | None = None,
    normalise: Normalisation | None = None,
    empty: EmptyRule | None = None,
    max_ratio: float | None = None,
    min_weight: float | None = None,
    max_weight: float | None = None,
) -> ClassWeights:
    """Weights for ``counts: (C,)`` by ``scheme`` (see the module docstring for the pipeline).

    ``beta`` is used by ``effective_number`` only and ``image_pixels: (C,)`` by
    ``median_frequency`` only, so one option set can be passed to every scheme.
    ``normalise`` and ``empty`` default to the scheme's own convention.
    """
    names = check_classes(classes)
    n = check_counts(names, counts)
    if scheme not in SCHEMES:
        raise InputError(f"weight scheme {scheme!r} is not one of {SCHEMES}")
    norm = DEFAULT_NORMALISATION[scheme] if normalise is None else normalise
    if norm not in NORMALISATIONS:
        raise InputError(f"normalisation {norm!r} is not one of {NORMALISATIONS}")
    rule: EmptyRule = ("one" if scheme == "yolo" else "max") if empty is None else empty
    if rule not in EMPTY_RULES:
        raise InputError(f"empty-class rule {rule!r} is not one of {EMPTY_RULES}")
    if not (np.isfinite(beta) and 0.0 <= beta < 1.0):
        raise InputError(f"beta must be in [0, 1), got {beta}; Cui et al. use 0.9 to 0.9999")
    pixels = None if image_pixels is None else check_counts(names, image_pixels, "image_pixels")
    _check_clip(max_ratio, min_weight, max_weight)

    present = n > 0
    if present.any():
        raw = _raw_weights(scheme, n, present, rule=rule, beta=beta, pixels=pixels)
        if rule == "max":
            raw[~present] = raw[present].max()
    else:
        raw = np.ones_like(n)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        normalised = _normalise(raw, n, norm)
        w = _clip(normalised, max_ratio, min_weight, max_weight)
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise InputError(
            f"counts {n.tolist()} give weights outside floating-point range with scheme "
            f"{scheme!r}; pass counts in natural units (images, instances or pixels)"
        )
    return ClassWeights(
        classes=names,
        counts=n,
        weights=w,
        scheme=scheme,
        normalisation=norm,
        empty_rule=rule,
        empty=tuple(name for name, p in zip(names, present, strict=True) if not p),
        clipped=tuple(name for name, a, b in zip(names, normalised, w, strict=True) if a != b),
    )


def class_image_pixels(pixels: npt.ArrayLike, image_sizes: npt.ArrayLike) -> Floats:
    """``image_pixels: (C,)`` for median frequency: the pixels of the images containing each class.

    ``pixels: (N, C)`` the pixel area of each class in each image (or tile), ``image_sizes: (N,)``
    each image's pixel count.
    """
    area = np.asarray(pixels)
    sizes = np.asarray(image_sizes, dtype=np.float64)
    if area.ndim != 2 or sizes.shape != (area.shape[0],):
        raise InputError(
            f"pixels {area.shape} and image_sizes {sizes.shape} must be (N, C) and (N,): a row "
            "and a size per image"
        )
    if area.dtype.kind not in "biuf" or (area < 0).any() or not np.isfinite(sizes).all():
        raise InputError("pixels must be non-negative counts and image_sizes finite numbers")
    if (area > sizes[:, None]).any():
        raise InputError("some class covers more pixels than its image has; check image_sizes")
    out: Floats = sizes @ (area > 0)
    return out


class WeightOptions(TypedDict, total=False):
    """The options of ``class_weights`` other than the scheme, shared by ``compare_schemes``."""

    beta: float
    image_pixels: npt.ArrayLike | None
    normalise: Normalisation | None
    empty: EmptyRule | None
    max_ratio: float | None
    min_weight: float | None
    max_weight: float | None


def compare_schemes(
    classes: Sequence[str], counts: npt.ArrayLike, **options: Unpack[WeightOptions]
) -> dict[WeightScheme, ClassWeights]:
    """Every scheme in ``SCHEMES`` with the same options, for side-by-side reports."""
    return {scheme: class_weights(classes, counts, scheme=scheme, **options) for scheme in SCHEMES}


def _raw_weights(
    scheme: WeightScheme,
    n: Floats,
    present: npt.NDArray[np.bool_],
    *,
    rule: EmptyRule,
    beta: float,
    pixels: Floats | None,
) -> Floats:
    """The formula on every class; empty classes use ``n_c = 1`` (overwritten under ``max``)."""
    basis = np.where(present, n, 1.0)
    total = float(n.sum())
    w: Floats
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        if scheme == "balanced":
            w = total / (n.size * basis)
        elif scheme == "inverse_sqrt":
            w = basis**-0.5
        elif scheme == "effective_number":
            # -expm1(n log b) = 1 - b**n without cancellation when b is close to 1.
            w = np.ones_like(n) if beta == 0.0 else (1.0 - beta) / -np.expm1(basis * np.log(beta))
        elif scheme == "median_frequency":
            w = _median_frequency(n, basis, present, rule, pixels)
        else:
            w = 1.0 / basis
    return w


def _median_frequency(
    n: Floats,
    basis: Floats,
    present: npt.NDArray[np.bool_],
    rule: EmptyRule,
    pixels: Floats | None,
) -> Floats:
    if pixels is None:
        denominator = np.full_like(n, n.sum())
    else:
        short = present & (pixels < n)
        if short.any():
            raise InputError(
                f"image_pixels {pixels.tolist()} is below the class pixels {n.tolist()} for some "
                "class: image_pixels_c must be the total pixels of the images containing c"
            )
        # Under rule "one" an empty class is imagined in the largest image set seen.
        denominator = np.where(pixels > 0, pixels, pixels.max()) if rule == "one" else pixels
        denominator = np.where(present | (denominator > 0), denominator, 1.0)
    freq = basis / denominator
    median = float(np.median(freq[present]))
    w: Floats = median / freq
    return w


def _normalise(raw: Floats, n: Floats, norm: Normalisation) -> Floats:
    out: Floats
    if norm == "mean":
        out = raw / raw.mean()
    elif norm == "sum":
        out = raw / raw.sum()
    elif norm == "expected" and n.sum() > 0:
        out = raw * (n.sum() / float(raw @ n))
    elif norm == "expected":
        out = raw / raw.mean()  # no examples: nothing to keep the scale of, fall back to mean 1
    else:
        out = raw.copy()
    return out


def _check_clip(
    max_ratio: float | None, min_weight: float | None, max_weight: float | None
) -> None:
    if max_ratio is not None and not (np.isfinite(max_ratio) and max_ratio >= 1.0):
        raise InputError(f"max_ratio must be a finite number >= 1, got {max_ratio}")
    for label, bound in (("min_weight", min_weight), ("max_weight", max_weight)):
        if bound is not None and not (np.isfinite(bound) and bound > 0.0):
            raise InputError(f"{label} must be a finite number > 0, got {bound}")
    if min_weight is not None and max_weight is not None and min_weight > max_weight:
        raise InputError(f"min_weight {min_weight} exceeds max_weight {max_weight}")


def _clip(
    w: Floats, max_ratio: float | None, min_weight: float | None, max_weight: float | None
) -> Floats:
    out = w.copy()
    if max_ratio is not None:
        out = np.minimum(out, max_ratio * out.min())
    if min_weight is not None or max_weight is not None:
        out = np.clip(out, min_weight, max_weight)
    return out


def _plain(value: float) -> float:
    """An integral float as ``int`` so counts print as counts."""
    number = float(value)
    return int(number) if number.is_integer() else number
