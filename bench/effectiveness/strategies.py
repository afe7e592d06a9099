"""The strategies compared: each maps (fitted model, labelled mask, batch size) to pool rows.

Single-label scores come from :mod:`planner.core.acquisition`; for the detection set an
image's score is its most uncertain box's. ``planner`` and ``planner-nodiv`` call
:func:`planner.core.plan.plan_batch`, the function the daemon calls, with default options.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.effectiveness.datasets import Dataset
from bench.effectiveness.models import Fitted, make_estimator
from planner.core import acquisition
from planner.core.plan import PlanOptions, plan_batch
from planner.core.quotas import Quota
from planner.core.table import CountTable

Rows = npt.NDArray[np.intp]
Array = npt.NDArray[np.float64]


@dataclass
class Context:
    """What a strategy may look at for one batch."""

    data: Dataset
    fitted: Fitted | None
    labelled: npt.NDArray[np.bool_]
    batch_size: int
    rng: np.random.Generator
    planner_options: dict[str, Any] = field(default_factory=dict)
    """``PlanOptions`` fields overriding the defaults for the planner strategies."""


def _top(ctx: Context, score: Array) -> Rows:
    """The ``batch_size`` unlabelled rows of highest score, random order among ties."""
    open_rows = np.flatnonzero(~ctx.labelled)
    order = np.lexsort((ctx.rng.random(open_rows.size), -score[open_rows]))
    return open_rows[order[: ctx.batch_size]]


def _per_image(ctx: Context, box_score: Array) -> Array:
    boxes = ctx.data.boxes_pool
    assert boxes is not None
    out = np.zeros(ctx.data.y_pool.shape[0])
    np.maximum.at(out, boxes.image, box_score)
    return out


def _score(ctx: Context, fn: Callable[[Array], Array]) -> Array:
    """``fn`` over item probabilities (digits) or box probabilities max-reduced per image."""
    assert ctx.fitted is not None
    if ctx.fitted.pool_boxes is None:
        return fn(ctx.fitted.pool_items)
    return _per_image(ctx, fn(ctx.fitted.pool_boxes))


def random(ctx: Context) -> Rows:
    open_rows = np.flatnonzero(~ctx.labelled)
    return ctx.rng.choice(open_rows, min(ctx.batch_size, open_rows.size), replace=False)


def entropy(ctx: Context) -> Rows:
    return _top(ctx, _score(ctx, acquisition.entropy))


def margin(ctx: Context) -> Rows:
    return _top(ctx, _score(ctx, acquisition.margin))


def bald(ctx: Context) -> Rows:
    assert ctx.fitted is not None
    score = acquisition.bald(ctx.fitted.mc())
    if ctx.fitted.pool_boxes is not None:
        score = _per_image(ctx, score)
    return _top(ctx, score)


def skactiveml_uncertainty(ctx: Context) -> Rows:
    """scikit-activeml's ``UncertaintySampling`` (entropy) on the same estimator.

    For the detection set it ranks boxes (the model's unit) and takes their images in order.
    """
    from skactiveml.classifier import SklearnClassifier
    from skactiveml.pool import UncertaintySampling

    data, c = ctx.data, len(ctx.data.classes)
    boxes = data.boxes_pool
    if boxes is None:
        x, owner = data.x_pool, np.arange(data.y_pool.shape[0])
        y = np.where(ctx.labelled, data.y_pool.argmax(axis=1), np.nan)
    else:
        x, owner = boxes.features, boxes.image
        y = np.where(ctx.labelled[boxes.image], boxes.label, np.nan)
    candidates = np.flatnonzero(np.isnan(y))
    clf = SklearnClassifier(make_estimator(), classes=np.arange(c), random_state=0)
    qs = UncertaintySampling(method="entropy", random_state=int(ctx.rng.integers(2**31)))
    want = min(candidates.size, ctx.batch_size * (1 if boxes is None else 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence on tiny labelled sets
        clf.fit(x, y)
        rows = qs.query(x, y, clf=clf, fit_clf=False, candidates=candidates, batch_size=want)
    picked = list(dict.fromkeys(int(owner[r]) for r in rows))[: ctx.batch_size]
    return np.asarray(picked, np.intp)


def class_balancer(ctx: Context) -> Rows:
    """small-text's ClassBalancer idea over entropy: slots go to predicted classes in
    proportion to how far their labelled count is below the largest one."""
    assert ctx.fitted is not None
    data = ctx.data
    labelled_counts = data.y_pool[ctx.labelled].sum(axis=0).astype(float)
    probs = ctx.fitted.pool_items
    if data.multilabel:
        # an image counts for the least-labelled class it is predicted to contain
        predicted = (probs >= 0.5) | (probs == probs.max(axis=1, keepdims=True))
        ranks = np.where(predicted, labelled_counts[None, :], np.inf)
        item_class = ranks.argmin(axis=1)
    else:
        item_class = probs.argmax(axis=1)
    score = _score(ctx, acquisition.entropy)
    gap = labelled_counts.max() - labelled_counts + 1.0
    open_mask = ~ctx.labelled
    available = np.bincount(item_class[open_mask], minlength=gap.size)
    gap[available == 0] = 0.0
    slots = np.floor(ctx.batch_size * gap / gap.sum()).astype(int)
    for cls in np.argsort(-gap)[: ctx.batch_size - slots.sum()]:
        slots[cls] += 1
    picked: list[int] = []
    for cls in range(gap.size):
        rows = np.flatnonzero(open_mask & (item_class == cls))
        picked += rows[np.argsort(-score[rows], kind="stable")[: slots[cls]]].tolist()
    rest = np.setdiff1d(np.flatnonzero(open_mask), picked)
    fill = rest[np.argsort(-score[rest], kind="stable")][: ctx.batch_size - len(picked)]
    return np.asarray(picked + fill.tolist(), np.intp)


def count_table(data: Dataset, labelled: npt.NDArray[np.bool_]) -> CountTable:
    """The labelled counts as the daemon would hold them (one split)."""
    images = data.y_pool[labelled].sum(axis=0).astype(np.int64)[None, :]
    instances = images.copy()
    if data.boxes_pool is not None:
        inside = labelled[data.boxes_pool.image]
        counts = np.bincount(data.boxes_pool.label[inside], minlength=len(data.classes))
        instances = counts.astype(np.int64)[None, :]
    return CountTable(
        classes=data.classes,
        splits=("train",),
        images=images,
        instances=instances,
        pixels=np.zeros_like(images),
    )


def _labels(data: Dataset, labelled: npt.NDArray[np.bool_]) -> dict[int, list[str]]:
    """The labelled images' classes, as the daemon passes them from its task table."""
    return {
        int(row): [data.classes[j] for j in np.flatnonzero(data.y_pool[row])]
        for row in np.flatnonzero(labelled)
    }


def _planner(ctx: Context, *, diversity: bool) -> Rows:
    assert ctx.fitted is not None
    data = ctx.data
    quotas = [Quota(name, target=t) for name, t in data.quotas.items()]
    n = data.y_pool.shape[0]
    options = PlanOptions(
        batch_size=ctx.batch_size,
        diversity=diversity,
        multilabel=data.multilabel,
        **ctx.planner_options,
    )
    plan = plan_batch(
        count_table(data, ctx.labelled),
        quotas,
        np.arange(n),
        ctx.fitted.pool_items,
        options=options,
        rng=ctx.rng,
        embeddings=data.embeddings,
        labels=_labels(data, ctx.labelled),
    )
    return np.asarray(plan.batch.ids, np.intp)


def planner(ctx: Context) -> Rows:
    return _planner(ctx, diversity=True)


def planner_nodiv(ctx: Context) -> Rows:
    return _planner(ctx, diversity=False)


STRATEGIES: dict[str, Callable[[Context], Rows]] = {
    "random": random,
    "entropy": entropy,
    "margin": margin,
    "bald": bald,
    "skactiveml-us": skactiveml_uncertainty,
    "class-balancer": class_balancer,
    "planner": planner,
    "planner-nodiv": planner_nodiv,
}
PLANNER = ("planner", "planner-nodiv")
