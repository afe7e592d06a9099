"""The model every strategy shares: class-balanced logistic regression, refit from scratch.

For the digits it classifies images; for the shapes it classifies boxes, and
:func:`planner.core.acquisition.aggregate_boxes` turns box probabilities into image presence
(noisy-or) and image uncertainty (the most uncertain box). Classes not yet labelled get
probability 0. BALD's posterior samples come from a bootstrap ensemble of the same model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.effectiveness.datasets import Dataset
from planner.core.acquisition import aggregate_boxes

ENSEMBLE = 4
Array = npt.NDArray[np.float64]


def make_estimator() -> Any:
    """The estimator, identical for every strategy (skactiveml wraps the same one)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, class_weight="balanced", max_iter=300)


def _fit(x: Array, y: npt.NDArray[np.int64], c: int) -> Any:
    seen = np.unique(y)
    if seen.size < 2:
        return int(seen[0])
    with warnings.catch_warnings():
        # lbfgs may stop at max_iter on a tiny labelled set; the fit is still usable
        warnings.simplefilter("ignore")
        return make_estimator().fit(x, y)


def _proba(model: Any, x: Array, c: int) -> Array:
    out = np.zeros((x.shape[0], c))
    if isinstance(model, int):
        out[:, model] = 1.0
        return out
    out[:, model.classes_] = model.predict_proba(x)
    return out


@dataclass
class Fitted:
    """A model fitted on the labelled items, with the pool's scores computed lazily."""

    data: Dataset
    labelled: npt.NDArray[np.intp]
    seed: int
    model: Any
    pool_items: Array
    """``(n, c)`` item probabilities (digits) or image presence (shapes)."""
    pool_boxes: Array | None
    _mc: Array | None = field(default=None, repr=False)

    def box_training(self, rows: npt.NDArray[np.intp]) -> tuple[Array, npt.NDArray[np.int64]]:
        """Training rows for the items ``rows``: the items, or all boxes of those images."""
        if self.data.boxes_pool is None:
            return self.data.x_pool[rows], self.data.y_pool[rows].argmax(axis=1)
        boxes = self.data.boxes_pool
        mask = np.isin(boxes.image, rows)
        return boxes.features[mask], boxes.label[mask]

    def mc(self) -> Array:
        """``(T, n, c)`` item probabilities (digits) or ``(T, boxes, c)`` (shapes)."""
        if self._mc is None:
            rng = np.random.default_rng([self.seed, self.labelled.size])
            c = len(self.data.classes)
            x_eval = (
                self.data.x_pool if self.data.boxes_pool is None else self.data.boxes_pool.features
            )
            samples = []
            for _ in range(ENSEMBLE):
                rows = rng.choice(self.labelled, self.labelled.size, replace=True)
                x, y = self.box_training(rows)
                samples.append(_proba(_fit(x, y, c), x_eval, c))
            self._mc = np.stack(samples)
        return self._mc

    def test_scores(self) -> Array:
        """``(m, c)`` test probabilities (digits) or test image presence (shapes)."""
        c = len(self.data.classes)
        boxes = self.data.boxes_test
        if boxes is None:
            return _proba(self.model, self.data.x_test, c)
        probs = _proba(self.model, boxes.features, c)
        n = self.data.y_test.shape[0]
        return aggregate_boxes(probs, boxes.image, n_images=n).presence


def fit(data: Dataset, labelled: npt.NDArray[np.intp], *, seed: int) -> Fitted:
    """Fit on the ``labelled`` pool rows and score the pool."""
    c = len(data.classes)
    base = Fitted(data, labelled, seed, None, np.zeros(0), None)
    x, y = base.box_training(labelled)
    model = _fit(x, y, c)
    if data.boxes_pool is None:
        return Fitted(data, labelled, seed, model, _proba(model, data.x_pool, c), None)
    boxes = _proba(model, data.boxes_pool.features, c)
    presence = aggregate_boxes(boxes, data.boxes_pool.image, n_images=data.y_pool.shape[0])
    return Fitted(data, labelled, seed, model, presence.presence, boxes)
