"""A small training split and the artifact made from it, shared by the artifact tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from planner.artifacts import Artifact, EmitReason, TrainImages, build_artifact, plan_training
from planner.core.stop_policy import StopConfig, StopState, evaluate_stop_rules
from planner.core.table import CountTable

CLASSES = ("cat", "dog", "fox")
NOW = datetime(2026, 11, 5, 9, 30, tzinfo=UTC)


def small_table(train: tuple[int, int, int] = (6, 3, 1)) -> CountTable:
    images = np.array([train, (2, 1, 1)], dtype=np.int64)
    return CountTable(
        classes=CLASSES, splits=("train", "val"), images=images, instances=images, pixels=images
    )


def small_images(train: tuple[int, int, int] = (6, 3, 1)) -> TrainImages:
    labels = tuple(name for name, n in zip(CLASSES, train, strict=True) for _ in range(n))
    return TrainImages(ids=tuple(range(100, 100 + len(labels))), labels=labels)


def stop_reason() -> EmitReason:
    decision = evaluate_stop_rules(StopConfig(), StopState(counts={"fox": 2}, targets={"fox": 2}))
    assert decision.should_stop
    return EmitReason("stop_rule", decision.reason, decision)


def small_artifact(scale: int = 1) -> Artifact:
    train = (6 * scale, 3 * scale, 1 * scale)
    images = small_images(train)
    plan = plan_training(small_table(train), images)
    splits = {item: "train" for item in images.ids}
    return build_artifact(
        plan, table=small_table(train), splits=splits, reason=stop_reason(), created_at=NOW
    )
