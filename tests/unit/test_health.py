"""The daemon's Label Studio state: which fault an error shows, backoff, since when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from planner.core.backoff import backoff_s
from planner.errors import (
    AuthError,
    ConfigError,
    GoneError,
    PlannerError,
    SlowError,
    TransientError,
    UnreachableError,
)
from planner.health import BackendHealth, classify

T0 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (UnreachableError("refused"), "unreachable"),
        (SlowError("timeout"), "slow"),
        (TransientError("503"), "failing"),
        (AuthError("401"), "unauthorized"),
        (GoneError("404"), "gone"),
        (ConfigError("400"), "error"),
    ],
)
def test_each_error_shows_its_state(error: PlannerError, state: str) -> None:
    assert classify(error) == state


def test_the_wait_doubles_up_to_the_cap_and_the_state_keeps_its_start() -> None:
    health = BackendHealth()
    waits = []
    for k in range(6):
        now = T0 + timedelta(minutes=k)
        health = health.failed(UnreachableError("down"), now, base_s=5, max_s=60)
        assert health.retry_at is not None
        waits.append((health.retry_at - now).total_seconds())
        assert not health.due(now)
        assert health.due(health.retry_at)
    assert waits == [5, 10, 20, 40, 60, 60]
    assert (health.state, health.since, health.failures) == ("unreachable", T0, 6)
    assert health.last_error == "down"


def test_another_fault_restarts_since_and_recovery_clears_the_backoff() -> None:
    down = BackendHealth().failed(UnreachableError("down"), T0, base_s=5, max_s=60)
    later = T0 + timedelta(minutes=3)
    refused = down.failed(AuthError("401"), later, base_s=5, max_s=60)
    assert (refused.state, refused.since, refused.failures) == ("unauthorized", later, 2)
    back = refused.recovered(later + timedelta(seconds=30))
    assert (back.state, back.failures, back.retry_at) == ("ok", 0, None)
    assert back.since == later + timedelta(seconds=30)
    assert back.last_error == "401", "what went wrong stays readable"
    assert back.due(T0)
    assert back.recovered(T0 + timedelta(hours=1)).since == back.since, "ok since it came back"


def test_backoff_is_capped_even_after_many_failures() -> None:
    assert backoff_s(10_000, 5.0, 300.0) == 300.0
    assert [backoff_s(a, 2.0, 10.0) for a in (0, 1, 2, 3, 4)] == [2.0, 2.0, 4.0, 8.0, 10.0]
