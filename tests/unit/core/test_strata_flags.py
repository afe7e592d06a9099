"""Flag rules on a hand-built field: order, thresholds, the skipped stratum, reasons."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.core.strata import FieldStrata
from planner.core.strata_flags import low_flags, skewed_flags


def _field() -> FieldStrata:
    # strata day / night / dusk with 50 / 40 / 10 items; classes a (follows), b, c (skewed)
    counts = np.array([[50, 1, 0], [40, 2, 0], [10, 7, 4]], dtype=np.int64)
    items = np.array([50, 40, 10], dtype=np.int64)
    overall = items / 100
    distribution = (counts / counts.sum(axis=0)).T
    tv = 0.5 * np.abs(distribution - overall).sum(axis=1)
    return FieldStrata("time", ("a", "b", "c"), ("day", "night", "dusk"), items, counts,
                       overall, distribution, tv, ())  # fmt: skip


def test_skewed_flags_worst_first_with_the_shortfall_stratum() -> None:
    f = _field()
    # b: 0.5 (|0.1-0.5| + |0.2-0.4| + |0.7-0.1|) = 0.6; c: 0.5 (0.5 + 0.4 + 0.9) = 0.9
    flags = skewed_flags(f, max_tv=0.5, unit="images")
    assert [(x.class_name, x.stratum) for x in flags] == [("c", "day"), ("b", "day")]
    assert flags[0].total_variation == pytest.approx(0.9)
    assert flags[0].expected == 2.0
    assert "time=day holds 50% of all items but only 0% of its 4 images" in flags[0].reason
    assert [x.class_name for x in skewed_flags(f, max_tv=0.7, unit="images")] == ["c"]


def test_low_flags_smallest_first_and_the_skipped_stratum() -> None:
    f = _field()
    flags = low_flags(f, min_count=3, skip=None, unit="boxes")
    assert [(x.class_name, x.stratum, x.count) for x in flags] == [
        ("c", "day", 0),
        ("c", "night", 0),
        ("b", "day", 1),
        ("b", "night", 2),
    ]
    assert flags[2].reason == (
        "b at time=day: 1 boxes (minimum 3, 5.0 expected from the overall time mix)"
    )
    skipped = low_flags(f, min_count=3, skip="night", unit="boxes")
    assert all(x.stratum != "night" for x in skipped)
    assert len(skipped) == 2
    tiny = low_flags(f, min_count=12, skip=None, unit="images")
    assert any(x.stratum == "dusk" and "time=dusk has only 10 items" in x.reason for x in tiny)
    json.dumps([x.as_dict() for x in tiny], allow_nan=False)
