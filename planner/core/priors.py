"""Loss-side class priors: focal-loss alpha per class and log-priors for logit adjustment.

Focal loss (Lin et al. 2017) weights a term by ``alpha``; what ``alpha`` means depends on the loss:

* ``softmax`` (multi-class focal loss, ``-alpha_y (1 - p_y)**gamma log p_y``): ``alpha`` is a
  per-class weight on the true class, like ``weight=`` in ``cross_entropy``. We give it summing
  to 1 (the common convention); multiply by C for mean 1. Under a weighted-mean reduction the
  scale cancels.
* ``sigmoid`` (torchvision ``sigmoid_focal_loss``: positives times ``alpha``, negatives times
  ``1 - alpha``; one scalar, default 0.25): a per-class ``alpha`` broadcast over the class axis
  must lie strictly inside (0, 1), else a class's positives or negatives stop counting. We map a
  class weight ``w`` to ``alpha = w / (1 + w)``: the odds ``alpha / (1 - alpha)`` equal ``w``, so
  weight 1 gives the neutral 0.5 and the order of the classes is kept.

Logit adjustment (Menon et al., ICLR 2021) needs the priors ``pi_c``. A training job adds
``tau * log pi_y`` to the logits inside the loss (logit-adjusted loss), or subtracts it from the
logits at prediction time (post-hoc). Priors are smoothed with a pseudo-count ``a`` added to every
class, ``pi_c = (n_c + a) / (N + C a)`` (default ``a = 0.5``, the Jeffreys prior), so an empty class
gets a small finite prior rather than ``log 0``; smoothing every class, not just the empty ones,
keeps the priors continuous as a class gets its first example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from planner.core.weights import ClassWeights, Floats, check_classes, check_counts
from planner.errors import InputError

FocalLoss = Literal["softmax", "sigmoid"]
FOCAL_LOSSES: tuple[FocalLoss, ...] = ("softmax", "sigmoid")


@dataclass(frozen=True, slots=True)
class FocalAlpha:
    """Per-class ``alpha: (C,)`` for a focal loss of kind ``loss``, from ``weights``."""

    classes: tuple[str, ...]
    alpha: Floats
    loss: FocalLoss
    weights: ClassWeights

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{class: {"weight": w_c, "alpha": alpha_c}}`` for JSON."""
        return {
            name: {"weight": float(w), "alpha": float(a)}
            for name, w, a in zip(self.classes, self.weights.weights, self.alpha, strict=True)
        }


@dataclass(frozen=True, slots=True)
class LogPriors:
    """Smoothed priors ``(C,)`` and their logs for logit adjustment."""

    classes: tuple[str, ...]
    counts: Floats
    priors: Floats
    log_priors: Floats
    tau: float
    pseudo_count: float
    empty: tuple[str, ...]

    @property
    def adjustment(self) -> Floats:
        """``tau * log pi``: add to logits in the loss, or subtract from them post hoc."""
        out: Floats = self.tau * self.log_priors
        return out

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{class: {"count", "prior", "log_prior", "adjustment"}}`` for JSON."""
        return {
            name: {
                "count": float(n),
                "prior": float(p),
                "log_prior": float(lp),
                "adjustment": float(adj),
            }
            for name, n, p, lp, adj in zip(
                self.classes,
                self.counts,
                self.priors,
                self.log_priors,
                self.adjustment,
                strict=True,
            )
        }


def focal_alpha(weights: ClassWeights, *, loss: FocalLoss = "softmax") -> FocalAlpha:
    """Focal-loss ``alpha: (C,)`` from class weights (see the module docstring per ``loss``)."""
    if loss not in FOCAL_LOSSES:
        raise InputError(f"focal loss kind {loss!r} is not one of {FOCAL_LOSSES}")
    w = weights.weights
    alpha: Floats
    if loss == "softmax":
        alpha = w / w.sum()
    else:
        # w / (1 + w) written to stay below 1 in floating point for very large w.
        with np.errstate(over="ignore"):
            alpha = 1.0 / (1.0 + 1.0 / w)
        alpha = np.clip(alpha, np.finfo(np.float64).tiny, np.nextafter(1.0, 0.0))
    return FocalAlpha(classes=weights.classes, alpha=alpha, loss=loss, weights=weights)


def log_priors(
    classes: Sequence[str],
    counts: npt.ArrayLike,
    *,
    tau: float = 1.0,
    pseudo_count: float = 0.5,
) -> LogPriors:
    """Priors ``pi = (n + a) / (N + C a)`` for ``counts: (C,)``, their logs and ``tau``."""
    names = check_classes(classes)
    n = check_counts(names, counts)
    if not (np.isfinite(tau) and tau >= 0.0):
        raise InputError(f"tau must be a finite number >= 0, got {tau}; Menon et al. use 1")
    if not (np.isfinite(pseudo_count) and pseudo_count >= 0.0):
        raise InputError(f"pseudo_count must be a finite number >= 0, got {pseudo_count}")
    empty = tuple(name for name, count in zip(names, n, strict=True) if count == 0)
    if empty and pseudo_count == 0.0:
        raise InputError(
            f"classes {empty} have no examples, so their prior would be 0 and log 0 = -inf; "
            "pass pseudo_count > 0 (0.5 is the default)"
        )
    smoothed = n + pseudo_count
    priors: Floats = smoothed / smoothed.sum()
    with np.errstate(divide="ignore"):
        logs: Floats = np.log(priors)
    if not np.isfinite(logs).all():
        raise InputError(
            f"counts {n.tolist()} span too many orders of magnitude for finite log-priors; "
            "raise pseudo_count"
        )
    return LogPriors(
        classes=names,
        counts=n,
        priors=priors,
        log_priors=logs,
        tau=float(tau),
        pseudo_count=float(pseudo_count),
        empty=empty,
    )
