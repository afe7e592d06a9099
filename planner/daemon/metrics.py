"""The daemon's own ``/metrics`` and ``/healthz``: its live ``Telemetry``, scraped by Prometheus.

The metrics live in the daemon's memory (counters of pushes and errors, the leader gauge, the
counts of the last sync), so the daemon serves them itself: prometheus_client's WSGI app on a
small threaded server, beside the scheduler. Same exposure rule as the dashboard: loopback by
default, a bearer token required beyond it.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from planner.errors import ConfigError
from planner.telemetry import Telemetry
from planner.web import check_exposure

log = logging.getLogger("planner.daemon")
Health = Callable[[], Mapping[str, Any]]
StartResponse = Callable[..., Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the daemon's log."""


@dataclass
class _App:
    metrics: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
    token: str | None = field(repr=False)
    health: Health

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            state = dict(self.health())
            status = "200 OK" if state.get("ok") else "503 Service Unavailable"
            start(status, [("Content-Type", "application/json")])
            return [json.dumps(state).encode()]
        if self.token and not _bearer_ok(environ, self.token):
            start("401 Unauthorized", [("WWW-Authenticate", "Bearer")])
            return [b"a token is needed: send 'Authorization: Bearer <token>'\n"]
        if path != "/metrics":
            start("404 Not Found", [("Content-Type", "text/plain")])
            return [b"the daemon serves /metrics and /healthz\n"]
        return self.metrics(environ, start)


def _bearer_ok(environ: Mapping[str, Any], token: str) -> bool:
    header = str(environ.get("HTTP_AUTHORIZATION", ""))
    given = header[7:] if header.lower().startswith("bearer ") else ""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


class ListenError(ConfigError):
    """The metrics port cannot be listened on (taken by another process, say)."""


class MetricsServer:
    """``/metrics`` and ``/healthz`` of one daemon on ``host:port``, in a daemon thread."""

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        host: str,
        port: int,
        token: str | None = None,
        health: Health | None = None,
    ) -> None:
        check_exposure(host, token)
        app = _App(make_wsgi_app(telemetry.registry), token, health or (lambda: {"ok": True}))
        try:
            self._server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
        except OSError as exc:
            raise ListenError(
                f"the daemon's metrics cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "choose a free dashboard.metrics_port, or 0 to turn them off"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="planner-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on http://%s:%s/metrics", self._server.server_name, self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
