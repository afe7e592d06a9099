"""`planner emit` and `planner report` from a synced store: what a training job and a lead get."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from integrations.label_studio.fake import FakeLabelStudio
from planner.artifacts import EmitReason, LoadedArtifact, read_artifact
from planner.cli import app
from planner.core.repeat_factors import repeat_factors
from planner.core.weights import compare_schemes
from planner.errors import ConfigError
from planner.outputs import EmitOptions, emit_artifacts, emit_options
from planner.settings import Settings, load_settings
from planner.store import open_store
from planner.store.models import ArtifactRecord
from planner.sync import SyncOptions, sync_project
from planner.training import class_weight_tensor, load_latest

CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image"><Choice value="Car"/><Choice value="Wheelchair"/></Choices>
</View>"""


def _sync_for_the_cli(
    fake: FakeLabelStudio,
    pid: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, str],
) -> None:
    """Sync ``pid`` into a store under ``tmp_path`` and point the CLI's settings at it."""
    url = f"sqlite:///{tmp_path / 'planner.db'}"
    with open_store(url) as store:
        sync_project(fake, store, pid, now=datetime.now(UTC))
    for key, value in {
        "STORE__URL": url,
        "LABEL_STUDIO__PROJECT_ID": str(pid),
        "ARTIFACTS__DIR": str(tmp_path / "artifacts"),
        **settings,
    }.items():
        monkeypatch.setenv(f"PLANNER_{key}", value)


def test_emit_and_report_from_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLabelStudio()
    pid = fake.create_project("traffic", CONFIG)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/{i}.png"}} for i in range(60)])
    choice = {"from_name": "kind", "to_name": "image", "type": "choices"}
    for k, task in enumerate(ids[:50]):
        label = "Wheelchair" if k % 10 == 0 else "Car"
        fake.annotate(task, [{**choice, "value": {"choices": [label]}}])
    settings = {
        "DASHBOARD__REPORTS_DIR": str(tmp_path / "reports"),
        "QUOTAS__WHEELCHAIR__TARGET": "20",
    }
    _sync_for_the_cli(fake, pid, tmp_path, monkeypatch, settings)
    runner = CliRunner()
    emitted = runner.invoke(app, ["emit", "--reason", "test"])
    assert emitted.exit_code == 0, emitted.output
    artifact = load_latest(tmp_path / "artifacts")
    weights = class_weight_tensor(artifact, ["Car", "Wheelchair"])
    assert float(weights[1]) > float(weights[0]), "the rare class must weigh more"
    reported = runner.invoke(app, ["report"])
    assert reported.exit_code == 0, reported.output
    (day,) = (tmp_path / "reports").iterdir()
    data = json.loads((day / "report.json").read_text())
    assert "Wheelchair" in json.dumps(data)
    assert (day / "report.html").read_text().count("Wheelchair") >= 1
    never = runner.invoke(app, ["emit"], env={"PLANNER_LABEL_STUDIO__PROJECT_ID": "999"})
    assert never.exit_code == 2
    assert "never been synced" in never.output


def _rect(label: str) -> dict[str, object]:
    value = {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0}
    return {
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 100,
        "original_height": 100,
        "value": {**value, "rectanglelabels": [label]},
    }


MULTI = """<View><Image name="image" value="$image"/>
<Choices name="kind" toName="image" choice="multiple"><Choice value="Car"/>
<Choice value="Wheelchair"/></Choices></View>"""
BOXES = """<View><Image name="image" value="$image"/>
<RectangleLabels name="box" toName="image"><Label value="Car"/><Label value="Wheelchair"/>
</RectangleLabels></View>"""


def _emit(
    tmp_path: Path,
    config: str,
    results: list[list[dict[str, object]]],
    ratios: dict[str, float] | None = None,
) -> LoadedArtifact:
    split_ratios = ratios or {"train": 0.8, "val": 0.1, "test": 0.1}
    fake = FakeLabelStudio()
    pid = fake.create_project("kinds", config)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/{i}.png"}} for i in range(len(results))])
    for task, result in zip(ids, results, strict=True):
        fake.annotate(task, result)
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as store:
        options = SyncOptions(split_ratios=split_ratios)
        sync_project(fake, store, pid, now=datetime.now(UTC), options=options)
        written = emit_artifacts(
            store,
            pid,
            EmitOptions(tmp_path / "artifacts"),
            splits=tuple(split_ratios),
            reason=EmitReason("on_demand", "test"),
            now=datetime.now(UTC),
        )
        with store.session() as session:
            (record,) = session.exec(select(ArtifactRecord)).all()
    manifest = (written.path / "MANIFEST.json").read_bytes()
    assert record.checksum == written.checksum == hashlib.sha256(manifest).hexdigest()
    return read_artifact(tmp_path / "artifacts")


def _choices(label: str, *more: str) -> list[dict[str, object]]:
    return [
        {
            "from_name": "kind",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [label, *more]},
        }
    ]


def test_single_label_projects_get_the_per_class_plan_and_per_image_weights(
    tmp_path: Path,
) -> None:
    labels = ["Wheelchair" if k % 10 == 0 else "Car" for k in range(60)]
    artifact = _emit(tmp_path, CONFIG, [_choices(label) for label in labels])
    assert artifact.data["sampling"]["kind"] == "resampling_plan"
    plan = artifact.data["resampling"]["classes"]
    multipliers = {name: plan[name]["multiplier"] for name in ("Car", "Wheelchair")}
    assert multipliers["Wheelchair"] > multipliers["Car"], "the rare class is oversampled"
    by_id = dict(zip(artifact.data["sampling"]["image_ids"], artifact.image_weights, strict=True))
    splits = artifact.data["splits"]
    train = [task for task, split in splits.items() if split == "train"]
    assert sorted(by_id) == sorted(int(t) for t in train)
    first = min(int(t) for t in splits)  # task ids are consecutive: the k-th task is first + k
    for task, weight in by_id.items():
        assert weight == pytest.approx(multipliers[labels[task - first]])


