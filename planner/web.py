"""The read-only dashboard and the Label Studio webhook receiver (Starlette).

Routes: ``/`` the latest daily report and the report history, ``/reports/{day}/{file}`` one
report (HTML, Markdown or JSON), ``/artifacts/`` the emitted artifact versions and their files
for download, ``/healthz`` (no auth, for probes), ``/metrics`` (Prometheus), and
``POST /webhook/label-studio`` that only asks for an early sync.

Bound to loopback by default. With a token set, every route but ``/healthz`` and the webhook
needs it: ``Authorization: Bearer <token>``, or ``?token=`` once in a browser, which sets an
HttpOnly cookie. Listening beyond loopback without a token is refused. The webhook needs the
shared secret in the ``X-Planner-Secret`` header, whatever the token; a good call is handed to
``on_webhook`` (``planner run`` asks its scheduler for an early sync) and answered 204.

Given ``states`` (each watched project's Label Studio state, ``planner.status.health_line``),
every page opens with it when it is not ok: Label Studio unreachable, slow, refusing the token
or the project gone, since when, and the next try. Given ``warnings`` (the last scoring run's,
``planner.status.scoring_lines``, and what to set, ``served_lines``), the same alert lists
them: chunks left unscored, no BALD, a model file passed over, images Label Studio serves from a
folder the workers are not given.

``BackgroundServer`` runs the app in a thread of another program (the daemon serves its own
receiver that way).
"""

from __future__ import annotations

import contextlib
import hmac
import html
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp

from planner.artifacts import list_versions
from planner.errors import ConfigError, PlannerError, TransientError
from planner.ports import WEBHOOK_SECRET_HEADER
from planner.settings import Settings
from planner.telemetry import Telemetry

COOKIE = "planner_token"
SECRET_HEADER = WEBHOOK_SECRET_HEADER
WEBHOOK_PATH = "/webhook/label-studio"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REPORT_FILES = {"report.html": "text/html", "report.md": "text/markdown", "report.json": None}
_PUBLIC = ("/healthz", WEBHOOK_PATH)
_PROCESS = CollectorRegistry()
ProcessCollector(registry=_PROCESS)


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What the dashboard serves and how it is protected."""

    reports_dir: Path
    artifacts_dir: Path
    token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"

    @classmethod
    def from_settings(cls, settings: Settings, *, host: str | None = None) -> WebConfig:
        board = settings.dashboard
        return cls(
            reports_dir=board.reports_dir,
            artifacts_dir=settings.artifacts.dir,
            token=board.token.get_secret_value() if board.token else None,
            webhook_secret=board.webhook_secret.get_secret_value()
            if board.webhook_secret
            else None,
            host=host or board.host,
        )


Health = Callable[[], Mapping[str, Any]]
"""Returns at least ``{"ok": bool}``; served as JSON, 503 when not ok."""
OnWebhook = Callable[[str], None]
"""Called with the webhook's action (e.g. ``ANNOTATION_CREATED``)."""
States = Callable[[], Sequence[tuple[int, str]]]
"""``(Label Studio project id, state line)`` of each watched project."""
Warnings = Callable[[], Sequence[tuple[int, str]]]
"""``(Label Studio project id, warning line)``: what the watched projects' last runs could
not do."""


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if token:
        return
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback:
        raise ConfigError(
            f"dashboard.host = {host}: listening beyond loopback needs a token; set "
            "PLANNER_DASHBOARD__TOKEN (or dashboard.token_file) or bind to 127.0.0.1"
        )


