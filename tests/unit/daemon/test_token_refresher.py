"""The daemon's token refresher after a 401: a token file holding a refused token too."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from integrations.label_studio.client import LabelStudioBackend
from planner.daemon.run import token_refresher
from planner.settings import load_settings
from tests.unit.integrations.test_client_errors import personal_token


def test_an_expired_token_in_the_file_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("legacy-token\n")
    config = tmp_path / "planner.toml"
    config.write_text(
        f'[label_studio]\nurl = "http://127.0.0.1:9"\nproject_id = 1\ntoken_file = "{token_file}"\n'
    )
    settings = load_settings(config, environ=False)
    with LabelStudioBackend("http://127.0.0.1:9", "legacy-token") as backend:
        refresh = token_refresher(settings, backend)
        token_file.write_text(personal_token(timedelta(days=-1)))  # rotated, but expired
        assert refresh() is False
        assert "refused too" in caplog.text
        assert "expired" in caplog.text
        assert refresh() is False, "the same refused token is not tried again"
