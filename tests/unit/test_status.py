"""`planner status`: what the store says about each project, and the health check."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.migration import MigrationContext
from typer.testing import CliRunner

from integrations.label_studio.fake import FakeLabelStudio
from planner.cli import app
from planner.core.quotas import Quota
from planner.daemon.service import ProjectDaemon, unknown_quotas
from planner.health import ScoringRun
from planner.store import DatabaseLease, Store, open_store
from planner.store.db import alembic_config
from planner.store.sync_state import record_scoring, record_sync_error
from planner.sync import sync_project

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/></Choices>
</View>"""


@pytest.fixture
def traffic(store_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeLabelStudio, int]:
    """A project in the in-memory Label Studio; the commands read ``store_url``."""
    monkeypatch.setenv("PLANNER_STORE__URL", store_url)
    fake = FakeLabelStudio()
    return fake, fake.create_project("traffic", CONFIG)


def _never_scores(_project_id: int, _items: Sequence[tuple[int, str]]) -> str:
    raise AssertionError("no cycle runs in these tests")


def _daemon(
    fake: FakeLabelStudio, pid: int, store: Store, *quotas: Quota, **extra: Any
) -> ProjectDaemon:
    """A project daemon over the in-memory Label Studio that never scores."""
    lease = DatabaseLease(store.engine, f"project-{pid}", holder="first")
    return ProjectDaemon(fake, store, pid, quotas, _never_scores, lease, **extra)


def test_status_reports_counts_and_fails_the_check_when_sync_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'planner.db'}"
    monkeypatch.setenv("PLANNER_STORE__URL", url)
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/{i}.png"}} for i in range(5)])
    choice = {"from_name": "kind", "to_name": "image", "type": "choices"}
    fake.annotate(ids[0], [{**choice, "value": {"choices": ["Car"]}}])
    runner = CliRunner()
    with open_store(url) as store:
        report = sync_project(fake, store, pid, now=datetime.now(UTC))
        fresh = runner.invoke(app, ["status", "--check", "--json"])
        assert fresh.exit_code == 0, fresh.output
        data = json.loads(fresh.stdout)
        assert data["projects"][0]["tasks"]["labelled"] == 1
        assert data["projects"][0]["tasks"]["unlabelled"] == 4
        assert data["unhealthy"] == []
        sync_project(fake, store, pid, now=datetime.now(UTC) - timedelta(hours=2))
        assert runner.invoke(app, ["status", "--check"]).exit_code == 1
        sync_project(fake, store, pid, now=datetime.now(UTC))
        with store.session() as session:
            record_sync_error(session, report.project_id, "Label Studio unreachable")
        failing = runner.invoke(app, ["status", "--check"])
        assert failing.exit_code == 1
        assert "Label Studio unreachable" in failing.output


def test_the_check_says_unhealthy_with_exit_1_when_the_store_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # nothing listens on port 1: the store cannot be reached
    monkeypatch.setenv("PLANNER_STORE__URL", "postgresql+psycopg://planner@127.0.0.1:1/planner")
    runner = CliRunner()
    checked = runner.invoke(app, ["status", "--check"])
    assert checked.exit_code == 1, checked.output
    assert "unhealthy" in checked.output
    # without --check it is an error like any other command's
    assert runner.invoke(app, ["status"]).exit_code == 2


def test_a_daemon_that_never_reached_label_studio_fails_the_check(
    store_url: str, traffic: tuple[FakeLabelStudio, int]
) -> None:
    fake, pid = traffic
    fake.unreachable = True  # down from the daemon's start: no sync has made the project row
    runner = CliRunner()
    now = [datetime.now(UTC)]
    with open_store(store_url) as store:
        daemon = _daemon(fake, pid, store, Quota("Car", target=1), clock=lambda: now[0])
        started = runner.invoke(app, ["status", "--check", "--json"])
        assert started.exit_code == 0, "a daemon that has not failed yet is not unhealthy"
        assert daemon.sync() is None
        down = runner.invoke(app, ["status", "--check", "--json"])
        assert down.exit_code == 1, down.output
        data = json.loads(down.stdout)
        assert data["unhealthy"] == [pid]
        (shown,) = data["projects"]
        assert shown["last_sync_at"] is None
        assert shown["label_studio"]["state"] == "unreachable"
        assert shown["label_studio"]["failures"] == 1
        assert "cannot reach the fake Label Studio" in shown["last_error"]
        fake.unreachable = False
        now[0] += timedelta(minutes=1)  # past the backoff
        assert daemon.sync() is not None
        back = runner.invoke(app, ["status", "--check", "--json"])
        assert back.exit_code == 0, back.output
        (shown,) = json.loads(back.stdout)["projects"]
        assert (shown["title"], shown["label_studio"]["state"]) == ("traffic", "ok")


