"""`planner quotas`, and `--json` of `emit` and `report`, from a synced store; progress
displays stay off for pipes and JSON."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console
from sqlmodel import select
from typer.testing import CliRunner

from integrations.label_studio.fake import FakeLabelStudio
from planner import cli
from planner.cli import app
from planner.core.quotas import deficits
from planner.params import quotas_from_settings
from planner.settings import load_settings
from planner.store import open_store
from planner.store.models import Project
from planner.store.tasks import count_table
from planner.sync import sync_project

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/>
<Choice value="Bicycle"/></Choices></View>"""
runner = CliRunner()


@pytest.fixture
def synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_planner_env: None, store_url: str
) -> str:
    """A store (SQLite, PostgreSQL) synced from a project of 80 tasks, 60 labelled; the config
    in the environment."""
    url = store_url
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/{i}.png"}} for i in range(80)])
    choice = {"from_name": "kind", "to_name": "image", "type": "choices"}
    for k, task in enumerate(ids[:60]):
        label = "Wheelchair" if k % 10 == 0 else "Bicycle" if k % 7 == 0 else "Car"
        fake.annotate(task, [{**choice, "value": {"choices": [label]}}])
    with open_store(url) as store:
        sync_project(fake, store, pid, now=datetime.now(UTC))
    config = tmp_path / "planner.toml"
    config.write_text(
        f"""[label_studio]
project_id = {pid}
[store]
url = "{url}"
[artifacts]
dir = "{tmp_path / "artifacts"}"
[dashboard]
reports_dir = "{tmp_path / "reports"}"
[quotas.Wheelchair]
target = 20
splits = {{train = 10, val = 2, test = 2}}
[quotas.Car]
target = 30
[quotas.Scooter]
target = 5
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("PLANNER_CONFIG", str(config))
    return url


def test_quotas_equal_the_stores_counts_and_deficits(synced: str) -> None:
    result = runner.invoke(app, ["quotas", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    settings = load_settings(Path(os.environ["PLANNER_CONFIG"]))
    quotas = quotas_from_settings(settings)
    with open_store(synced) as store, store.session() as session:
        project = session.exec(select(Project)).one()
        splits = tuple(settings.planning.split_ratios)
        table = count_table(session, int(project.id or 0), tuple(project.classes), splits)
    status = deficits(quotas, table)
    lines = {(q["class"], q["split"]): q for q in shown["quotas"]}
    assert {name for name, _ in lines} == {"Wheelchair", "Car", "Scooter"}
    for s in status.statuses:
        total = lines[(s.class_name, "total")]
        assert (total["count"], total["target"], total["deficit"]) == (s.count, s.target, s.deficit)
        assert total["progress"] == pytest.approx(s.progress)
        assert total["eta"]["state"] in ("met", "no_data", "on_track", "stalled")
        column = table.classes.index(s.class_name) if s.in_table else None
        for i, split in enumerate(table.splits):
            count = 0 if column is None else int(table.images[i, column])
            assert lines[(s.class_name, split)]["count"] == count
            assert lines[(s.class_name, split)]["eta"] is None
        for split in s.splits:
            assert lines[(s.class_name, split.split)]["deficit"] == split.deficit
    assert lines[("Car", "val")]["target"] is None, "no split target: nothing to compare"
    assert shown["overall_progress"] == pytest.approx(status.overall_progress)
    assert lines[("Wheelchair", "total")]["count"] == 6

    text = runner.invoke(app, ["quotas"])
    assert text.exit_code == 0, text.output
    wheelchair = [ln for ln in text.output.splitlines() if "Wheelchair" in ln and "total" in ln]
    assert wheelchair, text.output
    cells = wheelchair[0].replace("│", " ").split()
    assert cells[2:6] == ["6", "20", "14", "30%"]


def test_quotas_without_a_quota_say_which_tables_to_add(
    synced: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Path(os.environ["PLANNER_CONFIG"]).read_text(encoding="utf-8")
    bare = tmp_path / "no-quotas.toml"
    bare.write_text(config.split("[quotas.")[0], encoding="utf-8")
    monkeypatch.setenv("PLANNER_CONFIG", str(bare))
    result = runner.invoke(app, ["quotas"])
    assert result.exit_code == 0, result.output
    assert "no quota is set; add [quotas.<Class>] tables to the config" in result.output


def test_quotas_before_any_sync_says_to_sync(synced: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__PROJECT_ID", "999")
    result = runner.invoke(app, ["quotas"])
    assert result.exit_code == 2
    assert "run `planner sync` first" in result.output


def test_emit_and_report_print_json_for_scripts(synced: str, tmp_path: Path) -> None:
    emitted = runner.invoke(app, ["emit", "--json"])
    assert emitted.exit_code == 0, emitted.output
    written = json.loads(emitted.stdout)
    assert written["version"] == "v0001"
    assert Path(written["path"], "MANIFEST.json").is_file()
    reported = runner.invoke(app, ["report", "--json"])
    assert reported.exit_code == 0, reported.output
    data = json.loads(reported.stdout)
    assert Path(data["folder"]).parent == tmp_path / "reports"
    on_disk = json.loads(Path(data["folder"], "report.json").read_text(encoding="utf-8"))
    assert data["report"] == on_disk
    assert {Path(f).name for f in data["files"]} == {"report.json", "report.md", "report.html"}


def test_progress_shows_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=screen, force_terminal=True, width=80))
    with cli._working("syncing", enabled=True) as show:
        show("syncing: 12 tasks read")
    assert "12 tasks read" in screen.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=quiet, force_terminal=True, width=80))
    with cli._working("syncing", enabled=False) as show:  # --json
        show("syncing: 12 tasks read")
    piped = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=piped, width=80))  # not a terminal
    with cli._working("syncing", enabled=True) as show:
        show("syncing: 12 tasks read")
    assert quiet.getvalue() == piped.getvalue() == ""
