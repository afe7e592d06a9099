"""Seed 001's worked examples 2 (detection) and 3 (segmentation), planned with the core."""

from __future__ import annotations

import numpy as np
import pytest

from planner.core.hierarchy import merge_columns, merge_rare_children
from planner.core.metrics import imbalance_ratio, normalised_entropy
from planner.core.repeat_factors import Threshold, epoch_indices, repeat_factors
from planner.core.sampling import repeat_sampling_plan
from planner.core.weights import class_image_pixels, class_weights

# --- example 2: detection, Person 120k instances, Wheelchair 800 ----------------------------

IMAGES = 20_000
CLASSES = ("Person", "Wheelchair")


def detection_set() -> np.ndarray:
    """``(images, 2)`` instance counts: 120,000 persons, 800 wheelchairs in 640 images."""
    rng = np.random.default_rng(1)
    counts = np.zeros((IMAGES, 2), np.int64)
    counts[:, 0] = rng.multinomial(120_000, np.full(IMAGES, 1 / IMAGES))
    with_chair = rng.choice(IMAGES, size=640, replace=False)
    counts[with_chair, 1] = 1
    counts[with_chair[:160], 1] = 2  # 480 images with one, 160 with two: 800
    counts[with_chair, 0] = np.maximum(counts[with_chair, 0], 1)  # someone sits in it
    return counts


def test_example_2_counts_are_the_seeds() -> None:
    counts = detection_set()
    assert counts[:, 1].sum() == 800
    assert abs(int(counts[:, 0].sum()) - 120_000) <= 100


def test_example_2_lvis_default_threshold_repeats_nothing_here() -> None:
    # Wheelchair is in 3.2% of the images, far above LVIS's 0.1%: why "median" exists
    factors = repeat_factors(CLASSES, detection_set())
    np.testing.assert_allclose(factors.class_factors, [1.0, 1.0])


@pytest.mark.parametrize(("threshold", "capped"), [("median", False), (1.0, True)])
def test_example_2_wheelchair_images_are_seen_more_often_within_the_cap(
    threshold: Threshold, *, capped: bool
) -> None:
    counts = detection_set()
    has_chair = counts[:, 1] > 0
    factors = repeat_factors(CLASSES, counts, threshold=threshold, max_repeat=5.0)
    r_chair = factors.class_factors[1]
    assert factors.class_factors[0] == pytest.approx(1.0, abs=0.02)
    if capped:  # sqrt(1 / 0.032) = 5.6 > 5
        assert r_chair == 5.0
        assert factors.capped == ("Wheelchair",)
    else:  # sqrt(median / f) = sqrt(((1 - e) + 0.032) / 2 / 0.032) = 4.0
        assert 3.5 < r_chair < 4.5
        assert factors.capped == ()
    assert factors.image_factors.max() <= 5.0
    np.testing.assert_allclose(factors.image_factors[has_chair], r_chair)

    # the per-image sampling weights a training job feeds to WeightedRandomSampler
    plan = repeat_sampling_plan(factors)
    probs = plan.probabilities
    assert probs.max() / probs[probs > 0].min() <= 5.0 + 1e-12  # the cap, in probabilities
    drawn = plan.draw(None, np.random.default_rng(0))
    seen = np.bincount(drawn, minlength=IMAGES)
    rate = seen[has_chair].mean() / seen[~has_chair].mean()
    assert rate == pytest.approx(r_chair / factors.image_factors[~has_chair].mean(), rel=0.1)

    # the per-class distribution of instances one epoch shows the model moves toward balance
    before = counts.sum(axis=0)
    after_sampler = counts[drawn].sum(axis=0)
    after_repeats = counts[epoch_indices(factors.image_factors, np.random.default_rng(0))].sum(0)
    for after in (after_sampler, after_repeats):
        ratio_before, ratio_after = imbalance_ratio(before), imbalance_ratio(after)
        assert ratio_before is not None
        assert ratio_after is not None
        assert ratio_after < ratio_before / 3
        even_before, even_after = normalised_entropy(before), normalised_entropy(after)
        assert even_before is not None
        assert even_after is not None
        assert even_after > even_before
        # and by no more than the cap: Wheelchair's share at most 5x its share before
        assert after[1] / after.sum() <= 5.0 * before[1] / before.sum()
    np.testing.assert_allclose(after_repeats, factors.instances_after, rtol=0.05)


