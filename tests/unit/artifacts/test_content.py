from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest

from planner.artifacts import EmitReason, TrainImages, build_artifact, plan_training
from planner.core.priors import focal_alpha, log_priors
from planner.core.table import CountTable
from planner.core.weights import SCHEMES, class_weights
from planner.errors import InputError
from tests.unit.artifacts.helpers import CLASSES, NOW, small_artifact, small_images, small_table


def test_every_scheme_is_emitted_and_the_chosen_one_is_marked() -> None:
    data = small_artifact().data
    schemes = data["class_weights"]["schemes"]
    assert tuple(schemes) == SCHEMES
    assert [name for name, s in schemes.items() if s["chosen"]] == ["balanced"]
    for name in SCHEMES:
        expected = class_weights(CLASSES, [6, 3, 1], scheme=name).weights
        np.testing.assert_allclose(schemes[name]["weights"], expected)


def test_focal_alpha_and_log_priors_come_from_the_training_split() -> None:
    data = small_artifact().data
    chosen = class_weights(CLASSES, [6, 3, 1], scheme="balanced")
    np.testing.assert_allclose(data["focal_alpha"]["alpha"], focal_alpha(chosen).alpha)
    np.testing.assert_allclose(
        data["log_priors"]["log_priors"], log_priors(CLASSES, [6, 3, 1]).log_priors
    )


def test_per_image_weights_are_the_plan_multipliers_of_each_label() -> None:
    artifact = small_artifact()
    multipliers = {
        name: entry["multiplier"] for name, entry in artifact.data["resampling"]["classes"].items()
    }
    labels = small_images().labels
    assert labels is not None
    np.testing.assert_allclose(artifact.image_weights, [multipliers[y] for y in labels])
    # the rare fox is drawn three times as often per epoch as it occurs
    assert multipliers["fox"] == 3.0
    assert artifact.data["sampling"]["image_ids"] == list(range(100, 110))
    assert artifact.data["sampling"]["num_samples"] == 10


def test_counts_splits_and_reason_are_recorded_as_json() -> None:
    data = small_artifact().data
    assert data["counts"] == small_table().as_dict()
    assert data["splits"]["100"] == "train"
    assert data["reason"]["trigger"] == "stop_rule"
    assert data["reason"]["stop"]["triggered_by"] == ["quota"]
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN or inf anywhere


def test_multi_label_images_get_repeat_factors() -> None:
    presence = np.array([[1, 0, 0]] * 8 + [[1, 1, 0], [0, 0, 1]], dtype=bool)
    images = TrainImages(ids=tuple(range(10)), presence=presence)
    plan = plan_training(small_table(), images)
    assert plan.sampling_kind == "repeat_factors"
    assert plan.resampling is None
    # the fox is in one image in ten: LVIS factor sqrt(0.001 / 0.1) < 1, so every factor is 1
    np.testing.assert_allclose(plan.image_weights, np.ones(10))


def test_labels_outside_the_classes_are_refused_with_the_fix() -> None:
    images = TrainImages(ids=(1, 2), labels=("cat", "wolf"))
    with pytest.raises(InputError, match=r"\['wolf'\] are not among the classes"):
        plan_training(small_table(), images)


def test_images_need_labels_or_presence_and_unique_ids() -> None:
    with pytest.raises(InputError, match="either labels or presence"):
        TrainImages(ids=(1,))
    with pytest.raises(InputError, match="ids repeat"):
        TrainImages(ids=(1, 1), labels=("cat", "dog"))


def test_a_naive_timestamp_and_a_stop_reason_without_decision_are_refused() -> None:
    plan = plan_training(small_table(), small_images())
    reason = EmitReason("on_demand", "asked for by planner emit")
    with pytest.raises(InputError, match="naive"):
        build_artifact(
            plan,
            table=small_table(),
            splits={},
            reason=reason,
            created_at=datetime(2026, 1, 1),  # noqa: DTZ001
        )
    with pytest.raises(InputError, match="StopDecision"):
        EmitReason("stop_rule", "quota met")
    assert build_artifact(plan, table=small_table(), splits={}, reason=reason, created_at=NOW)


def test_max_oversample_caps_repeat_factors_of_multi_label_data() -> None:
    # 2,000 images, one of them holding the rare class: LVIS's factor would be sqrt(0.001/0.0005)
    # at t = 0.001, higher with the median threshold; the cap holds either way
    presence = np.zeros((2000, 3), dtype=bool)
    presence[:, 0] = True
    presence[:1000, 1] = True
    presence[0, 2] = True
    images = TrainImages(ids=tuple(range(2000)), presence=presence)
    table = small_table((2000, 1000, 1))
    capped = plan_training(table, images, max_oversample=1.2)
    assert capped.image_weights.max() == pytest.approx(1.2)
    free = plan_training(table, images, max_oversample=50.0)
    assert free.image_weights.max() > 1.2


def test_the_weights_come_from_the_first_split_when_none_is_named_train() -> None:
    table = small_table()
    renamed = CountTable(
        classes=table.classes,
        splits=("training", "validation"),
        images=table.images,
        instances=table.instances,
        pixels=table.pixels,
    )
    plan = plan_training(renamed, small_images())
    assert plan.train_split == "training"
    expected = class_weights(CLASSES, [6, 3, 1], scheme="balanced").weights
    np.testing.assert_allclose(plan.schemes["balanced"].weights, expected)
