"""Long-tailed image sets for the simulation: digits at a chosen imbalance, generated shapes.

Both give a *pool* (what the annotator may be asked to label) and a held-out *test* set with
every class well represented, so macro-F1 and rare-class PR-AUC measure the rare classes.

* **digits**: scikit-learn's bundled 8x8 digits (1,797 images, no download). 30% of each class
  is held out for test. Pool items come in groups of five, an original and its four one-pixel
  shifts (near-duplicates, as frames of a video); each head class keeps ``HEAD`` items and
  each of the three rare classes (drawn per seed) ``HEAD / ratio``, so the pool's imbalance
  is exactly the ratio.
  Quotas ask for half of each rare class's pool items.
* **shapes**: a generated detection set: 32x32 images with 1-3 objects drawn in noise, classes
  disc, square, plus (common) and ring, cross (rare: each in about 1.5% of images, and each a
  look-alike of a common class). A box's features are its crop resampled to 8x8 plus its size;
  boxes are given (an oracle proposal stage), so the model is a box classifier whose per-box
  probabilities :func:`planner.core.acquisition.aggregate_boxes` turns into image presence.
  Quotas ask for 15 images of each rare class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HEAD = 600
RARE_PER_SEED = 3
QUOTA_SHARE = 0.5
SHAPES = ("disc", "square", "plus", "ring", "cross")
SHAPE_RARE = ("ring", "cross")
SHAPE_QUOTA = 15

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Boxes:
    """Boxes of a set of images: features ``(b, d)``, class ``(b,)``, image index ``(b,)``."""

    features: Array
    label: IntArray
    image: IntArray


@dataclass(frozen=True)
class Dataset:
    """A pool and a test set. ``y_*: (n, c)`` bool presence (one-hot for single-label sets)."""

    name: str
    classes: tuple[str, ...]
    quotas: dict[str, int]
    multilabel: bool
    x_pool: Array
    """``(n, d)`` item features (single-label) or image embeddings (detection)."""
    y_pool: npt.NDArray[np.bool_]
    x_test: Array
    y_test: npt.NDArray[np.bool_]
    embeddings: Array
    """``(n, d)`` what the diversity guard measures distances in."""
    boxes_pool: Boxes | None = None
    boxes_test: Boxes | None = None

    @property
    def rare(self) -> tuple[int, ...]:
        return tuple(self.classes.index(c) for c in self.quotas)


def _one_hot(y: IntArray, c: int) -> npt.NDArray[np.bool_]:
    out = np.zeros((y.size, c), bool)
    out[np.arange(y.size), y] = True
    return out


def _shifts(images: Array) -> list[Array]:
    """The images and their one-pixel shifts up, down, left, right (zero fill)."""
    out = [images]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        moved = np.roll(images, step, axis=axis)
        edge = 0 if step == 1 else -1
        if axis == 1:
            moved[:, edge, :] = 0
        else:
            moved[:, :, edge] = 0
        out.append(moved)
    return out


def digits(ratio: float, *, seed: int) -> Dataset:
    """Digits with three rare classes at ``ratio``:1 imbalance; see the module docstring."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    data = load_digits()
    x = data.images.astype(np.float64) / 16.0
    y = data.target.astype(np.int64)
    rare = sorted(int(c) for c in rng.choice(10, RARE_PER_SEED, replace=False))
    n_rare = max(2, round(HEAD / ratio))
    test_idx, pool_x, pool_y = [], [], []
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_test = round(0.3 * rows.size)
        test_idx.append(rows[:n_test])
        keep = HEAD if c not in rare else n_rare
        originals = rows[n_test : n_test + math.ceil(keep / 5)]
        # every original comes with its four shifts, in head and rare classes alike, so
        # near-duplicate structure does not tell the classes apart
        variants = np.stack(_shifts(x[originals]), axis=1).reshape(-1, 64)
        pool_x.append(variants[:keep])
        pool_y.append(np.full(keep, c, np.int64))
    px, py = np.concatenate(pool_x), np.concatenate(pool_y)
    shuffle = rng.permutation(py.size)
    px, py = px[shuffle], py[shuffle]
    test = np.concatenate(test_idx)
    classes = tuple(str(c) for c in range(10))
    quotas = {str(c): math.ceil(QUOTA_SHARE * n_rare) for c in rare}
    return Dataset(
        name=f"digits {ratio:g}:1",
        classes=classes,
        quotas=quotas,
        multilabel=False,
        x_pool=px,
        y_pool=_one_hot(py, 10),
        x_test=x[test].reshape(-1, 64),
        y_test=_one_hot(y[test], 10),
        embeddings=px,
    )


