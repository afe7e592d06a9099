"""`planner sync` and `planner labelstudio status` against the real server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from integrations.label_studio.client import LabelStudioBackend
from integrations.label_studio.launcher import ServerState
from planner.cli import app

pytestmark = pytest.mark.integration
CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/></Choices>
</View>"""


def test_sync_command_reads_the_project_into_the_store(
    label_studio: ServerState,
    backend: LabelStudioBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pid = backend.create_project(f"cli-{uuid.uuid4().hex[:8]}", CONFIG)
    ids = backend.import_tasks(pid, [{"data": {"image": f"/x/{i}.png"}} for i in range(4)])
    choice = {"from_name": "kind", "to_name": "image", "type": "choices"}
    backend.annotate(ids[0], [{**choice, "value": {"choices": ["Wheelchair"]}}])
    backend.annotate(ids[1], [{**choice, "value": {"choices": ["Scooter"]}}])  # not in config
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__URL", label_studio.url)
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", label_studio.token)
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__PROJECT_ID", str(pid))
    monkeypatch.setenv("PLANNER_STORE__URL", f"sqlite:///{tmp_path / 'planner.db'}")
    runner = CliRunner()
    first = runner.invoke(app, ["sync", "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    # the label outside the config holds its task apart, named, instead of counting it
    assert (report["seen"], report["new"], report["newly_labelled"]) == (4, 4, 1)
    (held,) = report["quarantined"]
    assert held["task_id"] == ids[1]
    assert "Scooter" in held["problem"]
    text = runner.invoke(app, ["sync"])
    assert "0 new, 0 changed" in text.output
    assert label_studio.token not in text.output
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", "wrong-token")
    refused = runner.invoke(app, ["sync"])
    assert refused.exit_code == 2
    assert "rejected the token" in refused.output
    assert "wrong-token" not in refused.output


def test_labelstudio_status_reports_the_running_server(label_studio: ServerState) -> None:
    runner = CliRunner()
    up = runner.invoke(app, ["labelstudio", "status", "--data", label_studio.data_dir])
    assert up.exit_code == 0
    assert label_studio.url in up.output
    down = runner.invoke(app, ["labelstudio", "status", "--data", "/nonexistent"])
    assert down.exit_code == 3
