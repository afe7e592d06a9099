"""What the daemon knows about Label Studio: ok, or which fault since when, and when to retry;
and what its last scoring run could not do (``ScoringRun``).

A failed call moves the state to the fault it shows (``classify``) and schedules the next try
with exponential backoff (``planner.core.backoff``, capped by ``schedule.retry_backoff_max``);
the next successful sync moves it back to ok. The daemon keeps it in memory, in ``/metrics``
and in the store (``planner status`` and the dashboard read it there).

    ok            the last call succeeded
    unreachable   no connection: the server is down, a connection was cut
    slow          no answer within label_studio.timeout_s
    failing       the server answered 5xx (or 408/429)
    unauthorized  the token was rejected (401/403): the daemon re-reads label_studio.token_file
    gone          the project does not exist any more (404)
    error         anything else a call raised (the message says what to fix)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from planner.core.backoff import backoff_s
from planner.errors import (
    AuthError,
    GoneError,
    PlannerError,
    SlowError,
    TransientError,
    UnreachableError,
)

BackendState = Literal["ok", "unreachable", "slow", "failing", "unauthorized", "gone", "error"]
STATES: tuple[BackendState, ...] = (
    "ok",
    "unreachable",
    "slow",
    "failing",
    "unauthorized",
    "gone",
    "error",
)


def classify(exc: PlannerError) -> BackendState:
    """The state a failed Label Studio call shows."""
    kinds: tuple[tuple[type[PlannerError], BackendState], ...] = (
        (UnreachableError, "unreachable"),
        (SlowError, "slow"),
        (TransientError, "failing"),
        (AuthError, "unauthorized"),
        (GoneError, "gone"),
    )
    return next((state for kind, state in kinds if isinstance(exc, kind)), "error")


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """The Label Studio state of one daemon; ``failures`` counts the calls failed in a row."""

    state: BackendState = "ok"
    since: datetime | None = None
    last_error: str | None = None
    failures: int = 0
    retry_at: datetime | None = None

    def failed(
        self, exc: PlannerError, now: datetime, *, base_s: float, max_s: float
    ) -> BackendHealth:
        """After a failed call: the fault, since when, and the next try (backed off)."""
        state = classify(exc)
        failures = self.failures + 1
        delay = timedelta(seconds=backoff_s(failures, base_s, max_s))
        since = self.since if state == self.state and self.since is not None else now
        return BackendHealth(state, since, str(exc), failures, now + delay)

    def recovered(self, now: datetime) -> BackendHealth:
        """After a successful sync; the last error stays, for whoever asks what it was."""
        since = self.since if self.state == "ok" and self.since is not None else now
        return replace(self, state="ok", since=since, failures=0, retry_at=None)

    def due(self, now: datetime) -> bool:
        """Whether Label Studio may be called now (not backing off)."""
        return self.retry_at is None or now >= self.retry_at

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "since": None if self.since is None else self.since.isoformat(),
            "last_error": self.last_error,
            "failures": self.failures,
            "retry_at": None if self.retry_at is None else self.retry_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ScoringRun:
    """The last scoring run of a project: when it ended (aware), the model version it scored
    with (None: none, the pool was empty or nothing finished), what it could not do
    (``PoolResult.warnings``: chunks left unscored, no BALD, a model file passed over) and
    the chunks that failed for good."""

    at: datetime
    model_version: str | None
    warnings: tuple[str, ...] = ()
    failed_chunks: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "at": self.at.isoformat(),
            "model_version": self.model_version,
            "warnings": list(self.warnings),
            "failed_chunks": self.failed_chunks,
        }
