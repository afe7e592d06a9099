"""Imbalance metrics: hand-computed values, scipy as the entropy oracle, invariants."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy  # type: ignore[import-untyped]

from planner.core.metrics import (
    as_counts,
    effective_classes,
    entropy,
    gini,
    imbalance_ratio,
    imbalance_report,
    long_tail,
    normalised_entropy,
    report_from_table,
    table_imbalance,
)
from planner.core.table import CountTable
from planner.errors import InputError

SEED_CLASSES = ("Car", "Pedestrian", "Bicycle", "Wheelchair")
SEED_COUNTS = [6000, 2500, 1200, 300]  # seed 001, exercise 1

counts_lists = st.lists(st.integers(0, 10**6), min_size=1, max_size=30)


def test_seed_counts_by_hand() -> None:
    report = imbalance_report(SEED_COUNTS, SEED_CLASSES)
    h = -(0.6 * math.log(0.6) + 0.25 * math.log(0.25) + 0.12 * math.log(0.12))
    h -= 0.03 * math.log(0.03)
    assert report.total == 10_000
    assert report.imbalance_ratio == 20.0
    assert report.entropy == pytest.approx(h, rel=1e-12)
    assert report.entropy == pytest.approx(1.0127, abs=1e-4)  # 0.3065 + 0.3466 + 0.2544 + 0.1052
    assert report.normalised_entropy == pytest.approx(0.7305, abs=1e-4)
    assert report.effective_classes == pytest.approx(2.7530, abs=1e-4)
    assert report.normalised_entropy == pytest.approx(h / math.log(4), rel=1e-12)
    assert report.effective_classes == pytest.approx(math.exp(h), rel=1e-12)
    # |differences| of the 6 pairs sum to 18400; G = 2 * 18400 / (2 * 4² * 2500)
    assert report.gini == pytest.approx(0.46, rel=1e-12)
    assert report.majority_class == "Car"
    assert report.minority_class == "Wheelchair"
    assert report.head_classes == ("Car", "Pedestrian")  # 60% + 25% reaches 80%
    assert report.tail_classes == ("Bicycle", "Wheelchair")
    assert report.tail_class_share == 0.5
    assert report.tail_sample_share == pytest.approx(0.15)
    assert report.empty_classes == ()
    assert not report.has_empty_classes
    assert report.rare_classes == ()


def test_entropy_matches_scipy() -> None:
    counts = [5, 0, 17, 3, 99, 1]
    assert entropy(counts) == pytest.approx(float(scipy_entropy(counts)), rel=1e-12)
    assert normalised_entropy(counts) == pytest.approx(
        float(scipy_entropy(counts, base=6)), rel=1e-12
    )


def test_gini_matches_pairwise_definition() -> None:
    counts = [7, 0, 3, 12, 12, 1]
    pairwise = sum(abs(a - b) for a, b in itertools.product(counts, repeat=2))
    expected = pairwise / (2 * len(counts) ** 2 * np.mean(counts))
    assert gini(counts) == pytest.approx(expected, rel=1e-12)


def test_one_class_is_perfectly_even() -> None:
    report = imbalance_report([42], ["only"])
    assert report.imbalance_ratio == 1.0
    assert report.normalised_entropy == 1.0
    assert report.effective_classes == 1.0
    assert report.entropy == 0.0
    assert report.gini == 0.0
    assert report.head_classes == ("only",)
    assert report.tail_class_share == 0.0
    assert report.tail_sample_share == 0.0


@pytest.mark.parametrize("c", [2, 3, 7, 1000])
def test_equal_counts(c: int) -> None:
    counts = [37] * c
    norm = normalised_entropy(counts)
    eff = effective_classes(counts)
    assert norm is not None
    assert eff is not None
    assert norm == pytest.approx(1.0, rel=1e-12)
    assert norm <= 1.0
    assert eff == pytest.approx(c, rel=1e-12)
    assert eff <= c
    assert imbalance_ratio(counts) == 1.0
    assert gini(counts) == pytest.approx(0.0, abs=1e-12)


def test_zero_count_classes_are_reported_not_infinite() -> None:
    report = imbalance_report([10, 0, 5, 0], ["a", "b", "c", "d"], min_count=6)
    assert report.imbalance_ratio == 2.0  # over the non-empty classes
    assert report.empty_classes == ("b", "d")
    assert report.has_empty_classes
    assert report.rare_classes == ("b", "d", "c")  # rarest first, ties in class order
    assert report.minority_class == "c"
    assert imbalance_ratio([10, 0, 5], empty="inf") == math.inf
    assert imbalance_ratio([10, 5], empty="inf") == 2.0
    # empty classes count in C: two of four classes used is not perfectly even
    assert report.normalised_entropy == pytest.approx(
        -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(4)
    )
    assert report.tail_classes[-2:] == ("b", "d")
    # one class holding everything: entropy 0, Gini at its maximum (C - 1) / C
    assert normalised_entropy([0, 9, 0]) == 0.0
    assert effective_classes([0, 9, 0]) == 1.0
    assert gini([0, 9, 0]) == pytest.approx(2 / 3)


def test_no_samples_at_all() -> None:
    report = imbalance_report([0, 0, 0], ["a", "b", "c"])
    assert report.total == 0
    assert report.imbalance_ratio is None
    assert imbalance_ratio([0, 0], empty="inf") is None
    assert report.entropy is None
    assert report.normalised_entropy is None
    assert report.effective_classes is None
    assert report.gini is None
    assert report.majority_class is None
    assert report.minority_class is None
    assert report.head_classes == ()
    assert report.tail_classes == ("a", "b", "c")
    assert report.tail_class_share == 1.0
    assert report.tail_sample_share is None
    assert report.empty_classes == ("a", "b", "c")
    json.dumps(report.as_dict(), allow_nan=False)


def test_long_tail_boundary_is_exact_for_decimal_masses() -> None:
    # 7 of 10 reaches 0.7 exactly; 7 >= 0.7 * 10 would be False in floating point
    head, tail = long_tail([7, 2, 1], head_mass=0.7)
    assert head.tolist() == [0]
    assert tail.tolist() == [1, 2]
    head, _ = long_tail([6000, 2500, 1200, 300], head_mass=0.85)
    assert head.tolist() == [0, 1]
    head, tail = long_tail([5, 0, 5], head_mass=1.0)
    assert head.tolist() == [0, 2]
    assert tail.tolist() == [1]


def test_long_tail_ties_follow_class_order() -> None:
    head, tail = long_tail([3, 5, 5, 3], head_mass=0.5)
    assert head.tolist() == [1, 2]  # 5/16 < 0.5, 10/16 >= 0.5
    assert tail.tolist() == [0, 3]
    head, _ = long_tail([5, 5], head_mass=0.5)
    assert head.tolist() == [0]


def test_as_counts_accepts_whole_floats_and_numpy_ints() -> None:
    assert as_counts(np.array([1.0, 2.0])).tolist() == [1, 2]
    assert as_counts(np.array([1, 2], np.uint16)).dtype == np.int64
    assert as_counts(np.array([[True, False]]), ndim=2).tolist() == [[1, 0]]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([1.0, math.nan], "NaN or infinity"),
        ([1.0, math.inf], "NaN or infinity"),
        ([3, -1], "negative"),
        ([1.5, 2.0], "whole numbers"),
        ([True, False], "integer counts"),
        (["a", "b"], "integer counts"),
        ([[1, 2]], "1-D"),
    ],
)
def test_bad_counts_are_refused(counts: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        imbalance_ratio(counts)  # type: ignore[arg-type]


def test_bad_report_arguments() -> None:
    with pytest.raises(InputError, match="3 counts but 2 class names"):
        imbalance_report([1, 2, 3], ["a", "b"])
    with pytest.raises(InputError, match="at least one class"):
        imbalance_report([], [])
    with pytest.raises(InputError, match="repeat"):
        imbalance_report([1, 2], ["a", "a"])
    with pytest.raises(InputError, match="non-empty strings"):
        imbalance_report([1, 2], ["a", ""])
    with pytest.raises(InputError, match="min_count"):
        imbalance_report([1, 2], ["a", "b"], min_count=-1)
    with pytest.raises(InputError, match="empty must be"):
        imbalance_ratio([1, 2], empty="zero")  # type: ignore[arg-type]
    for mass in (0.0, 1.5, math.nan):
        with pytest.raises(InputError, match="head_mass"):
            long_tail([1, 2], head_mass=mass)


def _table() -> CountTable:
    table = CountTable.zeros(("a", "b", "c"), ("train", "val"))
    table.images[:] = [[90, 9, 0], [10, 1, 0]]
    table.instances[:] = [[300, 10, 2], [30, 2, 0]]
    return table


def test_reports_per_split_and_overall_from_a_table() -> None:
    result = table_imbalance(_table(), "images", min_count=5)
    assert result.overall.counts == (100, 10, 0)
    assert result.overall.imbalance_ratio == 10.0
    assert result.split("train").counts == (90, 9, 0)
    assert result.split("val").imbalance_ratio == 10.0
    assert result.split("val").rare_classes == ("c", "b")
    assert result.overall.empty_classes == ("c",)
    instances = report_from_table(_table(), "instances", split="train")
    assert instances.imbalance_ratio == 150.0
    with pytest.raises(InputError, match="split 'test'"):
        result.split("test")
    with pytest.raises(InputError, match="split 'test'"):
        report_from_table(_table(), "images", split="test")
    payload = result.as_dict()
    assert payload["splits"]["train"]["counts"] == {"a": 90, "b": 9, "c": 0}
    assert payload["overall"]["imbalance_ratio"] == 10.0
    json.dumps(payload, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(counts_lists)
def test_metric_ranges(counts: list[int]) -> None:
    c = len(counts)
    ratio = imbalance_ratio(counts)
    norm = normalised_entropy(counts)
    eff = effective_classes(counts)
    g = gini(counts)
    if sum(counts) == 0:
        assert ratio is norm is eff is g is None
        return
    assert ratio is not None
    assert norm is not None
    assert eff is not None
    assert g is not None
    assert ratio >= 1.0
    assert 0.0 <= norm <= 1.0
    assert 1.0 <= eff <= c
    assert 0.0 <= g <= (c - 1) / c + 1e-12


@settings(max_examples=150, deadline=None)
@given(counts_lists, st.floats(0.01, 1.0))
def test_long_tail_partitions_the_classes(counts: list[int], mass: float) -> None:
    head, tail = long_tail(counts, head_mass=mass)
    assert sorted(head.tolist() + tail.tolist()) == list(range(len(counts)))
    n = np.asarray(counts)
    total = n.sum()
    if total == 0:
        assert head.size == 0
        return
    assert n[head].sum() / total >= mass
    # fewest: without its last class the head would fall short
    assert n[head[:-1]].sum() / total < mass
    if head.size and tail.size:
        assert n[head].min() >= n[tail].max()
    report = imbalance_report(counts, [f"k{i}" for i in range(len(counts))], head_mass=mass)
    json.dumps(report.as_dict(), allow_nan=False)
