"""What ``planner run`` serves: its ``/metrics`` and ``/healthz``, and with
``dashboard.webhook_secret`` the dashboard with Label Studio's webhook receiver.

A standby on the leader's host finds their ports taken; it tries again at every heartbeat, so
once the leader is gone the daemon that took over serves them (a webhook then syncs early
again). The project's webhook is registered in Label Studio once: at the start, or after the
next successful sync if Label Studio could not take it then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from starlette.applications import Starlette

from planner.daemon.metrics import ListenError, MetricsServer
from planner.daemon.schedule import Schedule
from planner.daemon.service import ProjectDaemon
from planner.errors import PlannerError
from planner.ports import AnnotationBackend
from planner.settings import Settings
from planner.status import health_line, scoring_lines, served_lines
from planner.web import BackgroundServer, WebConfig, create_app

log = logging.getLogger("planner.daemon")

TASKS_DELETED = "TASKS_DELETED"
"""The webhook action of deleted tasks, which only a reconciling sync sees."""


def webhook_trigger(daemon: ProjectDaemon, schedule: Schedule) -> Callable[[str], None]:
    """What a Label Studio webhook does: an early sync, reconciling when tasks were deleted
    (the incremental listing does not show them; housekeeping's reconcile is hours away)."""

    def on_webhook(action: str) -> None:
        if schedule.running:  # a standby leaves the sync to the leader
            # a job running now (a sync too) syncs again when it ends
            daemon.want_sync(reconcile=action == TASKS_DELETED)
            schedule.run_soon("sync")

    return on_webhook


@dataclass
class WebhookRegistration:
    """The project's webhook, registered until it once succeeds: at the start, and after each
    successful sync until then (Label Studio down at the start, or refusing the URL)."""

    backend: AnnotationBackend
    project_id: int
    url: str
    secret: str
    done: bool = False
    _said: str = field(default="", init=False, repr=False)

    def ensure(self) -> None:
        if self.done:
            return
        try:
            self.backend.ensure_webhook(self.project_id, self.url, secret=self.secret)
        except PlannerError as exc:  # the poll still syncs; only the early trigger is lost
            if str(exc) != self._said:  # once per reason, not every sync
                log.warning(
                    "could not register the Label Studio webhook (retried after the next sync): %s",
                    exc,
                )
                self._said = str(exc)
            return
        self.done = True
        log.info("Label Studio webhook of project %s calls %s", self.project_id, self.url)


def register_webhook(settings: Settings, backend: AnnotationBackend, daemon: ProjectDaemon) -> None:
    """Register the project's webhook at ``dashboard.webhook_url``, now or after a later sync."""
    board = settings.dashboard
    if board.webhook_url is None or board.webhook_secret is None:
        return
    secret = board.webhook_secret.get_secret_value()
    webhook = WebhookRegistration(backend, daemon.ls_project_id, str(board.webhook_url), secret)
    webhook.ensure()
    daemon.on_synced = webhook.ensure  # Label Studio down now: after a later sync


@dataclass
class Servers:
    """The daemon's metrics and webhook receiver; ``ensure`` starts those missing (at the start
    and at every heartbeat), a port taken said once in the log."""

    settings: Settings
    daemon: ProjectDaemon
    schedule: Schedule
    metrics: MetricsServer | None = None
    receiver: BackgroundServer | None = None
    _said: set[str] = field(default_factory=set, init=False, repr=False)

    def ensure(self) -> None:
        board = self.settings.dashboard
        if board.metrics_port and self.metrics is None:
            try:
                self.metrics = self._metrics(board.metrics_port).start()
            except ListenError as exc:
                self._missing("/metrics and /healthz", exc)
        if board.webhook_secret is not None and self.receiver is None:
            try:
                self.receiver = BackgroundServer(self._app, board.host, board.port)
            except PlannerError as exc:
                self._missing("the webhook receiver", exc)
                return
            log.info("webhook receiver on %s:%s", board.host, self.receiver.port)

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None

    def stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def _missing(self, what: str, exc: PlannerError) -> None:
        # a standby on the leader's host: it polls all the same, and serves once it is free
        if what not in self._said:
            log.warning("%s; running without %s until the port is free", exc, what)
            self._said.add(what)

    def _metrics(self, port: int) -> MetricsServer:
        board, daemon, schedule = self.settings.dashboard, self.daemon, self.schedule
        health = lambda: {  # noqa: E731
            "ok": True,
            "leading": schedule.running,
            "label_studio": daemon.health.as_dict(),
        }
        token = board.token.get_secret_value() if board.token else None
        return MetricsServer(
            daemon.telemetry, host=board.host, port=port, token=token, health=health
        )

    @cached_property
    def _app(self) -> Starlette:
        """The dashboard with the webhook receiver; its webhooks sync early. Built once: a
        standby asks for it at every heartbeat while the port is taken."""
        daemon, project_id = self.daemon, self.daemon.ls_project_id
        return create_app(
            WebConfig.from_settings(self.settings),
            telemetry=daemon.telemetry,
            on_webhook=webhook_trigger(daemon, self.schedule),
            states=lambda: [(project_id, health_line(daemon.health))],
            warnings=lambda: [
                *scoring_lines(daemon.store, project_id),
                *served_lines(daemon.store, self.settings.workers, project_id),
            ],
        )
