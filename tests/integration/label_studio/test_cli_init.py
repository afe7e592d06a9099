"""`planner init` against the real server: the project's classes, and readable refusals."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from integrations.label_studio.client import LabelStudioBackend
from integrations.label_studio.launcher import ServerState
from planner.cli import app
from planner.settings import load_settings

pytestmark = pytest.mark.integration
CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="weather" toName="image"><Choice value="Sun"/><Choice value="Rain"/></Choices>
<RectangleLabels name="box" toName="image"><Label value="Car"/><Label value="Wheelchair"/>
</RectangleLabels></View>"""
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(no_planner_env: None) -> None:
    """Settings come from each test's own config and variables only."""


def test_init_writes_a_config_and_lists_the_classes_of_each_control(
    label_studio: ServerState,
    backend: LabelStudioBackend,
    personal_access_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pid = backend.create_project(f"init-{uuid.uuid4().hex[:8]}", CONFIG)
    token = tmp_path / "token"
    token.write_text(personal_access_token, encoding="utf-8")
    path = tmp_path / "planner.toml"
    args = ["init", "-c", str(path), "--url", label_studio.url, "--project-id", str(pid)]
    result = runner.invoke(app, [*args, "--token-file", str(token)])
    assert result.exit_code == 0, result.output
    assert f"wrote {path}" in result.output
    assert "Choices 'weather': Sun, Rain" in result.output
    assert "RectangleLabels 'box': Car, Wheelchair" in result.output
    assert personal_access_token not in path.read_text(encoding="utf-8")
    settings = load_settings(path, environ=False)
    assert settings.label_studio.project_id == pid
    assert settings.label_studio.token is not None  # read from the token file
    assert "# [quotas.Wheelchair]" in path.read_text(encoding="utf-8")

    # a quota naming no class of the label config is a warning, not a failure
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n[quotas.Wheelchiar]\ntarget = 10\n[quotas.Car]\ntarget = 5\n")
    checked = runner.invoke(app, ["init", "-c", str(path), "--check", "--json"])
    assert checked.exit_code == 0, checked.output
    found = json.loads(checked.stdout)
    assert found["written"] is False
    assert found["unknown_quotas"] == ["Wheelchiar"]
    assert [c["classes"] for c in found["controls"]] == [["Sun", "Rain"], ["Car", "Wheelchair"]]
    text = runner.invoke(app, ["init", "-c", str(path), "--check"])
    assert "quota 'Wheelchiar' names no class" in text.output


def test_init_says_what_to_fix_for_a_bad_token_or_a_missing_project(
    label_studio: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "planner.toml"
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", "not-a-valid-token")
    args = ["init", "-c", str(path), "--url", label_studio.url, "--project-id", "999999"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert "rejected the token" in refused.output
    assert "not-a-valid-token" not in refused.output
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", label_studio.token)
    missing = runner.invoke(app, ["init", "-c", str(path), "--check"])
    assert missing.exit_code == 2
    assert "project 999999 does not exist" in missing.output
    assert "planner init --check" in missing.output
