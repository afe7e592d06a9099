"""`planner config` and count parsing: what a lead types, what comes back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import planner
from planner.cli import app, parse_counts
from planner.errors import InputError

EXAMPLE = Path(planner.__file__).parent / "examples" / "planner.toml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PLANNER_"):
            monkeypatch.delenv(name)


def test_bundled_example_config_is_valid() -> None:
    result = runner.invoke(app, ["config", "check", "--config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_config_check_reports_bad_lines_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[planning]\nbatch_size = 0\n", encoding="utf-8")
    result = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 2
    assert "planning.batch_size = 0" in result.output


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_LABEL_STUDIO__TOKEN", "tok-abcdef-123")
    monkeypatch.setenv("PLANNER_CONFIG", str(EXAMPLE))
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["label_studio"]["token"] == "**********"
    assert data["quotas"]["Wheelchair"]["criticality"] == 3.0
    assert "tok-abcdef-123" not in result.output


def test_parse_counts() -> None:
    assert parse_counts("Car=6000, Wheelchair=300") == (("Car", "Wheelchair"), (6000.0, 300.0))
    assert parse_counts("a=b=4") == (("a=b",), (4.0,))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Car", "not NAME=COUNT"),
        ("=5", "not NAME=COUNT"),
        ("Car=lots", "'lots' is not a number"),
        ("Car=-1", "finite and >= 0"),
        ("Car=nan", "finite and >= 0"),
        ("Car=inf", "finite and >= 0"),
        ("Car=1,Car=2", "twice"),
        (" , ", "empty"),
    ],
)
def test_parse_counts_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_counts(text)
