"""Exponential backoff: the daemon waiting out Label Studio, the workers retrying a chunk."""

from __future__ import annotations


def backoff_s(attempt: int, base_s: float, max_s: float = 300.0) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)``, capped."""
    # the exponent is capped too: 2**1100 overflows a float long before a daemon gives up
    return float(min(max_s, base_s * 2.0 ** min(max(0, attempt - 1), 64)))
