"""Per-image sampling plans a training job draws from: image ``i`` with probability ``w_i / W``.

Weights come from a single-label plan (``w_i = multiplier[y_i]``, so an epoch of ``plan.total``
draws gives each class its effective count in expectation) or from repeat factors
(``w_i = r(I)``). Draws are with replacement: a multiplier above 1 cannot be realised otherwise.

``torch.utils.data.WeightedRandomSampler`` draws with ``torch.multinomial``, which refuses more than
2**24 categories. A plan therefore splits the images into buckets of contiguous indices, at most
``max_categories`` buckets of at most ``max_categories`` images: draw a bucket with probability
equal to its share of the weight, then an image inside it in proportion to its weight. The
marginal probability of image ``i`` is ``(W_b / W) * (w_i / W_b) = w_i / W``, exactly the one-level
distribution. With up to 2**24 images there is one bucket and nothing changes.

Training side::

    if plan.num_buckets == 1:
        sampler = WeightedRandomSampler(torch.from_numpy(plan.probabilities),
                                        plan.num_samples, replacement=True)
    else:  # a Sampler whose __iter__ yields plan.draw(plan.num_samples, rng), rng seeded per
           # epoch; or torch.multinomial over plan.bucket_probabilities, then over each drawn
           # bucket's plan.within_bucket(b), offset by plan.bucket_starts[b].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from planner.core.repeat_factors import RepeatFactors
from planner.core.resampling import Ints, ResamplingPlan
from planner.core.weights import Floats
from planner.errors import InputError

MAX_CATEGORIES = 2**24
"""``torch.multinomial``'s limit on the number of categories."""
_SORTED_SEARCH_FROM = 1 << 16


@dataclass(frozen=True, slots=True)
class SamplingPlan:
    """Image probabilities ``(N,)`` summing to 1, grouped into buckets ``(B,)`` for two levels."""

    probabilities: Floats
    num_samples: int
    """Draws per epoch."""
    bucket_starts: Ints
    """``(B + 1,)``: bucket ``b`` holds images ``bucket_starts[b]`` to ``bucket_starts[b+1]-1``."""
    bucket_probabilities: Floats
    max_categories: int

    @property
    def num_images(self) -> int:
        return int(self.probabilities.size)

    @property
    def num_included(self) -> int:
        """Images with a positive probability."""
        return int(np.count_nonzero(self.probabilities))

    @property
    def num_buckets(self) -> int:
        return int(self.bucket_probabilities.size)

    def within_bucket(self, bucket: int) -> Floats:
        """Probabilities of the images of ``bucket`` given that bucket (sum 1, or 0 if unused)."""
        if not 0 <= bucket < self.num_buckets:
            raise InputError(f"bucket {bucket} is not in 0..{self.num_buckets - 1}")
        start, stop = self.bucket_starts[bucket], self.bucket_starts[bucket + 1]
        mass = self.bucket_probabilities[bucket]
        inside: Floats = (
            self.probabilities[start:stop] / mass if mass > 0 else np.zeros(stop - start)
        )
        return inside

    def marginal(self) -> Floats:
        """``(N,)`` probability that one two-level draw returns each image."""
        sizes = np.diff(self.bucket_starts)
        mass = np.repeat(self.bucket_probabilities, sizes)
        with np.errstate(divide="ignore", invalid="ignore"):
            out: Floats = np.where(mass > 0, mass * (self.probabilities / mass), 0.0)
        return out

    def draw(self, num_samples: int | None, rng: np.random.Generator) -> Ints:
        """``(num_samples,)`` image indices drawn two-level with replacement (default: one epoch).

        Uses ``rng.random`` twice, ``num_samples`` values each: bucket, then image in the bucket.
        """
        count = self.num_samples if num_samples is None else _check_count(num_samples)
        buckets = _inverse_cdf(self.bucket_probabilities, rng.random(count))
        inner = rng.random(count)
        if self.num_buckets == 1:
            return _inverse_cdf(self.probabilities, inner)
        out = np.empty(count, np.int64)
        order = np.argsort(buckets, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(buckets, minlength=self.num_buckets))))
        for bucket in np.flatnonzero(np.diff(bounds)):
            chosen = order[bounds[bucket] : bounds[bucket + 1]]
            start, stop = self.bucket_starts[bucket], self.bucket_starts[bucket + 1]
            out[chosen] = start + _inverse_cdf(self.probabilities[start:stop], inner[chosen])
        return out

    def summary(self) -> dict[str, int]:
        """Images, included images, buckets, draws per epoch, category limit."""
        return {
            "images": self.num_images,
            "included": self.num_included,
            "buckets": self.num_buckets,
            "num_samples": self.num_samples,
            "max_categories": self.max_categories,
        }


