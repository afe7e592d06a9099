"""Tests for stratified split assignment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.core.splits import DEFAULT_RATIOS, assign_splits, training_split, validate_ratios
from planner.core.table import CountTable
from planner.errors import InputError

RATIOS = np.array([0.8, 0.1, 0.1])


def long_tailed(n: int = 4000, seed: int = 0) -> npt.NDArray[np.bool_]:
    """Multi-label, long-tailed: 8 classes from 50% down to 0.5%, plus one with exactly 10."""
    rng = np.random.default_rng(seed)
    freqs = np.array([0.5, 0.3, 0.15, 0.08, 0.04, 0.02, 0.01, 0.005])
    member = rng.random((n, freqs.size)) < freqs
    rare = np.zeros((n, 1), dtype=bool)
    rare[rng.choice(n, 10, replace=False), 0] = True
    return np.hstack([member, rare])


def one_hot(labels: list[int], n_classes: int) -> npt.NDArray[np.bool_]:
    out = np.zeros((len(labels), n_classes), dtype=bool)
    out[np.arange(len(labels)), labels] = True
    return out


# --- ratios ---------------------------------------------------------------------------------


def test_default_ratios_are_80_10_10() -> None:
    names, values = validate_ratios(DEFAULT_RATIOS)
    assert names == ("train", "val", "test")
    np.testing.assert_allclose(values, [0.8, 0.1, 0.1])


def test_any_split_names_in_the_order_given() -> None:
    names, values = validate_ratios({"fit": 0.5, "holdout": 0.25, "calib": 0.25})
    assert names == ("fit", "holdout", "calib")
    np.testing.assert_allclose(values, [0.5, 0.25, 0.25])


@pytest.mark.parametrize(
    "ratios",
    [
        {},
        {"train": 0.9, "val": 0.2},
        {"train": 0.8, "val": 0.1},
        {"train": 1.0, "val": 0.0},
        {"train": 1.1, "val": -0.1},
        {"train": float("nan"), "val": 0.5},
        {"train": float("inf")},
        {"": 1.0},
        {"train": True},
        {"train": "1"},
    ],
)
def test_bad_ratios_rejected(ratios: dict[str, object]) -> None:
    with pytest.raises(InputError):
        validate_ratios(ratios)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("splits", "expected"),
    [(("val", "train", "test"), "train"), (("training", "validation"), "training")],
)
def test_the_training_split_is_train_when_named_else_the_first(
    splits: tuple[str, ...], expected: str
) -> None:
    assert training_split(splits) == expected


def test_no_split_has_no_training_split() -> None:
    with pytest.raises(InputError, match="no split"):
        training_split(())


# --- the stratification rule ----------------------------------------------------------------


def test_long_tailed_multilabel_stays_within_one_item_of_the_ratios() -> None:
    member = long_tailed()
    result = assign_splits(list(range(member.shape[0])), member)
    class_total = member.sum(axis=0)
    np.testing.assert_array_equal(result.counts.sum(axis=0), class_total)
    expected = RATIOS[:, None] * class_total[None, :]
    assert np.all(np.abs(result.counts - expected) <= 1.0)
    enough = class_total >= 100
    assert enough.sum() >= 4
    assert np.all(result.max_abs_deviation()[enough] <= 0.01)
    # Every item is assigned once, and items split 80/10/10 overall too.
    assert len(result.new) == member.shape[0]
    np.testing.assert_array_equal(result.totals, [3200, 400, 400])


def test_seed_001_example_1_every_split_keeps_the_33_to_1_ratio() -> None:
    # Background 50k, Crack 1.5k: "stratify splits to preserve the 33:1 ratio"
    labels = [0] * 50_000 + [1] * 1_500
    order = np.random.default_rng(3).permutation(len(labels))  # not sorted by class
    member = one_hot([labels[i] for i in order], 2)
    result = assign_splits([int(i) for i in order], member)
    np.testing.assert_array_equal(result.counts, [[40_000, 1_200], [5_000, 150], [5_000, 150]])
    ratios = result.counts[:, 0] / result.counts[:, 1]
    np.testing.assert_allclose(ratios, 50_000 / 1_500)


def test_rare_class_of_ten_goes_8_1_1() -> None:
    member = long_tailed()
    result = assign_splits(list(range(member.shape[0])), member)
    np.testing.assert_array_equal(result.counts[:, -1], [8, 1, 1])


def test_class_of_ten_alone_goes_8_1_1() -> None:
    result = assign_splits([f"img{i}" for i in range(10)], np.ones((10, 1), dtype=int))
    np.testing.assert_array_equal(result.counts[:, 0], [8, 1, 1])
    assert sorted(result.new.values()).count("train") == 8


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, [1, 0, 0]), (2, [2, 0, 0]), (3, [3, 0, 0]), (4, [3, 1, 0]), (5, [4, 1, 0])],
)
def test_very_rare_class_fills_train_first(n: int, expected: list[int]) -> None:
    # Demands 0.8n / 0.1n / 0.1n: train's stays the largest until it holds its share.
    member = np.zeros((200, 2), dtype=bool)
    member[:, 0] = True
    member[:n, 1] = True
    result = assign_splits(list(range(200)), member)
    np.testing.assert_array_equal(result.counts[:, 1], expected)


def test_existing_counts_shift_the_demand() -> None:
    # The class already has 3 / 0 / 0; with 2 new items the demands are 1 / 0.5 / 0.5:
    # the first goes to train, the second to val (tie with test, overall demand equal).
    result = assign_splits(
        ["a", "b"],
        [[1], [1]],
        counts=[[3], [0], [0]],
        totals=[3, 0, 0],
    )
    np.testing.assert_array_equal(result.counts[:, 0], [4, 1, 0])
    # A further new item: demands 4.8-4 / 0.6-1 / 0.6-0 = 0.8 / -0.4 / 0.6: train.
    again = assign_splits(
        ["c"], [[1]], existing=result.assignment, counts=result.counts, totals=result.totals
    )
    np.testing.assert_array_equal(again.counts[:, 0], [5, 1, 0])


def test_overall_demand_breaks_class_ties() -> None:
    # Class demand for the new item: 0.5 / 0.5 in both splits; overall: 0.5*11-10 < 0.5*11-0.
    result = assign_splits(
        ["x"],
        [[1]],
        ratios={"a": 0.5, "b": 0.5},
        counts=[[0], [0]],
        totals=[10, 0],
    )
    assert result.new == {"x": "b"}


def test_full_ties_go_to_the_split_listed_first() -> None:
    result = assign_splits(["x"], [[1]], ratios={"b": 0.5, "a": 0.5})
    assert result.new == {"x": "b"}


def test_items_without_class_spread_by_overall_demand() -> None:
    result = assign_splits(list(range(10)), np.zeros((10, 3), dtype=bool))
    np.testing.assert_array_equal(result.totals, [8, 1, 1])
    np.testing.assert_array_equal(result.counts, np.zeros((3, 3)))
    # Train already holds its share: empty items go to val and test.
    filled = assign_splits(
        list(range(10)), np.zeros((10, 1), dtype=bool), counts=[[0], [0], [0]], totals=[72, 0, 0]
    )
    np.testing.assert_array_equal(filled.totals, [72, 5, 5])


def test_deviation_is_share_minus_ratio() -> None:
    result = assign_splits(
        ["n"],
        [[0, 1, 0]],
        counts=[[6, 0, 0], [2, 0, 0], [2, 0, 0]],
        totals=[6, 2, 2],
        classes=["car", "crack", "empty"],
    )
    assert result.new == {"n": "train"}
    np.testing.assert_allclose(result.deviation[:, 0], [0.6 - 0.8, 0.2 - 0.1, 0.2 - 0.1])
    np.testing.assert_allclose(result.deviation[:, 1], [0.2, -0.1, -0.1])
    np.testing.assert_array_equal(result.deviation[:, 2], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(result.max_abs_deviation(), [0.2, 0.2, 0.0])


# --- determinism and invariance -------------------------------------------------------------


def test_same_inputs_same_result_and_seed_matters() -> None:
    member = long_tailed(n=300, seed=3)
    ids = [f"task-{i}" for i in range(300)]
    first = assign_splits(ids, member, seed=7)
    assert dict(assign_splits(ids, member, seed=7).new) == dict(first.new)
    others = [dict(assign_splits(ids, member, seed=s).new) for s in range(8, 12)]
    assert any(other != dict(first.new) for other in others)


@settings(max_examples=50, deadline=None)
@given(st.permutations(range(120)), st.integers(0, 2**31))
def test_permutation_invariance(order: list[int], seed: int) -> None:
    member = long_tailed(n=120, seed=1)
    ids: list[int | str] = [i if i % 2 else f"s{i}" for i in range(120)]
    base = assign_splits(ids, member, seed=seed)
    permuted = assign_splits([ids[i] for i in order], member[order], seed=seed)
    assert dict(permuted.new) == dict(base.new)
    np.testing.assert_array_equal(permuted.counts, base.counts)


def test_order_does_not_depend_on_python_hash_seed() -> None:
    code = textwrap.dedent(
        """
        import numpy as np
        from planner.core.splits import assign_splits
        ids = [f"img-{i}" for i in range(40)]
        member = np.zeros((40, 2), dtype=bool)
        member[::3, 1] = True
        print(sorted(assign_splits(ids, member, seed=5).new.items()))
        """
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            cwd=Path(__file__).resolve().parents[3],
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(outputs) == 1


# --- items never move -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.integers(0, 60), st.sampled_from(["train", "val", "test"]), max_size=40),
    st.lists(st.integers(0, 60), unique=True, max_size=40),
    st.integers(0, 1000),
)
def test_existing_assignments_never_move(
    existing: dict[int, str], ids: list[int], seed: int
) -> None:
    member = np.array([[i % 2 == 0, i % 5 == 0] for i in ids], dtype=bool).reshape(-1, 2)
    per_split = [sum(1 for v in existing.values() if v == s) for s in ("train", "val", "test")]
    counts = np.array([[n, 0] for n in per_split])
    result = assign_splits(ids, member, existing=existing, counts=counts, seed=seed)
    for item, split in existing.items():
        assert result.assignment[item] == split
    assert set(result.kept) == set(ids) & set(existing)
    assert set(result.new) == set(ids) - set(existing)
    assert set(result.assignment) == set(existing) | set(ids)
    # Kept items are not counted again: only the new ones add to the counts.
    assert int(result.totals.sum()) == len(existing) + len(result.new)


def test_incremental_rounds_stay_close_to_the_ratios() -> None:
    member = long_tailed()
    ids = list(range(member.shape[0]))
    existing: dict[int | str, str] = {}
    counts = np.zeros((3, member.shape[1]), dtype=np.int64)
    totals = np.zeros(3, dtype=np.int64)
    for start in range(0, 4000, 800):
        result = assign_splits(
            ids[start : start + 800],
            member[start : start + 800],
            existing=existing,
            counts=counts,
            totals=totals,
        )
        assert all(result.assignment[i] == s for i, s in existing.items())
        existing, counts, totals = dict(result.assignment), result.counts, result.totals
        class_total = counts.sum(axis=0)
        assert np.all(np.abs(counts - RATIOS[:, None] * class_total[None, :]) <= 1.0)
    assert len(existing) == 4000
    np.testing.assert_array_equal(counts[:, -1], [8, 1, 1])


# --- inputs ---------------------------------------------------------------------------------


def test_count_table_images_are_used_in_ratio_order() -> None:
    table = CountTable.zeros(("car", "crack"), ("test", "train", "val"))
    images = np.array([[1, 0], [8, 3], [1, 0]], dtype=np.int64)
    table = CountTable(
        classes=table.classes,
        splits=table.splits,
        images=images,
        instances=images * 5,
        pixels=images * 100,
    )
    result = assign_splits(["new"], [[0, 1]], counts=table, totals=[8, 1, 1])
    # Rows are train/val/test; totals follow the ratio order too.
    assert result.classes == ("car", "crack")
    np.testing.assert_array_equal(result.counts, [[8, 3], [1, 1], [1, 0]])
    assert result.new == {"new": "val"}
    with pytest.raises(InputError, match="splits"):
        assign_splits(["n"], [[1, 0]], counts=table, ratios={"train": 0.9, "val": 0.1})
    with pytest.raises(InputError, match="classes"):
        assign_splits(["n"], [[1, 0]], counts=table, totals=[8, 1, 1], classes=["a", "b"])


def test_totals_as_mapping_and_default_from_existing() -> None:
    # 8 in train, 1 in val: with one more item the overall demands are 0 / 0 / 1.
    existing = {f"t{i}": "train" for i in range(8)} | {"v": "val"}
    counts = [[8, 0], [0, 1], [0, 0]]
    by_default = assign_splits(["d"], [[0, 0]], existing=existing, counts=counts)
    np.testing.assert_array_equal(by_default.totals, [8, 1, 1])
    as_mapping = assign_splits(
        ["d"], [[0, 0]], existing=existing, counts=counts, totals={"val": 1, "test": 0, "train": 8}
    )
    assert dict(as_mapping.new) == dict(by_default.new) == {"d": "test"}


def test_int_membership_counts_are_presence_and_numpy_ids_accepted() -> None:
    result = assign_splits(
        [np.int64(4), 5],  # type: ignore[list-item]
        np.array([[3, 0], [0, 0]]),
        classes=("person", "wheelchair"),
    )
    np.testing.assert_array_equal(result.counts.sum(axis=0), [1, 0])
    assert set(result.new) == {4, 5}
    assert all(type(k) is int for k in result.new)


def test_single_label_one_hot_and_no_items() -> None:
    labels = [0] * 16 + [1] * 8 + [2] * 4
    result = assign_splits(list(range(28)), one_hot(labels, 3))
    np.testing.assert_array_equal(result.counts.sum(axis=0), [16, 8, 4])
    # Class 2 first (3/1/0), then class 1 (6/1/1); class 0 (demands 12.8/1.6/1.6) takes 12
    # trains, then ties between val and test go by overall demand: test, val, train, test.
    np.testing.assert_array_equal(result.counts, [[13, 6, 3], [1, 1, 1], [2, 1, 0]])
    empty = assign_splits([], [], classes=("a", "b"))
    assert empty.new == {}
    assert empty.counts.shape == (3, 2)


def test_result_is_read_only_and_json_ready() -> None:
    result = assign_splits(["a", "b"], [[1, 0], [0, 1]], classes=("cat", "dog"))
    with pytest.raises(TypeError):
        result.assignment["c"] = "train"  # type: ignore[index]
    with pytest.raises(ValueError, match="read-only"):
        result.counts[0, 0] = 9
    data = result.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["new_per_split"] == {"train": 2, "val": 0, "test": 0}
    assert data["counts"] == {
        "train": {"cat": 1, "dog": 1},
        "val": {"cat": 0, "dog": 0},
        "test": {"cat": 0, "dog": 0},
    }
    deviation = data["deviation"]
    assert isinstance(deviation, dict)
    assert deviation["cat"] == pytest.approx({"train": 0.2, "val": -0.1, "test": -0.1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ids": [1, 1], "membership": [[1], [0]]}, "repeat"),
        ({"ids": [True], "membership": [[1]]}, "int or a str"),
        ({"ids": [1.5], "membership": [[1]]}, "int or a str"),
        ({"ids": [1], "membership": [1]}, "shape"),
        ({"ids": [1], "membership": [[0.5]]}, "bool or int"),
        ({"ids": [1], "membership": [[-1]]}, "negative"),
        ({"ids": [1], "membership": [[1, 0]], "classes": ["a"]}, "columns"),
        ({"ids": [1], "membership": [[1, 0]], "classes": ["a", "a"]}, "repeat"),
        ({"ids": [1], "membership": [[1]], "existing": {2: "train"}}, "counts"),
        ({"ids": [1], "membership": [[1]], "existing": {2: "dev"}, "counts": [[0]] * 3}, "dev"),
        ({"ids": [1], "membership": [[1]], "counts": [[1], [0], [0]]}, "totals"),
        ({"ids": [1], "membership": [[1]], "counts": [[1], [0]], "totals": [1, 0, 0]}, "shape"),
        ({"ids": [1], "membership": [[1]], "counts": [[np.nan], [0], [0]]}, "finite"),
        ({"ids": [1], "membership": [[1]], "counts": [[-1], [0], [0]]}, "negative"),
        ({"ids": [1], "membership": [[1]], "totals": {"train": 1}}, "totals"),
        ({"ids": [1], "membership": [[1]], "seed": 1.0}, "seed"),
    ],
)
def test_bad_inputs_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        assign_splits(**kwargs)  # type: ignore[arg-type]
