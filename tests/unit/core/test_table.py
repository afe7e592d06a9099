"""The shared count table."""

from __future__ import annotations

import numpy as np
import pytest

from planner.core.table import CountTable
from planner.errors import InputError


def _table() -> CountTable:
    images = np.array([[5, 1, 2], [1, 0, 0]], dtype=np.int64)
    return CountTable(("a", "unknown", "b"), ("train", "val"), images, images * 2, images * 100)


def test_without_drops_columns_of_every_kind() -> None:
    table = _table().without("unknown", "not-a-class")
    assert table.classes == ("a", "b")
    assert table.images.tolist() == [[5, 2], [1, 0]]
    assert table.instances.tolist() == [[10, 4], [2, 0]]
    assert table.pixels.tolist() == [[500, 200], [100, 0]]
    assert table.totals("images").tolist() == [6, 2]


def test_split_and_kind_errors_name_what_exists() -> None:
    with pytest.raises(InputError, match="not one of"):
        _table().split("test", "images")
    with pytest.raises(InputError, match="not one of"):
        _table().of("boxes")  # type: ignore[arg-type]
