"""When will a class's quota be met, at the rate it has been labelled lately?

``history`` is a sequence of ``(timestamp, cumulative count)`` points for one class. The rate
is taken over the points inside ``[now - window, now]``: the least-squares slope of count on
time (``method="lstsq"``, robust to one odd point) or ``(last - first) / elapsed``
(``method="endpoints"``). The quota is expected ``deficit / rate`` days after ``now``. With
fewer than two distinct times in the window, or a rate that is not positive, there is no
estimate and ``state`` says why.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from numbers import Real
from typing import Any, Literal, SupportsIndex

import numpy as np

from planner.errors import InputError

DEFAULT_WINDOW = timedelta(days=7)
_SECONDS_PER_DAY = 86_400.0

EtaState = Literal["met", "on_track", "stalled", "no_data", "beyond_calendar"]
"""``met``: deficit 0; ``on_track``: an estimate exists; ``stalled``: rate 0 or negative;
``no_data``: under two distinct times in the window; ``beyond_calendar``: after year 9999."""


@dataclass(frozen=True, slots=True)
class EtaEstimate:
    """Expected completion of one class's quota."""

    state: EtaState
    deficit: int
    rate_per_day: float | None
    """Samples labelled per day over the window; ``None`` without two distinct times."""
    days_remaining: float | None
    completion: datetime | None
    points_used: int
    method: Literal["lstsq", "endpoints"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "deficit": self.deficit,
            "rate_per_day": self.rate_per_day,
            "days_remaining": self.days_remaining,
            "completion": self.completion.isoformat() if self.completion else None,
            "points_used": self.points_used,
            "method": self.method,
        }


def _aware(moment: object, what: str) -> datetime:
    if not isinstance(moment, datetime):
        raise InputError(f"{what} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InputError(f"{what} is a naive datetime ({moment}); give it a timezone, e.g. UTC")
    return moment


def _points(
    history: Sequence[tuple[datetime, float]], now: datetime, window: timedelta
) -> tuple[list[float], list[float]]:
    """Days before ``now`` (negative) and counts of the points inside the window."""
    days: list[float] = []
    counts: list[float] = []
    for i, point in enumerate(history):
        if not isinstance(point, tuple | list) or len(point) != 2:
            raise InputError(f"history[{i}] must be a (timestamp, count) pair, got {point!r}")
        moment, count = _aware(point[0], f"history[{i}] timestamp"), point[1]
        if isinstance(count, bool) or not isinstance(count, Real) or not math.isfinite(count):
            raise InputError(f"history[{i}] count must be a finite number, got {count!r}")
        if count < 0:
            raise InputError(f"history[{i}] count must not be negative, got {count}")
        if moment > now:
            raise InputError(
                f"history[{i}] is at {moment.isoformat()}, after now ({now.isoformat()}); "
                "check the clock or pass the right now"
            )
        if moment >= now - window:
            # (moment - now) works across time zones; only aware datetimes get here
            days.append((moment - now).total_seconds() / _SECONDS_PER_DAY)
            counts.append(float(count))
    return days, counts


def _rate(days: list[float], counts: list[float], method: str) -> float | None:
    if len(set(days)) < 2:
        return None
    x = np.asarray(days)
    y = np.asarray(counts)
    if method == "endpoints":
        first, last = int(np.argmin(x)), int(np.argmax(x))
        return float((y[last] - y[first]) / (x[last] - x[first]))
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())


def eta(
    history: Sequence[tuple[datetime, float]],
    *,
    deficit: int,
    now: datetime,
    window: timedelta = DEFAULT_WINDOW,
    method: Literal["lstsq", "endpoints"] = "lstsq",
) -> EtaEstimate:
    """Estimate when ``deficit`` more samples of a class will be labelled; see module docstring.

    Timestamps and ``now`` must be timezone-aware. ``history`` need not be sorted.
    """
    _aware(now, "now")
    if isinstance(deficit, bool) or not isinstance(deficit, SupportsIndex) or deficit < 0:
        raise InputError(f"deficit must be a non-negative integer, got {deficit!r}")
    deficit = operator.index(deficit)
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise InputError(f"window must be a positive timedelta, got {window!r}")
    if method not in ("lstsq", "endpoints"):
        raise InputError(f"method must be 'lstsq' or 'endpoints', got {method!r}")
    days, counts = _points(history, now, window)
    rate = _rate(days, counts, method)
    common: dict[str, Any] = {
        "deficit": deficit,
        "rate_per_day": rate,
        "points_used": len(days),
        "method": method,
    }
    if deficit == 0:
        return EtaEstimate(state="met", days_remaining=0.0, completion=now, **common)
    if rate is None:
        return EtaEstimate(state="no_data", days_remaining=None, completion=None, **common)
    if rate <= 0.0:
        return EtaEstimate(state="stalled", days_remaining=None, completion=None, **common)
    remaining = deficit / rate
    try:
        completion = now + timedelta(days=remaining)
    except OverflowError:
        return EtaEstimate(
            state="beyond_calendar", days_remaining=remaining, completion=None, **common
        )
    return EtaEstimate(state="on_track", days_remaining=remaining, completion=completion, **common)
