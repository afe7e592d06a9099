"""The receiver served in a thread of another program (as `planner run` does), over real HTTP."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from planner.errors import TransientError
from planner.settings import Settings
from planner.web import SECRET_HEADER, WEBHOOK_PATH, BackgroundServer, WebConfig, create_app


def test_a_background_server_hands_webhooks_to_its_callback(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    config = WebConfig(tmp_path, tmp_path, webhook_secret="s3cret-hook")
    app = create_app(config, on_webhook=lambda a: seen.append((a, threading.current_thread().name)))
    server = BackgroundServer(app, "127.0.0.1", 0)
    port = server.port
    assert port > 0
    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    try:
        body = {"action": "ANNOTATION_UPDATED"}
        assert httpx.post(url, json=body, timeout=5).status_code == 403
        wrong = {SECRET_HEADER: "guess"}
        assert httpx.post(url, json=body, headers=wrong, timeout=5).status_code == 403
        right = {SECRET_HEADER: "s3cret-hook"}
        assert httpx.post(url, json=body, headers=right, timeout=5).status_code == 204
        assert [action for action, _ in seen] == ["ANNOTATION_UPDATED"]
        assert seen[0][1] != "planner-web", "the callback runs off the server's event loop"
        with pytest.raises(TransientError, match=r"could not listen on 127\.0\.0\.1"):
            BackgroundServer(app, "127.0.0.1", port, timeout_s=5)  # the port is taken
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json=body, headers=right, timeout=2)


def test_the_web_config_comes_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANNER_DASHBOARD__WEBHOOK_SECRET", "from-the-env")
    monkeypatch.setenv("PLANNER_DASHBOARD__REPORTS_DIR", str(tmp_path / "reports"))
    config = WebConfig.from_settings(Settings())
    assert (config.webhook_secret, config.token) == ("from-the-env", None)
    assert (config.reports_dir, config.host) == (tmp_path / "reports", "127.0.0.1")
    assert WebConfig.from_settings(Settings(), host="::1").host == "::1"
