"""The dashboard, the webhook receiver and the daemon's metrics over real HTTP: no request gets
through without the exact token or secret, and every check is the constant-time compare."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from planner.daemon.metrics import MetricsServer
from planner.telemetry import Telemetry
from planner.web import COOKIE, SECRET_HEADER, WEBHOOK_PATH, BackgroundServer, WebConfig, create_app

TOKEN = "dash-Tok3n-7f1c9e"
SECRET = "hook-S3cret-2b8d4a"


def near_misses(value: str) -> list[str]:
    """Guesses a byte-by-byte or sloppy compare would let through."""
    return [
        value[:-1],  # a prefix
        value + "x",  # a longer string starting with it
        value.upper(),
        value[: len(value) // 2],
        "x" * len(value),  # same length
    ]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    (tmp_path / "reports" / "2026-12-01").mkdir(parents=True)
    (tmp_path / "reports" / "2026-12-01" / "report.json").write_text("{}")
    config = WebConfig(
        tmp_path / "reports", tmp_path / "artifacts", token=TOKEN, webhook_secret=SECRET
    )
    server = BackgroundServer(create_app(config, on_webhook=seen.append), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}", seen
    finally:
        server.stop()


def test_the_webhook_needs_the_exact_secret(web: tuple[str, list[str]]) -> None:
    url, seen = web
    body = {"action": "ANNOTATION_CREATED"}
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.post(WEBHOOK_PATH, json=body).status_code == 403
        for guess in ["", *near_misses(SECRET)]:
            answer = client.post(WEBHOOK_PATH, json=body, headers={SECRET_HEADER: guess})
            assert answer.status_code == 403, guess
        # the dashboard token is not the webhook secret, in any header
        as_token = {"Authorization": f"Bearer {TOKEN}", SECRET_HEADER: TOKEN}
        assert client.post(WEBHOOK_PATH, json=body, headers=as_token).status_code == 403
        in_query = client.post(f"{WEBHOOK_PATH}?secret={SECRET}", json=body)
        assert in_query.status_code == 403
        assert seen == [], "no refused call reached the daemon"
        right = client.post(WEBHOOK_PATH, json=body, headers={SECRET_HEADER: SECRET})
        assert right.status_code == 204
    assert seen == ["ANNOTATION_CREATED"]


def test_the_dashboard_needs_the_exact_token(web: tuple[str, list[str]]) -> None:
    url, _ = web
    paths = ("/", "/metrics", "/artifacts/", "/reports/2026-12-01/report.json")
    with httpx.Client(base_url=url, timeout=5) as client:
        for path in paths:
            assert client.get(path).status_code == 401, path
            for guess in ["", *near_misses(TOKEN)]:
                bearer = client.get(path, headers={"Authorization": f"Bearer {guess}".strip()})
                assert bearer.status_code == 401, (path, guess)
                cookie = httpx.get(url + path, cookies={COOKIE: guess}, timeout=5)
                assert cookie.status_code == 401, (path, guess)
                query = client.get(path, params={"token": guess})
                assert query.status_code == 401, (path, guess)
            # the secret of the webhook is no dashboard token
            answer = client.get(path, headers={"Authorization": f"Bearer {SECRET}"})
            assert answer.status_code == 401
            basic = client.get(path, auth=("planner", TOKEN))
            assert basic.status_code == 401, "only a bearer token counts"
        good = client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200
        assert TOKEN not in good.text
        assert client.get("/healthz").status_code == 200, "health stays open for probes"


def test_the_daemons_metrics_need_the_exact_token() -> None:
    server = MetricsServer(Telemetry(), host="127.0.0.1", port=0, token=TOKEN).start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert httpx.get(url, timeout=5).status_code == 401
        for guess in near_misses(TOKEN):
            answer = httpx.get(url, headers={"Authorization": f"Bearer {guess}"}, timeout=5)
            assert answer.status_code == 401, guess
        good = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert good.status_code == 200
        assert "planner_" in good.text
    finally:
        server.stop()


def test_every_check_is_the_constant_time_compare(
    web: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``==`` on secrets returns at the first differing byte, which leaks the secret to a
    patient caller; ``hmac.compare_digest`` does not. The real compare runs, only observed."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def observed(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", observed)
    url, _ = web
    httpx.post(url + WEBHOOK_PATH, json={"action": "X"}, headers={SECRET_HEADER: "guess"})
    assert (b"guess", SECRET.encode()) in calls
    httpx.get(url + "/", headers={"Authorization": "Bearer guess2"})
    assert (b"guess2", TOKEN.encode()) in calls
    server = MetricsServer(Telemetry(), host="127.0.0.1", port=0, token=TOKEN).start()
    try:
        httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers={"Authorization": "Bearer g3"})
    finally:
        server.stop()
    assert (b"g3", TOKEN.encode()) in calls
