"""Strict JSON data: what the planner stores or writes has no NaN or infinity.

A float that is not finite (an empty CSV cell imported into Label Studio, a metric with nothing
to measure) is valid Python and SQLite JSON, but PostgreSQL's ``json`` and strict readers
refuse it, and ``NaN != NaN`` makes data holding one compare unequal to itself. Nor has its
text a NUL character, which PostgreSQL's text refuses (a task's image name holding one failed
every sync).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def _same(value: Any) -> Any:
    return value


def finite_json(value: Any, convert: Callable[[Any], Any] = _same) -> Any:
    """``value`` with NaN and inf turned to None, numpy scalars to Python's, tuples to lists
    and mapping keys to text, recursively: what ``json.dumps(..., allow_nan=False)`` takes;
    a NUL character in text becomes U+FFFD, the replacement character (a name holding one
    names no file: reading it says so). ``convert`` is applied to every value first
    (datetimes to text, say)."""
    value = convert(value)
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {finite_json(str(k)): finite_json(v, convert) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v, convert) for v in value]
    return value
