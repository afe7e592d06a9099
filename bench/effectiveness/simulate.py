"""One active-learning run: a strategy picks batches, a simulated annotator reveals the truth.

Every strategy of a (dataset, seed) starts from the same random initial labelled set, uses
the same model refit every ``retrain_every`` batches, the same batch size and the same
label cap. A run stops once every quota is met and the largest evaluation budget is reached,
or at the cap. ``random`` needs no model, so it runs on to the end of the pool (its labels
needed are then exact) and the model is fitted only at the evaluation budgets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.effectiveness.datasets import Dataset
from bench.effectiveness.models import Fitted, fit
from bench.effectiveness.strategies import STRATEGIES, Context

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Settings:
    batch_size: int = 20
    initial: int = 20
    cap: int = 1000
    budgets: tuple[int, ...] = (100, 200, 400)
    retrain_every: int = 1
    curve_every: int = 20
    """Labels between two points of the macro-F1 learning curve."""
    planner_options: tuple[tuple[str, Any], ...] = ()
    """``PlanOptions`` fields the planner strategies override (``--planner-options``)."""


@dataclass
class Run:
    """What one run measured; ``labels_needed`` is None when the cap came first."""

    strategy: str
    seed: int
    labels_needed: int | None
    quota_curve: list[tuple[int, float]] = field(default_factory=list)
    """``(labels, share of the total quota met)`` after every batch."""
    f1_curve: list[tuple[int, float]] = field(default_factory=list)
    at_budget: dict[int, dict[str, Any]] = field(default_factory=dict)
    yields: list[float] = field(default_factory=list)
    """Per batch until the quotas are met: share of picks holding a quota class."""
    select_seconds: list[float] = field(default_factory=list)


def evaluate(data: Dataset, fitted: Fitted) -> dict[str, Any]:
    """Macro-F1, per-class recall and mean rare-class PR-AUC on the test set."""
    from sklearn.metrics import average_precision_score, f1_score, recall_score

    scores = fitted.test_scores()
    truth = data.y_test
    if data.multilabel:
        predicted = scores >= 0.5
        f1 = f1_score(truth, predicted, average="macro", zero_division=0)
        recall = recall_score(truth, predicted, average=None, zero_division=0)
    else:
        labels = np.arange(len(data.classes))
        y, pred = truth.argmax(axis=1), scores.argmax(axis=1)
        f1 = f1_score(y, pred, labels=labels, average="macro", zero_division=0)
        recall = recall_score(y, pred, labels=labels, average=None, zero_division=0)
    pr_auc = [average_precision_score(truth[:, c], scores[:, c]) for c in data.rare]
    return {
        "macro_f1": float(f1),
        "recall": [float(r) for r in recall],
        "rare_pr_auc": float(np.mean(pr_auc)),
    }


def _quota_share(data: Dataset, labelled: npt.NDArray[np.bool_]) -> tuple[float, bool]:
    have = data.y_pool[labelled].sum(axis=0)
    got = sum(min(int(have[data.classes.index(c)]), t) for c, t in data.quotas.items())
    total = sum(data.quotas.values())
    return got / total, got == total


def run(data: Dataset, strategy: str, *, seed: int, settings: Settings) -> Run:
    """Simulate ``strategy`` on ``data``; see the module docstring."""
    select = STRATEGIES[strategy]
    n = data.y_pool.shape[0]
    labelled = np.zeros(n, bool)
    labelled[np.random.default_rng([seed, 1]).choice(n, settings.initial, replace=False)] = True
    rng = np.random.default_rng([seed, 2])
    result = Run(strategy, seed, None)
    rare = np.asarray(data.rare)
    uses_model = strategy != "random"
    fitted: Fitted | None = None
    batch = 0
    last_budget = max(settings.budgets)
    while True:
        count = int(labelled.sum())
        share, met = _quota_share(data, labelled)
        result.quota_curve.append((count, share))
        if met and result.labels_needed is None:
            result.labels_needed = count
        at_eval = count in settings.budgets or count % settings.curve_every == 0
        if (uses_model and batch % settings.retrain_every == 0) or (
            at_eval and count <= last_budget
        ):
            fitted = fit(data, np.flatnonzero(labelled), seed=seed)
        if at_eval and count <= last_budget and fitted is not None:
            metrics = evaluate(data, fitted)
            result.f1_curve.append((count, metrics["macro_f1"]))
            if count in settings.budgets:
                result.at_budget[count] = metrics
        limit = n if not uses_model else settings.cap
        if (met and count >= last_budget) or count >= limit or labelled.all():
            return result
        ctx = Context(
            data,
            fitted,
            labelled.copy(),
            settings.batch_size,
            rng,
            planner_options=dict(settings.planner_options),
        )
        start = time.perf_counter()
        rows = select(ctx)
        result.select_seconds.append(time.perf_counter() - start)
        if rows.size == 0 or labelled[rows].any() or np.unique(rows).size != rows.size:
            raise RuntimeError(f"{strategy} returned labelled, repeated or no rows")
        if not met:
            result.yields.append(float(data.y_pool[rows][:, rare].any(axis=1).mean()))
        labelled[rows] = True
        batch += 1
