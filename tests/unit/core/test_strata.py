"""Hidden imbalance by strata: a planted night-only class, hand-counted cells, invariants."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.strata import MISSING, cross_fields, stratify, stratum_of
from planner.errors import InputError


def _planted() -> tuple[np.ndarray, dict[str, Sequence[object]]]:
    """100 images, 70 by day; Car everywhere, Pedestrian only in 10 night images."""
    membership = np.zeros((100, 2), dtype=bool)
    membership[0:60, 0] = True  # Car: 60 day images
    membership[70:90, 0] = True  # Car: 20 night images
    membership[90:100, 1] = True  # Pedestrian: night only
    time = ["day"] * 70 + ["night"] * 30
    camera = [None] * 5 + ["A" if i % 2 else "B" for i in range(5, 100)]
    return membership, {"time": time, "camera": camera}


def test_finds_a_class_present_only_at_night() -> None:
    membership, metadata = _planted()
    report = stratify(membership, ["Car", "Pedestrian"], metadata, min_count=20, max_tv=0.2)
    time = report.field("time")
    assert time.strata == ("day", "night")
    assert time.items.tolist() == [70, 30]
    assert time.counts.tolist() == [[60, 0], [20, 10]]
    assert time.overall.tolist() == [0.7, 0.3]
    assert time.distribution[1].tolist() == [0.0, 1.0]
    assert time.total_variation[1] == pytest.approx(0.7)
    assert time.total_variation[0] == pytest.approx(0.05)  # Car follows the data set

    skewed = [f for f in time.flags if f.kind == "skewed"]
    assert [(f.class_name, f.stratum) for f in skewed] == [("Pedestrian", "day")]
    assert skewed[0].count == 0
    assert skewed[0].expected == pytest.approx(7.0)
    assert "70% of all items but only 0% of its 10 images" in skewed[0].reason

    low = [(f.class_name, f.stratum, f.count) for f in time.flags if f.kind == "low"]
    assert low == [("Pedestrian", "day", 0), ("Pedestrian", "night", 10)]
    night = next(f for f in time.flags if f.kind == "low" and f.stratum == "night")
    assert night.reason.startswith("Pedestrian at time=night: 10 images (minimum 20")
    assert night.expected == pytest.approx(3.0)


def test_missing_values_get_their_own_stratum_and_are_not_flagged_by_default() -> None:
    membership, metadata = _planted()
    report = stratify(membership, ["Car", "Pedestrian"], metadata, min_count=20)
    camera = report.field("camera")
    assert camera.strata == ("A", "B", MISSING)  # sorted, (missing) last
    assert camera.items.tolist() == [48, 47, 5]  # odd 5..99 are A, even 6..98 B
    assert camera.count("Car", MISSING) == 5
    assert camera.count("Car", "nowhere") == 0
    assert all(f.stratum != MISSING for f in camera.flags)
    flagged = stratify(membership, ["Car", "Pedestrian"], metadata, min_count=20, flag_missing=True)
    cells = {(f.class_name, f.stratum) for f in flagged.field("camera").flags if f.kind == "low"}
    assert ("Car", MISSING) in cells
    assert ("Pedestrian", MISSING) in cells


def test_hand_counted_multi_label_cells() -> None:
    membership = np.array([[1, 0], [1, 1], [0, 1], [2, 0], [0, 0]])
    weather = ["sun", "rain", None, "sun", "  "]
    report = stratify(membership, ["a", "b"], {"weather": weather}, min_count=0)
    f = report.field("weather")
    assert f.strata == ("rain", "sun", MISSING)
    assert f.items.tolist() == [1, 2, 2]
    assert f.counts.tolist() == [[1, 1], [2, 0], [0, 1]]
    np.testing.assert_allclose(f.overall, [0.2, 0.4, 0.4])
    np.testing.assert_allclose(f.distribution, [[1 / 3, 2 / 3, 0.0], [0.5, 0.0, 0.5]])
    np.testing.assert_allclose(f.total_variation, [0.4, 0.4])
    assert [x.class_name for x in f.flags] == ["a", "b"]  # both skewed at 0.2; no low cells
    values = stratify(membership, ["a", "b"], {"weather": weather}, count="values")
    assert values.field("weather").counts.tolist() == [[1, 1], [3, 0], [0, 1]]


def test_absent_class_and_no_items() -> None:
    report = stratify(np.array([[1, 0], [1, 0]]), ["a", "b"], {"t": ["x", "y"]}, min_count=5)
    assert report.absent_classes == ("b",)
    f = report.field("t")
    assert np.isnan(f.distribution[1]).all()
    assert math.isnan(f.total_variation[1])
    assert all(flag.class_name == "a" for flag in f.flags)
    payload = report.as_dict()
    assert payload["fields"]["t"]["classes"]["b"]["distribution"] is None
    assert payload["fields"]["t"]["classes"]["b"]["total_variation"] is None
    json.dumps(payload, allow_nan=False)

    empty = stratify(np.zeros((0, 2), int), ["a", "b"], {"t": []})
    assert empty.n_items == 0
    assert empty.field("t").strata == ()
    assert empty.flags == ()
    assert empty.absent_classes == ("a", "b")
    json.dumps(empty.as_dict(), allow_nan=False)


def test_small_stratum_is_named_in_the_reason() -> None:
    membership = np.ones((25, 1), bool)
    report = stratify(membership, ["a"], {"w": ["sun"] * 22 + ["fog"] * 3}, min_count=10)
    (flag,) = report.flags
    assert flag.stratum == "fog"
    assert "w=fog has only 3 items" in flag.reason


def test_stratum_names() -> None:
    assert stratum_of(None) == MISSING
    assert stratum_of(float("nan")) == MISSING
    assert stratum_of(np.float32("nan")) == MISSING
    assert stratum_of("") == MISSING
    assert stratum_of(" night ") == "night"
    assert stratum_of(3) == "3"


def test_odd_metadata_values() -> None:
    membership = np.ones((5, 1), int)
    nan_a, nan_b = float("nan"), float("nan")  # distinct objects, each unequal to itself
    report = stratify(membership, ["a"], {"x": [nan_a, nan_b, 1, "1", np.int64(2)]})
    f = report.field("x")
    assert f.strata == ("1", "2", MISSING)
    assert f.items.tolist() == [2, 1, 2]
    unhashable = stratify(membership, ["a"], {"x": [["u"], ["u"], ["v"], None, ["v"]]})
    assert unhashable.field("x").strata == ("['u']", "['v']", MISSING)
    assert unhashable.field("x").items.tolist() == [2, 2, 1]
    as_array = stratify(membership, ["a"], {"x": np.array(["d", "n", "d", "d", "n"])})
    assert as_array.field("x").counts.tolist() == [[3], [2]]


def test_cross_fields() -> None:
    crossed = cross_fields({"t": ["day", "night", None], "w": ["sun", "rain", "fog"]}, ["t", "w"])
    assert crossed == ["day / sun", "night / rain", f"{MISSING} / fog"]
    with pytest.raises(InputError, match="not in the metadata"):
        cross_fields({"t": ["day"]}, ["t", "w"])
    with pytest.raises(InputError, match="different lengths"):
        cross_fields({"t": ["day"], "w": []}, ["t", "w"])
    with pytest.raises(InputError, match="at least one field"):
        cross_fields({"t": ["day"]}, [])


@pytest.mark.parametrize(
    ("membership", "metadata", "options", "message"),
    [
        ([[1, 0]], {"t": ["x"]}, {}, "1 columns|2 columns"),
        ([[1, -1, 0]], {"t": ["x"]}, {}, "negative"),
        ([[1, 0.5, 0]], {"t": ["x"]}, {}, "whole numbers"),
        ([[1, math.nan, 0]], {"t": ["x"]}, {}, "NaN"),
        ([1, 0, 0], {"t": ["x"]}, {}, "2-D"),
        ([[1, 0, 0]], {}, {}, "no metadata"),
        ([[1, 0, 0]], {"t": ["x", "y"]}, {}, "2 values for 1 items"),
        ([[1, 0, 0]], {"t": ["x"]}, {"min_count": -1}, "min_count"),
        ([[1, 0, 0]], {"t": ["x"]}, {"max_tv": 0.0}, "max_tv"),
        ([[1, 0, 0]], {"t": ["x"]}, {"count": "pixels"}, "count must be"),
    ],
)
def test_bad_input(membership: object, metadata: object, options: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        stratify(membership, ["a", "b", "c"], metadata, **options)  # type: ignore[arg-type]


def test_repeated_class_names() -> None:
    with pytest.raises(InputError, match="repeat"):
        stratify([[1, 0]], ["a", "a"], {"t": ["x"]})


@st.composite
def _datasets(draw: st.DrawFn) -> tuple[np.ndarray, list[str | None]]:
    n = draw(st.integers(0, 40))
    c = draw(st.integers(1, 4))
    cells = draw(st.lists(st.integers(0, 3), min_size=n * c, max_size=n * c))
    values = draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n))
    return np.asarray(cells, dtype=np.int64).reshape(n, c), values


@settings(max_examples=120, deadline=None)
@given(_datasets(), st.integers(0, 6), st.floats(0.05, 1.0))
def test_invariants(
    data: tuple[np.ndarray, list[str | None]], min_count: int, max_tv: float
) -> None:
    membership, values = data
    classes = [f"k{i}" for i in range(membership.shape[1])]
    report = stratify(membership, classes, {"f": values}, min_count=min_count, max_tv=max_tv)
    f = report.field("f")
    present = (membership > 0).sum(axis=0)
    assert f.items.sum() == len(values)
    assert f.counts.sum(axis=0).tolist() == present.tolist()
    for c in range(len(classes)):
        if present[c]:
            assert f.distribution[c].sum() == pytest.approx(1.0)
            assert -1e-12 <= f.total_variation[c] <= 1.0 + 1e-12
    for flag in f.flags:
        c = classes.index(flag.class_name)
        if flag.kind == "low":
            assert flag.count < min_count
            assert flag.count == f.count(flag.class_name, flag.stratum)
            assert flag.stratum != MISSING
        else:
            assert f.total_variation[c] >= max_tv
    flagged = {(x.class_name, x.stratum) for x in f.flags if x.kind == "low"}
    for s, stratum in enumerate(f.strata):
        for c, name in enumerate(classes):
            small = present[c] > 0 and f.counts[s, c] < min_count and stratum != MISSING
            assert ((name, stratum) in flagged) == bool(small)
    # the item order changes nothing
    order = np.random.default_rng(0).permutation(len(values))
    shuffled = stratify(
        membership[order], classes, {"f": [values[i] for i in order]}, min_count=min_count
    )
    assert shuffled.field("f").counts.tolist() == f.counts.tolist()
    json.dumps(report.as_dict(), allow_nan=False)


def test_values_equal_across_types_keep_the_strata_their_names_give() -> None:
    # 1 == 1.0 == True in Python; each is its own stratum by name, and the int and the text
    # "1" share the name "1"
    report = stratify([[1], [1], [0], [1]], ["a"], {"f": [1, True, 1.0, "1"]}, min_count=0)
    (field,) = report.fields
    assert field.strata == ("1", "1.0", "True")
    assert field.items.tolist() == [2, 1, 1]
    assert field.counts[:, 0].tolist() == [2, 0, 1]
    first_true = stratify([[1], [0]], ["a"], {"f": [True, 1]}, min_count=0).fields[0]
    assert first_true.strata == ("1", "True")