@pytest.mark.parametrize(
    ("config", "result"),
    [
        (MULTI, lambda k: _choices("Car", "Wheelchair") if k % 5 == 0 else _choices("Car")),
        (BOXES, lambda k: [_rect("Wheelchair" if k % 10 == 0 else "Car")]),
    ],
    ids=["multi-label", "detection"],
)
def test_multi_label_and_detection_projects_get_repeat_factors(
    tmp_path: Path, config: str, result: Callable[[int], list[dict[str, object]]]
) -> None:
    results = [result(k) for k in range(60)]
    artifact = _emit(tmp_path, config, results)
    assert artifact.data["sampling"]["kind"] == "repeat_factors"
    assert artifact.data["resampling"] is None, "no per-class plan for multi-label images"
    ids = artifact.data["sampling"]["image_ids"]
    train = sorted(int(t) for t, split in artifact.data["splits"].items() if split == "train")
    assert sorted(ids) == train, "every training image, empty or not"
    first = min(int(t) for t in artifact.data["splits"])
    shown = [json.dumps(results[i - first]) for i in ids]
    presence = [("Wheelchair" in text, "Car" in text) for text in shown]
    table = [[car, wc] for wc, car in presence]
    expected = repeat_factors(("Car", "Wheelchair"), table, threshold="median")
    np.testing.assert_allclose(artifact.image_weights, expected.image_factors)
    assert artifact.data["sampling"]["threshold"] == pytest.approx(expected.threshold)
    # seed 001, example 2: images with a Wheelchair are seen more often (LVIS's t = 0.001,
    # tuned for 1,203 classes, repeated none of them)
    wheelchair = np.array([wc for wc, _ in presence])
    assert (artifact.image_weights[wheelchair] > 1).all()
    assert (artifact.image_weights[~wheelchair] == 1).all()
    lvis = repeat_factors(("Car", "Wheelchair"), table, threshold=0.001)
    assert (lvis.image_factors == 1).all()


def test_a_project_without_a_train_split_learns_from_its_first_split(tmp_path: Path) -> None:
    labels = ["Wheelchair" if k % 10 == 0 else "Car" for k in range(60)]
    ratios = {"training": 0.8, "validation": 0.2}
    artifact = _emit(tmp_path, CONFIG, [_choices(label) for label in labels], ratios)
    assert artifact.data["train_split"] == "training", "the artifact says where weights came from"
    splits = artifact.data["splits"]
    training = sorted(int(t) for t, split in splits.items() if split == "training")
    assert len(training) == 48
    assert sorted(artifact.data["sampling"]["image_ids"]) == training
    counts = artifact.data["counts"]["images"]["training"]
    chosen = artifact.data["class_weights"]["schemes"]["balanced"]["weights"]
    expected = compare_schemes(("Car", "Wheelchair"), [counts["Car"], counts["Wheelchair"]])
    np.testing.assert_allclose(chosen, expected["balanced"].weights)


def test_the_weights_count_what_planning_count_kind_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeLabelStudio()
    pid = fake.create_project("boxes", BOXES)
    ids = fake.import_tasks(pid, [{"data": {"image": f"/{i}.png"}} for i in range(60)])
    # a car image holds four cars, a wheelchair image one wheelchair: the instance counts are
    # four times as unbalanced as the image counts
    boxes = {task: 1 if k % 10 == 0 else 4 for k, task in enumerate(ids)}
    for k, task in enumerate(ids):
        fake.annotate(task, [_rect("Wheelchair" if k % 10 == 0 else "Car")] * boxes[task])
    _sync_for_the_cli(fake, pid, tmp_path, monkeypatch, {"PLANNING__COUNT_KIND": "instances"})
    emitted = CliRunner().invoke(app, ["emit"])
    assert emitted.exit_code == 0, emitted.output
    data = read_artifact(tmp_path / "artifacts").data
    assert data["count_kind"] == "instances"
    train = [int(t) for t, split in data["splits"].items() if split == "train"]
    wheelchairs = [t for t in train if boxes[t] == 1]
    instances = [4 * (len(train) - len(wheelchairs)), len(wheelchairs)]
    images = [len(train) - len(wheelchairs), len(wheelchairs)]
    chosen = data["class_weights"]["schemes"]["balanced"]["weights"]
    expected = compare_schemes(("Car", "Wheelchair"), instances)["balanced"].weights
    np.testing.assert_allclose(chosen, expected)
    by_images = compare_schemes(("Car", "Wheelchair"), images)["balanced"].weights
    assert not np.allclose(chosen, by_images), "instance weights are not image weights"


def test_the_repeat_threshold_comes_from_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "planner.toml"
    config.write_text("[planning]\nrepeat_threshold = 0.001\n", encoding="utf-8")
    assert emit_options(load_settings(config, environ=False)).repeat_threshold == 0.001
    assert emit_options(Settings()).repeat_threshold == "median"
    config.write_text("[planning]\nrepeat_threshold = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="repeat_threshold"):
        load_settings(config, environ=False)