def test_the_check_creates_no_database_and_fails_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "not-yet"
    monkeypatch.setenv("PLANNER_STORE__URL", f"sqlite:///{folder / 'planner.db'}")
    runner = CliRunner()
    checked = runner.invoke(app, ["status", "--check"])
    assert checked.exit_code == 1, checked.output
    assert "does not exist: `planner run` creates it" in checked.output
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__PROJECT_ID", "3")
    monkeypatch.setenv("PLANNER_DASHBOARD__REPORTS_DIR", str(tmp_path / "reports"))
    for reading in ("status", "quotas", "report"):
        refused = runner.invoke(app, [reading])
        assert refused.exit_code == 2, refused.output
        assert "does not exist: `planner run` creates it" in refused.output
    assert not folder.exists(), "a read-only command made the database's folder"
    folder.mkdir()
    assert runner.invoke(app, ["status", "--check"]).exit_code == 1
    assert list(folder.iterdir()) == [], "nor the file in a folder that exists"


def test_status_reads_the_store_as_it_is_without_migrating_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANNER_STORE__URL", store_url)
    runner = CliRunner()
    with open_store(store_url) as store:
        assert runner.invoke(app, ["status", "--check"]).exit_code == 0
        command.downgrade(alembic_config(store.engine), "0005")
        behind = runner.invoke(app, ["status", "--check"])
        assert behind.exit_code == 1, behind.output
        assert "is at revision 0005, this planner reads revision" in behind.output
        with store.engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
        assert revision == "0005", "status migrated the store it only reads"
        command.downgrade(alembic_config(store.engine), "base")
        empty = runner.invoke(app, ["status"])
        assert empty.exit_code == 2
        assert "has no planner tables" in empty.output


def test_a_quota_naming_no_class_is_a_warning_that_fails_no_check(
    store_url: str, traffic: tuple[FakeLabelStudio, int]
) -> None:
    fake, pid = traffic
    runner = CliRunner()
    with open_store(store_url) as store:
        misspelt = _daemon(fake, pid, store, Quota("Car", target=9), Quota("wheelchair", target=9))
        for _ in range(2):
            assert misspelt.sync() is not None
        checked = runner.invoke(app, ["status", "--check", "--json"])
        assert checked.exit_code == 0, checked.output
        data = json.loads(checked.stdout)
        assert data["unhealthy"] == []
        (shown,) = data["projects"]
        assert shown["last_error"] is None
        assert "'wheelchair' is 'Wheelchair' spelled in another case" in shown["config_warning"]
        text = runner.invoke(app, ["status", "--check"])
        assert text.exit_code == 0, text.output
        assert f"project {pid}: warning: quotas ['wheelchair']" in " ".join(text.output.split())
        assert "Rename each [quotas.<Class>] section" in text.output
        assert _daemon(fake, pid, store, Quota("Wheelchair", target=9)).sync() is not None
        fixed = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
        assert fixed["projects"][0]["config_warning"] is None, "the fixed config clears it"


