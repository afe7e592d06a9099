"""The report read from the store and written to disk: the folder, the history, the stop set."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from integrations.label_studio.fake import FakeLabelStudio
from planner.cli import app
from planner.store import open_store
from planner.sync import sync_project

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/></Choices>
</View>"""
CHOICE = {"from_name": "kind", "to_name": "image", "type": "choices"}


def _synced(tmp_path: Path, tasks: int = 6) -> tuple[str, int]:
    """A store (its URL) holding a synced project (its id) with every task but one labelled."""
    url = f"sqlite:///{tmp_path / 'planner.db'}"
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/{i}.png"}} for i in range(tasks)])
    for k, task in enumerate(ids[:-1]):
        fake.annotate(task, [{**CHOICE, "value": {"choices": ["Car" if k % 2 else "Wheelchair"]}}])
    with open_store(url) as store:
        sync_project(fake, store, pid, now=datetime.now(UTC))
    return url, pid


def test_a_reports_dir_that_cannot_be_written_is_a_planner_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, pid = _synced(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("PLANNER_STORE__URL", url)
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__PROJECT_ID", str(pid))
    monkeypatch.setenv("PLANNER_DASHBOARD__REPORTS_DIR", str(tmp_path / "a-file" / "reports"))
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 2, result.output
    assert "reports_dir" in result.output
    assert "Point dashboard.reports_dir at a folder" in " ".join(result.output.split())
