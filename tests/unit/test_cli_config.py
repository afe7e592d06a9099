"""`planner config` and count parsing: what a lead types, what comes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import planner
from planner.cli import app, parse_counts
from planner.errors import InputError

EXAMPLE = Path(planner.__file__).parent / "examples" / "planner.toml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(no_planner_env: None) -> None:
    """Settings come from each test's own config and variables only."""


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


@pytest.mark.parametrize("value", ["[red]x", "[/x]"])
def test_an_error_is_printed_as_written_not_as_markup(tmp_path: Path, value: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[planning]\ncount_kind = "{value}"\n', encoding="utf-8")
    result = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 2, result.output
    assert f"planning.count_kind = '{value}'" in result.output


def test_config_check_refuses_metrics_on_the_dashboards_port(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[dashboard]\nport = 9100\nmetrics_port = 9100\n", encoding="utf-8")
    result = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 2, result.output
    assert "dashboard.metrics_port = 9100: is dashboard.port too" in result.output
    off = tmp_path / "off.toml"
    off.write_text("[dashboard]\nport = 9100\nmetrics_port = 0\n", encoding="utf-8")
    assert runner.invoke(app, ["config", "check", "-c", str(off)]).exit_code == 0


def test_config_check_reports_a_secret_among_the_other_bad_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[label_studio]\ntoken = "hunter2-token"\nurl = 5\n\n[quotas.Crack]\ntarget = -3\n',
        encoding="utf-8",
    )
    result = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 2
    lines = [line.strip() for line in result.output.splitlines() if line.startswith("  ")]
    assert len(lines) == 3, result.output
    assert lines[0].startswith("label_studio.token: secrets are not read from the config file")
    assert "PLANNER_LABEL_STUDIO__TOKEN" in lines[0]
    assert lines[1].startswith("label_studio.url = 5:")
    assert lines[2].startswith("quotas.Crack.target = -3:")
    assert "greater than or equal to 0" in lines[2]
    assert "hunter2-token" not in result.output


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
