"""The adapter's errors say what to fix: translated answers, a closed port, a non-Label Studio."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import jwt
import pytest

from integrations.label_studio.client import LabelStudioBackend, translate
from planner.errors import (
    AuthError,
    ConfigError,
    GoneError,
    TransientError,
    UnreachableError,
    UrlRefusedError,
)


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (401, AuthError, r"rejected the token .*label_studio\.token.*legacy"),
        (403, AuthError, "no access"),
        (404, GoneError, "does not exist.*label_studio.project_id"),
        (400, ConfigError, "refused project 1 \\(400\\): bad"),
        (200, ConfigError, "not Label Studio|other than Label Studio's JSON"),
        (500, TransientError, "will retry"),
        (503, TransientError, "will retry"),
        (429, TransientError, "will retry"),
    ],
)
def test_answers_become_planner_errors(status: int, error: type[Exception], message: str) -> None:
    got = translate(status, "bad", "http://ls", "project 1")
    assert type(got) is error
    assert re.search(message, str(got))


@pytest.mark.parametrize(
    "detail",
    [
        # label_studio 1.23.2 core/utils/io.py validate_ip, and the default detail of
        # core/utils/exceptions.py SsrfBlockedUrlError (a scheme other than http[s])
        "URL resolves to a reserved network address (block: 10.0.0.0/8)",
        "The provided URL was not allowed. URLs must use http:// or https://, and must not "
        "resolve to local or private network addresses when SSRF protection applies.",
    ],
)
def test_a_403_of_ssrf_protection_is_a_refused_url_not_a_token(detail: str) -> None:
    body = str({"status_code": 403, "version": "1.23.2", "detail": detail, "exc_info": None})
    got = translate(403, body, "http://ls", "webhooks of project 1")
    assert type(got) is UrlRefusedError
    assert re.search(r"SSRF_PROTECTION_ENABLED=false.*dashboard\.webhook_url", str(got))
    denied = str({"detail": "You do not have permission to perform this action."})
    assert type(translate(403, denied, "http://ls", "webhooks of project 1")) is AuthError


def test_a_closed_port_is_transient_after_bounded_retries() -> None:
    backend = LabelStudioBackend("http://127.0.0.1:9", "token", timeout_s=2, attempts=2)
    with backend, pytest.raises(UnreachableError, match=r"cannot reach.*label_studio\.url"):
        backend.project(1)


class _HtmlPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>login</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def html_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_url_that_is_not_label_studio_says_so(html_server: str) -> None:
    with LabelStudioBackend(html_server, "token", timeout_s=5) as backend:
        with pytest.raises(ConfigError, match="other than Label Studio's JSON"):
            backend.project(1)
        with pytest.raises(ConfigError, match="other than Label Studio's JSON"):
            backend.task_ids(1)


def personal_token(expires_in: timedelta) -> str:
    """A JWT refresh token shaped like Label Studio's personal access tokens (unsigned by it)."""
    claims = {"token_type": "refresh", "user_id": 1, "exp": datetime.now(UTC) + expires_in}
    return jwt.encode(claims, "not the key of any Label Studio, 32+ bytes", algorithm="HS256")


def test_an_expired_personal_access_token_says_what_to_do() -> None:
    # the SDK refuses it as the client is built, before any request
    with pytest.raises(AuthError, match=r"(?s)expired.*Personal Access Token"):
        LabelStudioBackend("http://127.0.0.1:9", personal_token(timedelta(days=-1)))


class _Recorder(_HtmlPage):
    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.paths.append(self.path)
        self.do_GET()


def test_the_token_is_refreshed_under_the_urls_path() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/label-studio"
    try:
        token = personal_token(timedelta(days=1))
        # an HTML page where the refresh's JSON should be: our error, not a JSONDecodeError
        with (
            LabelStudioBackend(url, token, timeout_s=5) as backend,
            pytest.raises(ConfigError, match="other than Label Studio's JSON"),
        ):
            backend.project(1)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert _Recorder.paths[0] == "/label-studio/api/token/refresh/"