def create_app(
    config: WebConfig,
    *,
    telemetry: Telemetry | None = None,
    health: Health | None = None,
    on_webhook: OnWebhook | None = None,
    states: States | None = None,
    warnings: Warnings | None = None,
) -> Starlette:
    """The dashboard application for ``config``."""
    check_exposure(config.host, config.token)
    # The planner's metrics live in the daemon (`planner run` serves them on
    # dashboard.metrics_port); without them here, /metrics shows this process only.
    views = _Views(config, telemetry, health, on_webhook, states, warnings)
    middleware = []
    if config.token:
        middleware.append(Middleware(BaseHTTPMiddleware, dispatch=_TokenGate(config.token)))
    else:  # loopback only: no page for another name (a DNS-rebinding site) to read
        middleware.append(Middleware(BaseHTTPMiddleware, dispatch=_loopback_names_only))
    return Starlette(
        routes=[
            Route("/healthz", views.healthz),
            Route("/metrics", views.metrics),
            Route("/", views.index),
            Route("/reports/{day}/{name}", views.report),
            Route("/artifacts/", views.artifacts),
            Route("/artifacts/{version}/{name}", views.artifact),
            Route(WEBHOOK_PATH, views.webhook, methods=["POST"]),
        ],
        middleware=middleware,
    )


@dataclass(frozen=True, slots=True)
class _Views:
    config: WebConfig
    telemetry: Telemetry | None
    health_check: Health | None
    on_webhook: OnWebhook | None
    states: States | None = None
    warnings: Warnings | None = None

    async def healthz(self, _: Request) -> Response:
        state = dict(self.health_check()) if self.health_check else {"ok": True}
        return JSONResponse(state, status_code=200 if state.get("ok") else 503)

    async def metrics(self, _: Request) -> Response:
        body = self.telemetry.render() if self.telemetry else generate_latest(_PROCESS)
        return Response(body, media_type="text/plain; version=0.0.4")

    async def index(self, _: Request) -> Response:
        days = _report_days(self.config.reports_dir)
        latest = self.config.reports_dir / days[0] / "report.html" if days else None
        banner = await run_in_threadpool(self._banner)  # it may read the database
        if latest is None or not latest.is_file():
            return HTMLResponse(_page("Annotation Planner", f"{banner}<p>No report yet.</p>"))
        body = latest.read_text(encoding="utf-8")
        return HTMLResponse(body.replace("<body>", f"<body>{banner}{_history_nav(days)}", 1))

    def _banner(self) -> str:
        """The Label Studio state of each project that is not ok, and its warnings (its last
        scoring run's, what to set), as an alert."""
        states, failed = _read(self.states)
        lines = [
            f"<li>project {pid}: Label Studio {html.escape(line)}</li>"
            for pid, line in states
            if line not in ("ok", "unknown")  # unknown: no daemon has watched it yet, no fault
        ]
        if failed is not None:
            lines.append(f"<li>project 0: Label Studio unknown: {html.escape(failed)}</li>")
        warnings, unread = _read(self.warnings)
        lines += [f"<li>project {pid}: {html.escape(line)}</li>" for pid, line in warnings]
        if unread is not None and unread != failed:  # the same database error once is enough
            lines.append(f"<li>scoring warnings unknown: {html.escape(unread)}</li>")
        return f'<div role="alert"><ul>{"".join(lines)}</ul></div>' if lines else ""

    async def report(self, request: Request) -> Response:
        day, name = request.path_params["day"], request.path_params["name"]
        path = self.config.reports_dir / day / name
        if not _DAY.match(day) or name not in _REPORT_FILES or not path.is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path, media_type=_REPORT_FILES[name])

    async def artifacts(self, _: Request) -> Response:
        rows = [
            f'<li><a href="/artifacts/{html.escape(v)}/{html.escape(f)}">'
            f"{html.escape(v)}/{html.escape(f)}</a></li>"
            for v, files in _artifact_files(self.config.artifacts_dir).items()
            for f in files
        ]
        listing = f"<ul>{''.join(rows)}</ul>" if rows else "<p>None yet.</p>"
        return HTMLResponse(_page("Artifacts", listing))

    async def artifact(self, request: Request) -> Response:
        version, name = request.path_params["version"], request.path_params["name"]
        if name not in _artifact_files(self.config.artifacts_dir).get(version, ()):
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(self.config.artifacts_dir / version / name, filename=name)

    async def webhook(self, request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "")
        secret = self.config.webhook_secret
        if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
            return PlainTextResponse("forbidden", status_code=403)
        try:
            payload = await request.json()
        except ValueError:
            return PlainTextResponse("body is not JSON", status_code=400)
        action = payload.get("action") if isinstance(payload, dict) else None
        if not isinstance(action, str):
            return PlainTextResponse("no action in the payload", status_code=400)
        if self.on_webhook is not None:
            await run_in_threadpool(self.on_webhook, action)  # it may touch a database
        return Response(status_code=204)


