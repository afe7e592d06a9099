"""What `planner run` does with Label Studio's webhook: it registers it once Label Studio takes
it, and a deleted task's webhook reconciles; the in-memory Label Studio and a SQLite store."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from planner.core.quotas import Quota
from planner.daemon.run import WebhookRegistration, run_daemon, webhook_trigger
from planner.daemon.service import ProjectDaemon
from planner.errors import ConfigError
from planner.settings import load_settings
from planner.store import Store
from planner.store.models import Task
from planner.web import SECRET_HEADER
from tests.unit.daemon.helpers import (
    Project150,
    TableScorer,
    by_task_id,
    digits_project,
    make_daemon,
)

URL = "http://planner.internal:8765/webhook/label-studio"
TARGETS = [i % 10 for i in range(40)]


class _Schedule:
    """The schedule as the webhook sees it: the leader's (running); the jobs asked for."""

    running = True

    def __init__(self) -> None:
        self.asked: list[str] = []

    def run_soon(self, name: str) -> None:
        self.asked.append(name)


def _daemon(store: Store, project: Project150, now: list[datetime]) -> ProjectDaemon:
    scorer = TableScorer(store, by_task_id)
    return make_daemon(project, store, [Quota("7", target=40)], scorer, clock=lambda: now[0])


def test_a_webhook_label_studio_could_not_take_at_the_start_is_registered_after_a_sync(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = digits_project(TARGETS, labelled=10, tasks=40)
    calls: list[str] = []
    register = project.fake.ensure_webhook

    def counted(project_id: int, url: str, *, secret: str) -> int:
        calls.append(url)
        return register(project_id, url, secret=secret)

    monkeypatch.setattr(project.fake, "ensure_webhook", counted)
    now = [datetime.now(UTC)]
    daemon = _daemon(store, project, now)
    webhook = WebhookRegistration(project.fake, project.pid, URL, "s3cret")
    daemon.on_synced = webhook.ensure
    project.fake.unreachable = True  # down when the daemon starts
    webhook.ensure()
    assert daemon.sync() is None
    webhook.ensure()
    warned = [r for r in caplog.records if "could not register" in r.getMessage()]
    assert len(warned) == 1, "said once per reason, not at every try"
    assert warned[0].levelno == logging.WARNING
    project.fake.unreachable = False
    now[0] += timedelta(minutes=1)  # past the backoff
    assert daemon.sync() is not None
    (hook,) = project.fake.list_webhooks(project.pid)
    assert hook[1:] == (URL, {SECRET_HEADER: "s3cret"})
    assert len(calls) == 3, "two tries while it was down, then the one after the sync"
    assert daemon.sync() is not None
    assert len(calls) == 3, "registered once, not again at every sync"


def test_a_webhook_url_without_a_secret_refuses_to_start(
    tmp_path: Path, no_planner_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""[label_studio]
url = "http://127.0.0.1:1"
project_id = 3
[store]
url = "sqlite:///{tmp_path / "planner.db"}"
[dashboard]
metrics_port = 0
webhook_url = "{URL}"
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", "token")
    stopped = threading.Event()
    stopped.set()  # were it to start, it would stop at once
    with pytest.raises(ConfigError, match=r"webhook_url is set but dashboard\.webhook_secret"):
        run_daemon(load_settings(config), stop=stopped)
    assert not (tmp_path / "planner.db").exists(), "refused before anything was written"


def _state(store: Store, task_id: int) -> str:
    with store.session() as session:
        return session.exec(select(Task.state).where(Task.ls_task_id == task_id)).one()


def test_a_tasks_deleted_webhook_reconciles(store: Store) -> None:
    project = digits_project(TARGETS, labelled=10, tasks=40)
    now = [datetime.now(UTC)]
    daemon = _daemon(store, project, now)
    schedule = _Schedule()
    trigger = webhook_trigger(daemon, schedule)
    assert daemon.sync() is not None  # the first sync reconciles; the next one is hours away
    gone = project.ids[-1]
    project.fake.delete_task(gone)
    trigger("ANNOTATION_CREATED")
    assert daemon.sync() is not None  # the sync job the webhook asked for
    assert _state(store, gone) == "unlabelled", "an incremental sync does not see deletions"
    project.fake.unreachable = True
    trigger("TASKS_DELETED")
    trigger("TASKS_DELETED")
    assert schedule.asked == ["sync"] * 3
    assert daemon.sync() is None  # Label Studio down: the reconcile waits for the next sync
    project.fake.unreachable = False
    now[0] += timedelta(minutes=1)
    assert daemon.sync() is not None
    assert _state(store, gone) == "deleted"
