"""``planner run`` refuses a dashboard.host beyond loopback without a token before it writes
anything: its metrics and its webhook receiver would listen there."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from planner.daemon.run import run_daemon
from planner.errors import ConfigError
from planner.settings import Settings


@pytest.mark.parametrize(
    "board",
    [
        pytest.param({"metrics_port": 8766}, id="metrics"),
        pytest.param(
            {
                "metrics_port": 0,
                "webhook_secret": "s3cret",
                "webhook_url": "http://planner.internal:8765/webhook/label-studio",
            },
            id="webhook receiver",
        ),
    ],
)
def test_an_exposed_server_without_a_token_refuses_to_start_before_the_store_is_made(
    board: dict[str, Any], tmp_path: Path, no_planner_env: None
) -> None:
    database = tmp_path / "planner.db"
    settings = Settings(
        label_studio={"url": "http://127.0.0.1:1", "project_id": 3, "token": "token"},
        store={"url": f"sqlite:///{database}"},
        dashboard={"host": "0.0.0.0", **board},  # noqa: S104
    )
    stopped = threading.Event()
    stopped.set()  # were it to start, it would stop at once
    with pytest.raises(ConfigError, match=r"dashboard\.host = 0\.0\.0\.0: .* needs a token"):
        run_daemon(settings, stop=stopped)
    assert not database.exists(), "refused before the store was created and migrated"