def _read(lines: States | None) -> tuple[Sequence[tuple[int, str]], str | None]:
    """What ``lines`` returns, or why it could not be read (a database down or not there)."""
    if lines is None:
        return [], None
    try:
        return lines(), None
    except PlannerError as exc:
        return [], str(exc)


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` for uvicorn to listen on (IPv6 when ``host`` has a
    colon); ``OSError`` when the port is taken or the host is not an address of this machine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class BackgroundServer:
    """An app served by uvicorn in a daemon thread; ``stop()`` ends it."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, timeout_s: float = 10.0) -> None:
        # Bound here, so a taken port is this caller's error and not a dying thread's.
        try:
            self._socket = bound_socket(host, port)
        except OSError as exc:
            raise TransientError(
                f"could not listen on {host}:{port} ({exc.strerror}); change dashboard.host / "
                "dashboard.port, or stop what listens there"
            ) from None
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="planner-web"
        )
        self._thread.daemon = True
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                self.stop()
                raise TransientError(f"the web server on {host}:{port} did not start")
            time.sleep(0.02)

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose, when asked for 0)."""
        port: int = self._socket.getsockname()[1]
        return port

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@dataclass(frozen=True, slots=True)
class _TokenGate:
    token: str = field(repr=False)

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in _PUBLIC:
            return await call_next(request)
        if self._matches(request.query_params.get("token", "")):
            # a browser link: always off the URL (history, Referer), into a cookie. Lax, not
            # Strict: a link opened from chat or mail is a cross-site navigation, on which a
            # Strict cookie is not sent, and the page after the redirect would ask again
            target = request.url.remove_query_params("token")
            response = RedirectResponse(str(target), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="lax")
            return response
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header.lower().startswith("bearer ") else ""
        if self._matches(bearer) or self._matches(request.cookies.get(COOKIE, "")):
            return await call_next(request)
        return PlainTextResponse(
            "a token is needed: send 'Authorization: Bearer <token>' or open /?token=<token>",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _matches(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


async def _loopback_names_only(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Without a token the dashboard listens on loopback only, and a page another site gets
    a browser to load from it must not be readable either: a site whose name resolves to
    127.0.0.1 (DNS rebinding) sends its own name as the Host. The health check and the
    webhook, which need no token anyway, answer any name."""
    host = (request.url.hostname or "").strip("[]").lower()
    if request.url.path in _PUBLIC or host in LOOPBACK_NAMES:
        return await call_next(request)
    return PlainTextResponse(
        f"this dashboard answers on 127.0.0.1 or localhost, not {host!r}; set dashboard.token "
        "to serve it under another name",
        status_code=403,
    )


def _report_days(root: Path) -> list[str]:
    """The days with an HTML report, newest first (a day whose report failed has none)."""
    if not root.is_dir():
        return []
    return sorted(
        (
            p.name
            for p in root.iterdir()
            if p.is_dir() and _DAY.match(p.name) and (p / "report.html").is_file()
        ),
        reverse=True,
    )


def _artifact_files(root: Path) -> dict[str, list[str]]:
    """Version folder -> plain files in it; links and anything else are never served.

    Only the emitted versions (``v0001``...): the artifacts folder also holds, by default,
    the workers' pixel cache and the bootstrap networks, which are no download."""
    found: dict[str, list[str]] = {}
    for name in list_versions(root):
        version = root / name
        if not version.is_symlink():
            found[name] = sorted(
                f.name for f in version.iterdir() if f.is_file() and not f.is_symlink()
            )
    return found


def _history_nav(days: list[str]) -> str:
    links = " ".join(f'<a href="/reports/{d}/report.html">{d}</a>' for d in days[:30])
    return (
        f'<nav aria-label="Report history">History: {links} · '
        '<a href="/artifacts/">Artifacts</a> · <a href="/metrics">Metrics</a></nav>'
    )


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