# --- generated detection set ----------------------------------------------------------------


def _mask(kind: str, size: int) -> npt.NDArray[np.bool_]:
    r = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size] - r
    dist = np.hypot(yy, xx)
    width = max(1.0, size / 6)
    if kind == "disc":
        return dist <= r
    if kind == "ring":
        return (dist <= r) & (dist >= r - 1.6 * width)
    if kind == "square":
        return np.ones((size, size), bool)
    if kind == "plus":
        return (np.abs(yy) <= width) | (np.abs(xx) <= width)
    return (np.abs(yy - xx) <= 1.2 * width) | (np.abs(yy + xx) <= 1.2 * width)


def _crop_features(image: Array, top: int, left: int, size: int) -> Array:
    crop = image[top : top + size, left : left + size]
    grid = np.linspace(0, size - 1, 8).round().astype(int)
    small = crop[np.ix_(grid, grid)]
    return np.concatenate([small.ravel(), [size / 12.0]])


def _shape_images(n: int, rng: np.random.Generator, rare_rate: float) -> tuple[Boxes, IntArray]:
    """``n`` images; returns their boxes and ``(n, c)`` presence counts (instances)."""
    feats: list[Array] = []
    labels: list[int] = []
    owner: list[int] = []
    counts = np.zeros((n, len(SHAPES)), np.int64)
    for i in range(n):
        image = rng.normal(0.0, 0.35, (32, 32))
        k = int(rng.integers(1, 4))
        kinds = rng.integers(0, 3, size=k)
        for name in SHAPE_RARE:
            if rng.random() < rare_rate:
                kinds[rng.integers(0, k)] = SHAPES.index(name)
        for slot, kind in enumerate(kinds):
            size = int(rng.integers(6, 13))
            # one object per 16x16 quadrant (of four), so boxes never overlap
            qy, qx = divmod(slot, 2)
            top = 16 * qy + int(rng.integers(0, 17 - size))
            left = 16 * qx + int(rng.integers(0, 17 - size))
            mask = _mask(SHAPES[int(kind)], size)
            image[top : top + size, left : left + size] += mask * rng.uniform(0.6, 1.2)
            feats.append(_crop_features(image, top, left, size))
            labels.append(int(kind))
            owner.append(i)
            counts[i, int(kind)] += 1
    boxes = Boxes(np.asarray(feats), np.asarray(labels, np.int64), np.asarray(owner, np.int64))
    return boxes, counts


def shapes(
    *, seed: int, n_pool: int = 3000, n_test: int = 800, quota: int = SHAPE_QUOTA
) -> Dataset:
    """The generated detection set; see the module docstring."""
    rng = np.random.default_rng(seed)
    pool_boxes, pool_counts = _shape_images(n_pool, rng, rare_rate=0.015)
    # the test set is enriched in rare objects so their recall and PR-AUC are measurable
    test_boxes, test_counts = _shape_images(n_test, rng, rare_rate=0.15)
    embed = np.zeros((n_pool, pool_boxes.features.shape[1]))
    np.add.at(embed, pool_boxes.image, pool_boxes.features)
    return Dataset(
        name="shapes (detection)",
        classes=SHAPES,
        quotas=dict.fromkeys(SHAPE_RARE, quota),
        multilabel=True,
        x_pool=embed,
        y_pool=pool_counts > 0,
        x_test=np.zeros((n_test, 1)),
        y_test=test_counts > 0,
        embeddings=embed,
        boxes_pool=pool_boxes,
        boxes_test=test_boxes,
    )
