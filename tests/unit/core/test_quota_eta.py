"""ETA of a quota from the recent labelling rate: exact dates for known rates, refusals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from planner.core.quota_eta import eta
from planner.errors import InputError

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def _daily(rate: float, days: int = 7, start: float = 100.0) -> list[tuple[datetime, float]]:
    """Cumulative counts growing by ``rate`` a day over the last ``days`` days, ending now."""
    return [(NOW - timedelta(days=days - d), start + rate * d) for d in range(days + 1)]


@pytest.mark.parametrize("method", ["lstsq", "endpoints"])
def test_constant_rate_gives_the_exact_date(method: str) -> None:
    estimate = eta(_daily(10.0), deficit=25, now=NOW, method=method)  # type: ignore[arg-type]
    assert estimate.state == "on_track"
    assert estimate.rate_per_day == pytest.approx(10.0, rel=1e-12)
    assert estimate.days_remaining == pytest.approx(2.5, rel=1e-12)
    assert estimate.completion == datetime(2026, 11, 18, 0, 0, tzinfo=UTC)
    assert estimate.points_used == 8


def test_rate_across_time_zones() -> None:
    paris = timezone(timedelta(hours=1))
    history = [(NOW - timedelta(days=2), 0), (NOW.astimezone(paris), 40)]
    estimate = eta(history, deficit=60, now=NOW)
    assert estimate.rate_per_day == pytest.approx(20.0)
    assert estimate.completion == NOW + timedelta(days=3)


def test_least_squares_and_endpoints_differ_on_uneven_progress() -> None:
    counts = [0, 4, 4, 6]  # slope by least squares 9 / 5 = 1.8; endpoints 6 / 3 = 2
    history = [(NOW - timedelta(days=3 - d), c) for d, c in enumerate(counts)]
    assert eta(history, deficit=9, now=NOW).rate_per_day == pytest.approx(1.8)
    assert eta(history, deficit=9, now=NOW, method="endpoints").rate_per_day == pytest.approx(2.0)
    assert eta(history, deficit=9, now=NOW).days_remaining == pytest.approx(5.0)


def test_only_points_in_the_window_count() -> None:
    fast_then_slow: list[tuple[datetime, float]] = [
        (NOW - timedelta(days=30), 0),
        (NOW - timedelta(days=20), 1000),
    ]
    fast_then_slow += _daily(2.0, start=1000.0)
    estimate = eta(fast_then_slow, deficit=10, now=NOW)
    assert estimate.rate_per_day == pytest.approx(2.0)
    assert estimate.points_used == 8
    wide = eta(fast_then_slow, deficit=10, now=NOW, window=timedelta(days=40))
    assert wide.points_used == 10
    assert wide.rate_per_day is not None
    assert wide.rate_per_day > 2.0


def test_order_of_history_does_not_matter() -> None:
    history = _daily(3.0)
    forward = eta(history, deficit=30, now=NOW, method="endpoints")
    backward = eta(history[::-1], deficit=30, now=NOW, method="endpoints")
    assert forward == backward


def test_met_stalled_and_no_data() -> None:
    met = eta(_daily(5.0), deficit=0, now=NOW)
    assert (met.state, met.completion, met.days_remaining) == ("met", NOW, 0.0)
    flat = eta(_daily(0.0), deficit=10, now=NOW)
    assert (flat.state, flat.completion, flat.rate_per_day) == ("stalled", None, 0.0)
    shrinking = eta(_daily(-1.0), deficit=10, now=NOW)
    assert shrinking.state == "stalled"
    assert shrinking.completion is None
    single = eta([(NOW - timedelta(days=1), 5)], deficit=10, now=NOW)
    assert (single.state, single.rate_per_day, single.completion) == ("no_data", None, None)
    same_time = eta([(NOW, 5), (NOW, 9)], deficit=10, now=NOW)
    assert same_time.state == "no_data"
    assert eta([], deficit=10, now=NOW).state == "no_data"


def test_beyond_the_calendar() -> None:
    history = [(NOW - timedelta(days=7), 0), (NOW, 1)]
    estimate = eta(history, deficit=10**12, now=NOW)
    assert estimate.state == "beyond_calendar"
    assert estimate.completion is None
    assert estimate.days_remaining == pytest.approx(7e12)


def test_as_dict_is_json() -> None:
    payload = eta(_daily(10.0), deficit=25, now=NOW).as_dict()
    assert payload["completion"] == "2026-11-18T00:00:00+00:00"
    json.dumps(payload, allow_nan=False)
    json.dumps(eta([], deficit=3, now=NOW).as_dict(), allow_nan=False)


@pytest.mark.parametrize(
    ("history", "kwargs", "message"),
    [
        ([], {"now": datetime(2026, 1, 1)}, "now is a naive datetime"),  # noqa: DTZ001
        ([(datetime(2026, 11, 14), 1)], {}, r"history\[0\] timestamp is a naive"),  # noqa: DTZ001
        ([(NOW + timedelta(hours=1), 1)], {}, "after now"),
        ([(NOW, -1)], {}, "must not be negative"),
        ([(NOW, float("nan"))], {}, "finite number"),
        ([(NOW, "7")], {}, "finite number"),
        ([(NOW,)], {}, "pair"),
        ([("2026-11-14", 3)], {}, "must be a datetime"),
        ([], {"deficit": -1}, "deficit"),
        ([], {"deficit": 2.5}, "deficit"),
        ([], {"window": timedelta(0)}, "window"),
        ([], {"method": "median"}, "method"),
    ],
)
def test_bad_input(history: object, kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"deficit": 5, "now": NOW, **kwargs}
    with pytest.raises(InputError, match=message):
        eta(history, **options)  # type: ignore[arg-type]
