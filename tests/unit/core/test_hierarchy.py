"""Folding rare children into parents: hand cases, a CountTable, and invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.hierarchy import (
    apply_class_mapping,
    merge_columns,
    merge_rare_children,
    merge_rare_columns,
    validate_hierarchy,
)
from planner.core.table import CountTable
from planner.errors import InputError


def test_rare_siblings_fold_into_a_known_parent() -> None:
    counts = {"sparrow": 3, "finch": 4, "eagle": 9, "bird": 10}
    merge = merge_rare_children(
        counts, {"sparrow": "bird", "finch": "bird", "eagle": "bird"}, min_count=5
    )
    assert merge.counts == {"eagle": 9, "bird": 17}
    assert merge.classes == ("eagle", "bird")
    assert merge.mapping == {"sparrow": "bird", "finch": "bird", "eagle": "eagle", "bird": "bird"}
    assert merge.merged == (("sparrow", "bird"), ("finch", "bird"))


def test_merging_climbs_while_still_below_min_count() -> None:
    # sparrow (1) -> passerine (parent-only, 1 + wren 2 = 3 < 5) -> bird (parent-only).
    hierarchy = {"sparrow": "passerine", "wren": "passerine", "passerine": "bird", "eagle": "bird"}
    counts = {"sparrow": 1, "wren": 2, "eagle": 7, "cat": 1}
    merge = merge_rare_children(counts, hierarchy, min_count=5)
    assert merge.mapping == {"sparrow": "bird", "wren": "bird", "eagle": "eagle", "cat": "cat"}
    assert merge.counts == {"eagle": 7, "cat": 1, "bird": 3}  # cat has no parent: stays rare
    assert merge.classes == ("eagle", "cat", "bird")


def test_merging_stops_once_the_parent_reaches_min_count() -> None:
    hierarchy = {"sparrow": "passerine", "wren": "passerine", "passerine": "bird"}
    merge = merge_rare_children({"sparrow": 3, "wren": 2}, hierarchy, min_count=5)
    assert merge.mapping == {"sparrow": "passerine", "wren": "passerine"}
    assert merge.counts == {"passerine": 5}


def test_exactly_min_count_stays_and_zero_min_count_merges_nothing() -> None:
    hierarchy = {"sparrow": "bird"}
    assert merge_rare_children({"sparrow": 5}, hierarchy, min_count=5).merged == ()
    none = merge_rare_children({"sparrow": 0, "bird": 0}, hierarchy, min_count=0)
    assert none.classes == ("sparrow", "bird")
    assert none.merged == ()


def test_empty_child_is_folded_into_its_parent() -> None:
    merge = merge_rare_children({"sparrow": 0, "bird": 4}, {"sparrow": "bird"}, min_count=1)
    assert merge.counts == {"bird": 4}
    assert json.loads(json.dumps(merge.as_dict()))["merged"] == [["sparrow", "bird"]]


@pytest.mark.parametrize(
    ("counts", "min_count", "message"),
    [
        ({"a": 1}, -1, "min_count"),
        ({"a": 1}, 1.5, "min_count"),
        ({"a": -2}, 1, "count of 'a'"),
        ({"a": 1.0}, 1, "count of 'a'"),
    ],
)
def test_bad_counts_are_input_errors(counts: dict[str, int], min_count: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        merge_rare_children(counts, {}, min_count=min_count)


def test_validate_returns_parent_only_classes_in_order() -> None:
    parents = validate_hierarchy({"a": "x", "b": "y", "x": "y", "c": "x"}, ("a", "b", "c"))
    assert parents == ("x", "y")


def table(
    images: list[list[int]], instances: list[list[int]], pixels: list[list[int]]
) -> CountTable:
    return CountTable(
        classes=("sparrow", "finch", "eagle", "unknown"),
        splits=("train", "val"),
        images=np.array(images, dtype=np.int64),
        instances=np.array(instances, dtype=np.int64),
        pixels=np.array(pixels, dtype=np.int64),
    )


def test_merge_columns_of_a_count_table() -> None:
    counts = table(
        images=[[2, 1, 8, 1], [1, 0, 3, 0]],
        instances=[[2, 2, 9, 1], [1, 0, 3, 0]],
        pixels=[[20, 30, 900, 5], [10, 0, 300, 0]],
    )
    result = merge_rare_columns(
        counts, {"sparrow": "bird", "finch": "bird", "eagle": "bird"}, min_count=4
    )
    merged = result.table
    assert merged.classes == ("eagle", "unknown", "bird")
    assert merged.splits == ("train", "val")
    np.testing.assert_array_equal(merged.instances, [[9, 1, 4], [3, 0, 1]])
    np.testing.assert_array_equal(merged.pixels, [[900, 5, 50], [300, 0, 10]])
    # Column sums: an image holding both sparrow and finch would count twice (upper bound).
    np.testing.assert_array_equal(merged.images, [[8, 1, 3], [3, 0, 1]])
    on_pixels = merge_rare_columns(counts, {"sparrow": "bird"}, min_count=31, kind="pixels")
    assert on_pixels.merge.mapping["sparrow"] == "bird"
    assert on_pixels.merge.mapping["finch"] == "finch"


def test_apply_mapping_needs_every_target_listed() -> None:
    counts = table([[0] * 4] * 2, [[0] * 4] * 2, [[0] * 4] * 2)
    with pytest.raises(InputError, match="bird"):
        apply_class_mapping(counts, {"sparrow": "bird"}, ("finch", "eagle", "unknown"))


def test_merge_columns_per_image() -> None:
    classes = ("sparrow", "finch", "eagle")
    per_image = np.array([[1, 0, 2], [0, 3, 0], [0, 0, 0]])
    mapping = {"sparrow": "bird", "finch": "bird"}
    merged = merge_columns(per_image, classes, mapping, ("eagle", "bird"))
    assert merged.tolist() == [[2, 1], [0, 3], [0, 0]]
    with pytest.raises(InputError, match="bird"):
        merge_columns(per_image, classes, mapping, ("eagle",))
    with pytest.raises(InputError, match="a column per class"):
        merge_columns(per_image[:, :2], classes, mapping, ("eagle", "bird"))
    with pytest.raises(InputError, match="integer counts"):
        merge_columns(per_image * 0.5, classes, mapping, ("eagle", "bird"))


@st.composite
def forests(draw: st.DrawFn) -> tuple[dict[str, int], dict[str, str]]:
    """Random class counts and an acyclic hierarchy (parents drawn from later names)."""
    names = [f"c{i}" for i in range(draw(st.integers(1, 12)))]
    extra = [f"p{i}" for i in range(draw(st.integers(0, 3)))]
    pool = names + extra
    hierarchy: dict[str, str] = {}
    for i, name in enumerate(pool[:-1]):
        # A parent-only name may have a parent once something hangs below it.
        known = name in names or name in hierarchy.values()
        if known and draw(st.booleans()):
            hierarchy[name] = draw(st.sampled_from(pool[i + 1 :]))
    counts = {name: draw(st.integers(0, 20)) for name in names}
    return counts, hierarchy


@settings(max_examples=150, deadline=None)
@given(forests(), st.integers(0, 25))
def test_merge_invariants(case: tuple[dict[str, int], dict[str, str]], min_count: int) -> None:
    counts, hierarchy = case
    merge = merge_rare_children(counts, hierarchy, min_count=min_count)
    assert sum(merge.counts.values()) == sum(counts.values())
    assert set(merge.mapping) == set(counts)
    assert set(merge.mapping.values()) <= set(merge.classes)
    assert set(merge.classes) == set(merge.counts)
    for name in merge.classes:
        # A class that survives with a parent is not rare: otherwise it would have merged.
        if name in hierarchy:
            assert merge.counts[name] >= min_count
        assert merge.counts[name] == sum(counts[c] for c, t in merge.mapping.items() if t == name)
    for name, target in merge.mapping.items():
        if name not in hierarchy:
            assert target == name
        node = name
        while node != target:  # the target is an ancestor reached along the chain
            node = hierarchy[node]