# --- example 3: segmentation, road pixels dominate, lane markings are thin ------------------

SEG = ("road", "sidewalk", "lane_solid", "lane_dashed", "lane_double_yellow")
TILE = 256 * 256
HIERARCHY = {"lane_solid": "lane", "lane_dashed": "lane", "lane_double_yellow": "lane"}


def segmentation_set() -> tuple[np.ndarray, np.ndarray]:
    """Per tile ``(tiles, 5)`` pixel areas and instance counts of 2,000 road-scene tiles."""
    rng = np.random.default_rng(3)
    tiles = 2_000
    pixels = np.zeros((tiles, len(SEG)), np.int64)
    instances = np.zeros((tiles, len(SEG)), np.int64)
    pixels[:, 0] = rng.integers(int(0.5 * TILE), int(0.7 * TILE), tiles)  # road everywhere
    instances[:, 0] = 1
    side = rng.random(tiles) < 0.6
    pixels[side, 1] = rng.integers(int(0.1 * TILE), int(0.2 * TILE), side.sum())
    instances[side, 1] = 1
    for col, share, width in ((2, 0.5, 0.02), (3, 0.3, 0.01), (4, 0.01, 0.015)):
        has = rng.random(tiles) < share  # double yellow: in 1% of the tiles, about 20 of them
        instances[has, col] = rng.integers(1, 3, has.sum())
        pixels[has, col] = (instances[has, col] * width * TILE).astype(np.int64)
    return pixels, instances


def test_example_3_median_frequency_weights_lane_well_above_road() -> None:
    pixels, _ = segmentation_set()
    image_pixels = class_image_pixels(pixels, np.full(len(pixels), TILE))
    weights = class_weights(
        SEG, pixels.sum(axis=0), scheme="median_frequency", image_pixels=image_pixels
    ).mapping()
    assert weights["road"] < 1.0  # the most frequent class is scaled down
    for lane in ("lane_solid", "lane_dashed", "lane_double_yellow"):
        assert weights[lane] > 10 * weights["road"]


def test_example_3_a_sparse_lane_subtype_folds_into_lane_and_lane_stays_heavy() -> None:
    pixels, instances = segmentation_set()
    counts = dict(zip(SEG, instances.sum(axis=0).tolist(), strict=True))
    assert counts["lane_double_yellow"] < 100 <= min(counts["lane_solid"], counts["lane_dashed"])
    merge = merge_rare_children(counts, HIERARCHY, min_count=100)
    assert merge.merged == (("lane_double_yellow", "lane"),)
    assert merge.mapping["lane_double_yellow"] == "lane"
    assert merge.mapping["lane_solid"] == "lane_solid"  # the well-filled subtypes stay
    assert merge.classes == ("road", "sidewalk", "lane_solid", "lane_dashed", "lane")

    # per tile, merged: the folded subtype's pixels now belong to "lane"
    merged = merge_columns(pixels, SEG, merge.mapping, merge.classes)
    assert merged[:, 4].sum() == pixels[:, 4].sum()
    assert merged.sum() == pixels.sum()
    image_pixels = class_image_pixels(merged, np.full(len(merged), TILE))
    weights = class_weights(
        merge.classes, merged.sum(axis=0), scheme="median_frequency", image_pixels=image_pixels
    ).mapping()
    assert weights["lane"] > 10 * weights["road"]

    # "tile so tiles containing lane pixels appear more often": repeat factors over tiles
    factors = repeat_factors(merge.classes, merged > 0, threshold="median")
    lane_tiles = (merged[:, 2:] > 0).any(axis=1)
    assert factors.image_factors[lane_tiles].mean() > factors.image_factors[~lane_tiles].mean()
    assert factors.class_factors[merge.classes.index("lane")] == 5.0  # rarest, at the cap
