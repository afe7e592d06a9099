"""`planner weights` and `planner resample`: a lead plans from a spreadsheet of counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight
from typer.testing import CliRunner

from planner.cli import app
from planner.core.weights import SCHEMES

runner = CliRunner()
EXERCISE_1 = "Car=6000,Pedestrian=2500,Bicycle=1200,Wheelchair=300"


def _json(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_resample_exercise_1_of_seed_001() -> None:
    data = _json(["resample", "--counts", EXERCISE_1, "--target", "8000", "--max-oversample", "5"])
    classes = data["classes"]
    assert isinstance(classes, dict)
    assert list(classes) == ["Car", "Pedestrian", "Bicycle", "Wheelchair"]
    effective = {name: row["effective"] for name, row in classes.items()}
    assert effective["Wheelchair"] == 1500
    assert classes["Wheelchair"]["multiplier"] == pytest.approx(5.0)
    assert all(2166 <= effective[c] <= 2167 for c in ("Car", "Pedestrian", "Bicycle"))
    assert sum(effective.values()) == 8000
    assert data["reached"] is True
    assert data["capped"] == ["Wheelchair"]
    for row in classes.values():
        assert row["effective"] == pytest.approx(row["count"] * row["multiplier"], abs=0.5)


def test_resample_reports_shortfall_when_every_class_is_capped() -> None:
    data = _json(["resample", "--counts", "a=10,b=5", "--target", "1000", "--max-oversample", "2"])
    assert data["total"] == 30
    assert data["shortfall"] == 970
    text = runner.invoke(
        app, ["resample", "--counts", "a=10,b=5", "--target", "1000", "--max-oversample", "2"]
    )
    assert "970 images short" in text.output


def test_resample_without_undersampling_keeps_every_image() -> None:
    data = _json(["resample", "--counts", EXERCISE_1, "--target", "8000", "--no-undersample"])
    classes = data["classes"]
    assert isinstance(classes, dict)
    assert all(row["effective"] >= row["count"] for row in classes.values())
    assert data["excess"] == int(data["total"]) - 8000 > 0
    args = ["resample", "--counts", EXERCISE_1, "--target", "8000", "--no-undersample"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert f"the epoch is {data['excess']} images over the target: without undersampling" in (
        text.output
    )


def test_weights_balanced_equals_scikit_learn() -> None:
    counts = {"a": 4, "b": 2, "c": 7}
    data = _json(["weights", "--counts", "a=4,b=2,c=7", "--scheme", "balanced"])
    labels = np.repeat(list(counts), list(counts.values()))
    expected = compute_class_weight("balanced", classes=np.array(list(counts)), y=labels)
    classes = data["classes"]
    assert isinstance(classes, dict)
    got = [classes[name]["weight"] for name in counts]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert [classes[name]["balanced"] for name in counts] == got


def test_weights_lists_every_scheme_focal_alpha_and_log_priors() -> None:
    data = _json(["weights", "--counts", "a=4,b=2", "--scheme", "effective_number"])
    assert data["scheme"] == "effective_number"
    classes = data["classes"]
    assert isinstance(classes, dict)
    for row in classes.values():
        for scheme in SCHEMES:
            assert row[scheme] > 0
        assert row["weight"] == row["effective_number"]
    alphas = [row["focal_alpha"] for row in classes.values()]
    assert sum(alphas) == pytest.approx(1.0)
    assert classes["b"]["focal_alpha"] > classes["a"]["focal_alpha"]
    priors = [row["prior"] for row in classes.values()]
    assert sum(priors) == pytest.approx(1.0)
    assert classes["a"]["log_prior"] == pytest.approx(np.log(classes["a"]["prior"]))


def test_tau_scales_the_logit_adjustment_and_leaves_the_priors() -> None:
    by_tau: dict[str, dict[str, dict[str, float]]] = {
        tau: _json(["weights", "--counts", "a=4000,b=300", "--tau", tau])["classes"]  # type: ignore[misc]
        for tau in ("0", "1", "2.5")
    }
    for tau, classes in by_tau.items():
        for name, row in classes.items():
            assert row["log_prior"] == by_tau["1"][name]["log_prior"]
            assert row["adjustment"] == pytest.approx(float(tau) * row["log_prior"])
    table = runner.invoke(app, ["weights", "--counts", "a=4000,b=300", "--tau", "2.5"])
    assert table.exit_code == 0, table.output
    assert f"{by_tau['2.5']['b']['adjustment']:.3g}" in table.output
    assert "adjust = tau x log_prior (tau 2.5)" in table.output


def test_weights_options_reach_every_scheme() -> None:
    data = _json(["weights", "--counts", "a=1000,b=1", "--normalise", "mean", "--max-ratio", "10"])
    classes = data["classes"]
    assert isinstance(classes, dict)
    for scheme in SCHEMES:
        ratio = classes["b"][scheme] / classes["a"][scheme]
        assert ratio <= 10 + 1e-9
    assert data["normalisation"] == dict.fromkeys(SCHEMES, "mean")


def test_weights_table_shows_every_class_and_marks_the_scheme() -> None:
    result = runner.invoke(app, ["weights", "--counts", EXERCISE_1, "--scheme", "yolo"])
    assert result.exit_code == 0, result.output
    for name in ("Car", "Pedestrian", "Bicycle", "Wheelchair", "yolo*", "8.33"):
        assert name in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["weights", "--counts", "a=4,b=x"], "'x' is not a number"),
        (["weights", "--counts", "a=4", "--scheme", "softmax"], "--scheme 'softmax' is not one"),
        (["weights", "--counts", "a=4", "--normalise", "l2"], "--normalise 'l2' is not one"),
        (["resample", "--counts", "a=4,a=3"], "names class 'a' twice"),
        (["resample", "--counts", "a=4", "--max-oversample", "0.5"], "max_oversample must be"),
        (["resample", "--counts", "a=4.5"], "must be whole numbers, got [4.5]"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_installed_console_script_prints_json() -> None:
    script = shutil.which("planner", path=str(Path(sys.executable).parent))
    assert script is not None, "the `planner` console script is not installed in this venv"
    done = subprocess.run(
        [script, "resample", "--counts", EXERCISE_1, "--target", "8000", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    data = json.loads(done.stdout)
    assert data["classes"]["Wheelchair"]["effective"] == 1500
