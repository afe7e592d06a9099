"""What the planner emits for a training job: a pure function of the core's results.

``plan_training`` runs the core on the training split (every weight scheme, focal alpha,
log-priors, the resampling plan and per-image sampling weights); ``build_artifact`` turns that
plan, the split assignment, the counts and the reason for emitting into an ``Artifact``: a
JSON-able dict plus the ``(N,)`` per-image weights, ready for ``write_artifact``.

Class weights, priors and the resampling plan come from the training split, the counts a loss
and a sampler actually see: weights and priors in the plan's ``count_kind`` (images, instances
or pixels), the resampling plan and repeat factors in images. Single-label images get
``w_i = multiplier[y_i]`` (the resampling plan); multi-label and detection images get their
repeat factor ``r(I)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from planner.core.finite import finite_json
from planner.core.priors import FocalAlpha, FocalLoss, LogPriors, focal_alpha, log_priors
from planner.core.repeat_factors import Threshold, repeat_factors
from planner.core.resampling import DEFAULT_MAX_OVERSAMPLE, ResamplingPlan, resampling_plan
from planner.core.sampling import MAX_CATEGORIES, SamplingPlan, label_sampling_plan
from planner.core.sampling import repeat_sampling_plan as _repeat_plan
from planner.core.splits import training_split
from planner.core.stop_policy import StopDecision
from planner.core.table import UNKNOWN, CountKind, CountTable
from planner.core.weights import SCHEMES, ClassWeights, WeightOptions, WeightScheme
from planner.core.weights import compare_schemes as _compare
from planner.errors import InputError

SCHEMA_VERSION = 1
"""Bumped whenever a reader of the previous version would misread an artifact."""
ItemId = int | str
Trigger = Literal["stop_rule", "on_demand"]


@dataclass(frozen=True, slots=True)
class EmitReason:
    """Why the artifact was emitted: a stop rule fired (with its decision) or someone asked."""

    trigger: Trigger
    detail: str
    decision: StopDecision | None = None

    def __post_init__(self) -> None:
        if self.trigger not in ("stop_rule", "on_demand"):
            raise InputError(f"trigger must be 'stop_rule' or 'on_demand', got {self.trigger!r}")
        if self.trigger == "stop_rule" and self.decision is None:
            raise InputError("a stop_rule emit needs the StopDecision that fired")

    def as_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "detail": self.detail,
            "stop": None if self.decision is None else self.decision.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class TrainImages:
    """The training images in the order a job indexes them: ``labels: (N,)`` class names for
    single-label data, or ``presence: (N, C)`` (bool or instance counts) for multi-label and
    detection data, columns in the artifact's class order."""

    ids: tuple[ItemId, ...]
    labels: tuple[str, ...] | None = None
    presence: npt.NDArray[Any] | None = None

    def __post_init__(self) -> None:
        if (self.labels is None) == (self.presence is None):
            raise InputError("give the training images either labels or presence, not both")
        size = len(self.labels) if self.labels is not None else len(np.asarray(self.presence))
        if size != len(self.ids):
            raise InputError(f"{len(self.ids)} image ids but {size} label rows; one per image")
        if len(set(self.ids)) != len(self.ids):
            raise InputError("image ids repeat; pass each training image once")


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """The core's results for one training split."""

    classes: tuple[str, ...]
    train_split: str
    count_kind: CountKind
    schemes: Mapping[WeightScheme, ClassWeights]
    chosen: WeightScheme
    focal: FocalAlpha
    priors: LogPriors
    resampling: ResamplingPlan | None
    """The single-label plan; None for multi-label data (repeat factors instead)."""
    sampling: SamplingPlan
    image_ids: tuple[ItemId, ...]
    image_weights: npt.NDArray[np.float64]
    sampling_kind: Literal["resampling_plan", "repeat_factors"]
    repeat_threshold: float | None = None
    """The repeat factors' ``t`` (the median class frequency when so asked); None for
    single-label data."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """What gets written: ``data`` (JSON) and the per-image weights ``(N,)``."""

    data: Mapping[str, Any]
    image_weights: npt.NDArray[np.float64]


def plan_training(
    table: CountTable,
    images: TrainImages,
    *,
    train_split: str | None = None,
    count_kind: CountKind = "images",
    scheme: WeightScheme = "balanced",
    weight_options: WeightOptions | None = None,
    focal_loss: FocalLoss = "softmax",
    tau: float = 1.0,
    max_oversample: float = DEFAULT_MAX_OVERSAMPLE,
    repeat_threshold: Threshold = "median",
    max_categories: int = MAX_CATEGORIES,
) -> TrainingPlan:
    """Runs the core on the ``train_split`` row of ``table`` (by default ``training_split`` of
    its splits) and on ``images``."""
    if scheme not in SCHEMES:
        raise InputError(f"weight scheme {scheme!r} is not one of {SCHEMES}")
    split = training_split(table.splits) if train_split is None else train_split
    known = table.without(UNKNOWN)
    counts = known.split(split, count_kind)
    schemes = _compare(known.classes, counts, **(weight_options or {}))
    resampling, threshold_used = None, None
    if images.labels is not None:
        outside = sorted(set(images.labels) - set(known.classes))
        if outside:
            raise InputError(
                f"training labels {outside} are not among the classes {known.classes}; "
                "drop those images or fix their labels"
            )
        index = {name: i for i, name in enumerate(known.classes)}
        y = np.array([index[label] for label in images.labels], dtype=np.int64)
        found = np.bincount(y, minlength=len(known.classes))
        resampling = resampling_plan(known.classes, found, max_oversample=max_oversample)
        sampling = label_sampling_plan(y, resampling, max_categories=max_categories)
        weights = resampling.multipliers[y]
    elif images.presence is not None:
        # LVIS's t = 0.001 was tuned for 1,203 classes: with a handful it repeats nothing
        factors = repeat_factors(
            known.classes, images.presence, threshold=repeat_threshold, max_repeat=max_oversample
        )
        threshold_used = factors.threshold
        sampling = _repeat_plan(factors, max_categories=max_categories)
        weights = factors.image_factors
    else:  # unreachable: TrainImages requires labels or presence
        raise InputError("the training images have neither labels nor presence")
    return TrainingPlan(
        classes=known.classes,
        train_split=split,
        count_kind=count_kind,
        schemes=schemes,
        chosen=scheme,
        focal=focal_alpha(schemes[scheme], loss=focal_loss),
        priors=log_priors(known.classes, counts, tau=tau),
        resampling=resampling,
        sampling=sampling,
        image_ids=images.ids,
        image_weights=np.asarray(weights, dtype=np.float64),
        sampling_kind="resampling_plan" if resampling is not None else "repeat_factors",
        repeat_threshold=threshold_used,
    )


def build_artifact(
    plan: TrainingPlan,
    *,
    table: CountTable,
    splits: Mapping[ItemId, str],
    reason: EmitReason,
    created_at: datetime,
) -> Artifact:
    """The JSON-able artifact for ``plan``, the split assignment, the counts and the reason."""
    if created_at.tzinfo is None:
        raise InputError(f"created_at {created_at} is naive; give it a timezone, e.g. UTC")
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created_at": created_at.isoformat(),
        "reason": reason.as_dict(),
        "classes": list(plan.classes),
        "train_split": plan.train_split,
        "count_kind": plan.count_kind,
        "counts": table.as_dict(),
        "class_weights": {
            "chosen": plan.chosen,
            "schemes": {
                name: {
                    "chosen": name == plan.chosen,
                    "normalisation": w.normalisation,
                    "empty": list(w.empty),
                    "clipped": list(w.clipped),
                    "weights": [float(v) for v in w.weights],
                }
                for name, w in plan.schemes.items()
            },
        },
        "focal_alpha": {"loss": plan.focal.loss, "alpha": [float(a) for a in plan.focal.alpha]},
        "log_priors": {
            "tau": plan.priors.tau,
            "pseudo_count": plan.priors.pseudo_count,
            "priors": [float(p) for p in plan.priors.priors],
            "log_priors": [float(p) for p in plan.priors.log_priors],
        },
        "resampling": None
        if plan.resampling is None
        else {**plan.resampling.summary(), "classes": plan.resampling.as_dict()},
        "sampling": {
            "kind": plan.sampling_kind,
            **({} if plan.repeat_threshold is None else {"threshold": plan.repeat_threshold}),
            **plan.sampling.summary(),
            "image_ids": list(plan.image_ids),
        },
        "splits": {str(item): split for item, split in splits.items()},
    }
    return Artifact(data=finite_json(data), image_weights=plan.image_weights.copy())
