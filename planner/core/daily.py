"""Thinning a time series to one point a day: the burn-up chart over weeks of snapshots.

A snapshot is kept whenever the counts change, up to one per sync (288 a day at five-minute
syncs); a chart or table over months wants one point a day, the day's closing state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo


def last_of_each_day(stamps: Sequence[datetime], zone: tzinfo) -> list[int]:
    """Indices of the last of ``stamps`` (aware, oldest first) on each calendar day in ``zone``,
    ascending; a tie in time keeps the later index (the later write)."""
    kept: list[int] = []
    previous = None
    for i, stamp in enumerate(stamps):
        day = stamp.astimezone(zone).date()
        if kept and day == previous:
            kept[-1] = i
        else:
            kept.append(i)
        previous = day
    return kept
