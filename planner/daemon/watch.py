"""The daemon's watch on Label Studio: the state after each call, the backoff, the record.

``BackendWatch`` holds the ``planner.health`` state of one project's Label Studio. A failed
call moves it to the fault it shows and sets the next try; until then ``ready()`` is False and
the jobs leave Label Studio alone. Each change goes to ``/metrics`` and to the store (where
``planner status`` and the dashboard read it); a successful sync returns it to ok. A failure
before the project's first sync creates its row, so a daemon that never reached Label Studio
shows as failing instead of not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from planner.errors import PlannerError, StoreError
from planner.health import BackendHealth
from planner.store import Store, ensure_project
from planner.store.sync_state import record_backend_health
from planner.telemetry import Telemetry

log = logging.getLogger("planner.daemon")
BACKOFF_BASE_S = 5.0
"""First wait after a failed Label Studio call; doubled per failure up to the setting's cap."""


@dataclass
class BackendWatch:
    store: Store
    ls_project_id: int
    telemetry: Telemetry
    clock: Callable[[], datetime]
    base_s: float = BACKOFF_BASE_S
    max_s: float = 300.0
    health: BackendHealth = field(default_factory=BackendHealth)

    def ready(self) -> bool:
        """Whether a job may call Label Studio now (not backing off after a failure)."""
        return self.health.due(self.clock())

    def retry_due(self) -> bool:
        """Label Studio failed and the backed-off next try is due."""
        return self.health.state != "ok" and self.ready()

    def waiting(self) -> str:
        h = self.health
        return f"Label Studio {h.state} since {h.since:%H:%M:%S}; next try at {h.retry_at:%H:%M:%S}"

    def failed(self, exc: PlannerError) -> None:
        """After a failed Label Studio call; a store error is not Label Studio's: re-raised."""
        if isinstance(exc, StoreError):
            raise exc
        self.telemetry.failed("label_studio")
        self.health = self.health.failed(exc, self.clock(), base_s=self.base_s, max_s=self.max_s)
        self.telemetry.set_backend(self.health)
        self._record()
        log.warning(
            "Label Studio %s for project %s (%d failed in a row, next try at %s): %s",
            self.health.state,
            self.ls_project_id,
            self.health.failures,
            self.health.retry_at,
            exc,
        )

    def ok(self) -> None:
        """After a successful sync; recorded when the state changes (and the first time)."""
        before = self.health
        self.health = before.recovered(self.clock())
        self.telemetry.set_backend(self.health)
        if before.state != "ok":
            log.info("Label Studio is back for project %s", self.ls_project_id)
        if before.state != "ok" or before.since is None:
            self._record()

    def _record(self) -> None:
        try:
            with self.store.session() as session:
                # before the first sync too: the sync fills in the title and label config
                row = ensure_project(session, ls_project_id=self.ls_project_id)
                record_backend_health(session, int(row.id or 0), self.health)
        except PlannerError:
            log.exception("could not record the Label Studio state")