def sampling_plan(
    weights: npt.ArrayLike,
    *,
    num_samples: int | None = None,
    max_categories: int = MAX_CATEGORIES,
) -> SamplingPlan:
    """A plan drawing image ``i`` with probability ``weights[i] / sum(weights)``, ``weights: (N,)``.

    ``num_samples`` defaults to the rounded sum of the weights: the planned epoch length when the
    weights are multipliers or repeat factors (pass it explicitly for normalised weights).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise InputError(f"weights must be one per image, shape (N,) with N >= 1, got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputError("weights must be finite and non-negative; 0 leaves an image out")
    total = float(w.sum())
    if total <= 0.0:
        raise InputError("every weight is 0: no image can be drawn")
    count = max(1, round(total)) if num_samples is None else _check_count(num_samples)
    if (
        isinstance(max_categories, bool)
        or not isinstance(max_categories, int)
        or max_categories < 2
    ):
        raise InputError(f"max_categories must be an integer >= 2, got {max_categories!r}")
    num_buckets = -(-w.size // max_categories)
    if num_buckets > max_categories:
        raise InputError(
            f"{w.size} images need {num_buckets} buckets of {max_categories}, more than "
            f"{max_categories}: two levels cannot hold them"
        )
    size = -(-w.size // num_buckets)
    starts = np.append(np.arange(0, w.size, size, dtype=np.int64), np.int64(w.size))
    probabilities = w / total
    if ((probabilities == 0) & (w > 0)).any():
        raise InputError(
            "weights span too many orders of magnitude: some positive weight rounds to "
            "probability 0; rescale or drop the tiny weights"
        )
    return SamplingPlan(
        probabilities=probabilities,
        num_samples=count,
        bucket_starts=starts,
        bucket_probabilities=np.add.reduceat(probabilities, starts[:-1]),
        max_categories=max_categories,
    )


def label_sampling_plan(
    labels: npt.ArrayLike, plan: ResamplingPlan, *, max_categories: int = MAX_CATEGORIES
) -> SamplingPlan:
    """Sampling for single-label ``labels: (N,)`` (class indices or names) realising ``plan``.

    The labels must have exactly the plan's class counts, else the multipliers would not give the
    planned effective counts.
    """
    y = _label_indices(labels, plan.classes)
    found = np.bincount(y, minlength=len(plan.classes))
    if not np.array_equal(found, plan.counts):
        have = dict(zip(plan.classes, found.tolist(), strict=True))
        planned = dict(zip(plan.classes, plan.counts.tolist(), strict=True))
        raise InputError(
            f"labels count {have} per class but the plan was made for {planned}; "
            "make the plan from these labels"
        )
    return sampling_plan(plan.multipliers[y], num_samples=plan.total, max_categories=max_categories)


def repeat_sampling_plan(
    factors: RepeatFactors, *, max_categories: int = MAX_CATEGORIES
) -> SamplingPlan:
    """Sampling with weight ``r(I)`` per image: ``round(sum r)`` draws per epoch by default."""
    return sampling_plan(factors.image_factors, max_categories=max_categories)


def _inverse_cdf(probabilities: Floats, uniforms: Floats) -> Ints:
    """Indices ``i`` with ``cum[i-1] <= u * total < cum[i]``: zero-probability entries never win."""
    cumulative = np.cumsum(probabilities)
    targets = uniforms * cumulative[-1]
    if cumulative.size > _SORTED_SEARCH_FROM:
        # Searching a big table in sorted order keeps memory access sequential: several
        # times faster for millions of images, same answers.
        order = np.argsort(targets)
        picked = np.empty(targets.size, np.int64)
        picked[order] = np.searchsorted(cumulative, targets[order], side="right")
    else:
        picked = np.searchsorted(cumulative, targets, side="right")
    # u * total can round up to total itself; fall back to the last entry that has mass.
    last = int(np.flatnonzero(probabilities)[-1])
    out: Ints = np.minimum(picked, last).astype(np.int64)
    return out


def _label_indices(labels: npt.ArrayLike, classes: tuple[str, ...]) -> Ints:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise InputError(f"labels must be one per image, shape (N,) with N >= 1, got {y.shape}")
    if y.dtype.kind in "UO":
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted({str(v) for v in y.tolist()} - index.keys())
        if unknown:
            raise InputError(f"labels {unknown} are not among the plan's classes {classes}")
        return np.array([index[str(v)] for v in y.tolist()], dtype=np.int64)
    if y.dtype.kind not in "iu":
        raise InputError(f"labels must be class indices or names, got dtype {y.dtype}")
    if (y < 0).any() or (y >= len(classes)).any():
        raise InputError(f"label indices must be in 0..{len(classes) - 1}")
    out: Ints = y.astype(np.int64)
    return out


def _check_count(num_samples: int) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise InputError(f"num_samples must be a whole number, got {num_samples!r}")
    if num_samples < 1:
        raise InputError(f"num_samples must be at least 1, got {num_samples}")
    return int(num_samples)