def test_the_error_column_shows_the_daemons_message_as_written(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANNER_STORE__URL", store_url)
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic [night]", CONFIG)
    fake.import_tasks(pid, [{"data": {"image": f"/{i}.png"}} for i in range(3)])
    problem = unknown_quotas([Quota("car", 10)], ("Car", "Wheelchair"), pid)
    assert problem is not None
    with open_store(store_url) as store:
        report = sync_project(fake, store, pid, now=datetime.now(UTC))
        with store.session() as session:
            record_sync_error(session, report.project_id, problem)
        shown = CliRunner().invoke(app, ["status"])
    assert shown.exit_code == 0, shown.output
    assert "[quotas.<Class>]" in shown.output
    assert "traffic [night]" in shown.output


def test_the_last_scoring_run_and_its_warnings_are_shown_and_a_clean_run_clears_them(
    store_url: str, traffic: tuple[FakeLabelStudio, int]
) -> None:
    fake, pid = traffic
    runner = CliRunner()
    failed = "1 of 3 chunk(s) failed and were left unscored: RuntimeError: [x] <bad>"
    passed_over = "model file [old].pt passed over: not a model"
    ended = datetime(2026, 12, 7, 6, 31, tzinfo=UTC)
    with open_store(store_url) as store:
        report = sync_project(fake, store, pid, now=datetime.now(UTC))
        before = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
        assert before["projects"][0]["scoring"] is None, "no run recorded yet"
        with store.session() as session:
            run = ScoringRun(ended, "m-[1]", (failed, passed_over), failed_chunks=1)
            record_scoring(session, report.project_id, run)
        checked = runner.invoke(app, ["status", "--check", "--json"])
        assert checked.exit_code == 0, "a warning fails no health check"
        assert json.loads(checked.stdout)["projects"][0]["scoring"] == {
            "at": "2026-12-07T06:31:00+00:00",
            "model_version": "m-[1]",
            "warnings": [failed, passed_over],
            "failed_chunks": 1,
        }
        text = " ".join(runner.invoke(app, ["status"]).output.split())
        run_line = "last scoring run 2026-12-07 06:31 UTC (model m-[1], 1 chunk(s) failed for good)"
        assert f"project {pid}: {run_line}" in text
        assert f"scoring warning: {failed}" in text, "escaped: rich markup would eat [x]"
        assert f"scoring warning: {passed_over}" in text
        with store.session() as session:
            record_scoring(session, report.project_id, ScoringRun(ended, "m-2"))
        clean = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
        assert clean["projects"][0]["scoring"]["warnings"] == []
        text = runner.invoke(app, ["status"]).output
        assert "(model m-2)" in text
        assert "scoring warning" not in text


def test_status_says_which_folders_label_studio_serves_the_pool_from_until_they_are_set(
    store_url: str, traffic: tuple[FakeLabelStudio, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, pid = traffic
    images = [
        "/data/local-files/?d=cars/1.png",
        "/data/local-files/?d=cars/2.png",
        "/data/upload/1/ab12-3.png",
        "/data/upload/1/ab12-4.png",
        "/data/upload/1/ab12-5.png",
        "/elsewhere/6.png",
    ]
    ids = fake.import_tasks(pid, [{"data": {"image": image}} for image in images])
    choice = {"from_name": "kind", "to_name": "image", "type": "choices"}
    fake.annotate(ids[2], [{**choice, "value": {"choices": ["Car"]}}])  # labelled: not the pool
    runner = CliRunner()
    with open_store(store_url) as store:
        sync_project(fake, store, pid, now=datetime.now(UTC))
    shown = runner.invoke(app, ["status", "--json"])
    assert shown.exit_code == 0, shown.output
    (project,) = json.loads(shown.stdout)["projects"]
    assert project["served_by_label_studio"] == {"local_files": 2, "uploads": 2}
    text = runner.invoke(app, ["status"], terminal_width=400).output
    assert "2 unlabelled tasks' images are served by Label Studio from its local storage" in text
    assert "set workers.image_root to the storage's document root" in text
    assert "from the files uploaded into it" in text
    assert "set workers.upload_root to its media/upload folder" in text
    monkeypatch.setenv("PLANNER_WORKERS__IMAGE_ROOT", "/images")
    text = runner.invoke(app, ["status"], terminal_width=400).output
    assert "workers.image_root" not in text, "set: nothing more to say"
    assert "set workers.upload_root" in text
    monkeypatch.setenv("PLANNER_WORKERS__UPLOAD_ROOT", "/label-studio/upload")
    assert "served by Label Studio" not in runner.invoke(app, ["status"]).output
