from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from planner.core.daily import last_of_each_day

T0 = datetime(2026, 11, 8, 22, 30, tzinfo=UTC)


def test_the_last_stamp_of_each_day_is_kept() -> None:
    stamps = [T0 + timedelta(hours=h) for h in (0, 1, 1, 2, 30)]  # 22:30, 23:30 x2, 00:30, ...
    assert last_of_each_day(stamps, UTC) == [2, 3, 4]
    assert last_of_each_day([], UTC) == []


def test_days_are_counted_in_the_given_zone() -> None:
    # 22:30 and 23:30 UTC are 23:30 and 00:30 in Berlin (UTC+1 in November)
    stamps = [T0, T0 + timedelta(hours=1)]
    assert last_of_each_day(stamps, UTC) == [1]
    assert last_of_each_day(stamps, ZoneInfo("Europe/Berlin")) == [0, 1]
