"""`planner init` without a server: the commented config it writes, and its refusals."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.init_config import config_template, toml_value
from planner.settings import SECRET_KEYS, Settings, load_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(no_planner_env: None) -> None:
    """Settings come from each test's own config and variables only."""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def test_the_template_loads_as_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "planner.toml"
    path.write_text(config_template(), encoding="utf-8")
    written = load_settings(path, environ=False)
    assert written.public_dict() == load_settings(None, environ=False).public_dict()


def test_the_template_names_every_key_with_a_comment() -> None:
    text = config_template()
    sections = re.split(r"^\[", text, flags=re.M)
    by_section = {part.split("]", 1)[0]: part for part in sections[1:]}
    for section, field in Settings.model_fields.items():
        if section == "quotas":
            assert "# [quotas.Wheelchair]" in text
            continue
        assert section in by_section, f"no [{section}]"
        body = by_section[section]
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            line = next(
                (ln for ln in body.splitlines() if re.match(rf"^#? ?{key}\b( =|:)", ln)), None
            )
            assert line is not None, f"{section}.{key} missing"
            if f"{section}.{key}" in SECRET_KEYS:
                assert line.startswith("#")
                assert "_file" in line
                assert "PLANNER_" in line
            else:
                assert "  # " in line, f"{section}.{key} has no comment: {line!r}"


def test_given_values_and_classes_are_written(tmp_path: Path) -> None:
    text = config_template(
        {"url": "http://ls.example:8080", "project_id": 7}, classes=("Car", "Wheel chair")
    )
    data = tomllib.loads(text)
    assert data["label_studio"]["project_id"] == 7
    assert '# [quotas."Wheel chair"]' in text
    assert "# [quotas.Car]" in text
    lines = text.splitlines()
    at = lines.index('# [quotas."Wheel chair"]')
    lines[at : at + 3] = [line.removeprefix("# ") for line in lines[at : at + 3]]  # uncommented
    path = tmp_path / "planner.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    settings = load_settings(path, environ=False)
    assert str(settings.label_studio.url) == "http://ls.example:8080/"
    assert settings.quotas["Wheel chair"].splits == {"train": 400, "val": 50, "test": 50}


def test_toml_values_round_trip() -> None:
    value = {"a": [1, 2.5, True, 'x"y'], "b c": {"d": "e"}}
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "planner.toml"
    path.write_text("# mine\n", encoding="utf-8")
    refused = runner.invoke(app, ["init", "-c", str(path)])
    assert refused.exit_code == 2
    assert "exists; pass --force" in refused.output
    assert path.read_text(encoding="utf-8") == "# mine\n"


def test_init_writes_then_says_what_to_fix_when_the_server_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "planner.toml"
    path.write_text("# mine\n", encoding="utf-8")
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", "some-token")
    url = f"http://127.0.0.1:{_closed_port()}"
    result = runner.invoke(
        app, ["init", "-c", str(path), "--force", "--url", url, "--project-id", "4"]
    )
    assert result.exit_code == 2, result.output
    assert f"cannot reach Label Studio at {url}" in result.output
    assert f"planner init --check -c {path}" in result.output
    settings = load_settings(path, environ=False)
    assert (settings.label_studio.project_id, str(settings.label_studio.url)) == (4, f"{url}/")


def test_init_without_a_token_or_project_says_which_to_set(tmp_path: Path) -> None:
    path = tmp_path / "planner.toml"
    no_project = runner.invoke(app, ["init", "-c", str(path)])
    assert no_project.exit_code == 2
    assert "label_studio.project_id is not set" in no_project.output
    no_token = runner.invoke(app, ["init", "-c", str(path), "--check"])
    assert no_token.exit_code == 2
    assert "label_studio.project_id is not set" in no_token.output
    fixed = runner.invoke(app, ["init", "-c", str(path), "--force", "--project-id", "2"])
    assert "PLANNER_LABEL_STUDIO__TOKEN" in fixed.output


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--url", "notaurl", "label_studio.url = 'notaurl'"),
        ("--project-id", "-1", "label_studio.project_id = -1"),
        ("--token-file", "no-such-token-file", "token_file"),
    ],
)
def test_init_force_with_a_bad_value_leaves_the_old_config(
    tmp_path: Path, option: str, value: str, says: str
) -> None:
    path = tmp_path / "planner.toml"
    path.write_text(config_template({"url": "http://ls.example:8080", "project_id": 4}), "utf-8")
    before = path.read_bytes()
    result = runner.invoke(app, ["init", "-c", str(path), "--force", option, value])
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert f"nothing was written to {path}" in result.output
    assert path.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [path], "no temporary file is left beside it"
    fresh = tmp_path / "new" / "planner.toml"
    refused = runner.invoke(app, ["init", "-c", str(fresh), option, value])
    assert refused.exit_code == 2, refused.output
    assert not fresh.exists()
