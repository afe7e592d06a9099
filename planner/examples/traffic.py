"""A generated long-tailed traffic project in Label Studio's export format, for the offline demo.

Four classes (Car, Pedestrian, Bicycle, Wheelchair) with a 20:1 imbalance, day/night and camera
metadata with a hidden imbalance (wheelchairs are almost never seen at night), and the things
real projects contain: skipped tasks, two annotators disagreeing, a ground-truth annotation, an
unknown label and a malformed result. The unlabeled pool comes with model probabilities so the
selection step has something to choose from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

CLASSES = ("Car", "Pedestrian", "Bicycle", "Wheelchair")
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Header value="What is the main road user?"/>
  <Choices name="road_user" toName="image" choice="single" showInline="true">
    <Choice value="Car"/>
    <Choice value="Pedestrian"/>
    <Choice value="Bicycle"/>
    <Choice value="Wheelchair"/>
  </Choices>
</View>"""
_PRIORS = np.array([0.60, 0.25, 0.12, 0.03])
_NIGHT_SHARE = np.array([0.40, 0.30, 0.25, 0.02])
"""Share of each class's images taken at night: the hidden imbalance the demo exposes."""
_START = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ExampleProject:
    """Labelled tasks (Label Studio JSON) and an unlabeled pool with model outputs."""

    label_config: str
    classes: tuple[str, ...]
    tasks: list[dict[str, Any]]
    pool_ids: npt.NDArray[np.int64]
    pool_probs: npt.NDArray[np.float64]
    pool_embeddings: npt.NDArray[np.float32]
    pool_true: npt.NDArray[np.int64]


def _choice(label: str, annotation_id: int, when: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "id": annotation_id,
        "completed_by": 1 + annotation_id % 3,
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": when.isoformat(),
        "updated_at": when.isoformat(),
        "result": [
            {
                "id": f"r{annotation_id}",
                "from_name": "road_user",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
        **extra,
    }


def make_example(*, labelled: int = 1200, pool: int = 6000, seed: int = 7) -> ExampleProject:
    """Generate the example project; the same seed gives the same project."""
    rng = np.random.default_rng(seed)
    total = labelled + pool
    truth = rng.choice(len(CLASSES), size=total, p=_PRIORS)
    night = rng.random(total) < _NIGHT_SHARE[truth]
    camera = rng.integers(1, 4, size=total)
    tasks: list[dict[str, Any]] = []
    annotation_id = 1
    for index in range(labelled):
        task_id = index + 1
        when = _START + timedelta(minutes=7 * index)
        label = CLASSES[truth[index]]
        annotations = [_choice(label, annotation_id, when)]
        annotation_id += 1
        if index % 97 == 0:  # a skipped task: the annotator could not decide
            annotations = [{**annotations[0], "was_cancelled": True, "result": []}]
        elif index % 53 == 0:  # a second annotator disagrees; latest wins unless majority
            other = CLASSES[(truth[index] + 1) % len(CLASSES)]
            annotations.append(_choice(other, annotation_id, when + timedelta(hours=1)))
            annotation_id += 1
            annotations.append(_choice(label, annotation_id, when + timedelta(hours=2)))
            annotation_id += 1
        elif index == 11:  # a reviewer's ground truth beats the annotator
            annotations.append(_choice(label, annotation_id, when, ground_truth=True))
            annotations[0] = _choice(CLASSES[0], annotations[0]["id"], when)
            annotation_id += 1
        elif index == 17:  # a label that is not in the label config
            annotations = [_choice("Scooter", annotation_id, when)]
            annotation_id += 1
        elif index == 23:  # a malformed result: no value
            annotations[0]["result"][0].pop("value")
        tasks.append(
            {
                "id": task_id,
                "data": {
                    "image": f"/data/local-files/?d=traffic/{task_id:06d}.jpg",
                    "time": "night" if night[index] else "day",
                    "camera": f"cam-{camera[index]}",
                },
                "meta": {},
                "annotations": annotations,
                "created_at": _START.isoformat(),
                "updated_at": (when + timedelta(hours=2)).isoformat(),
            }
        )
    pool_truth = truth[labelled:]
    # A model that is right most of the time but unsure about rare classes.
    logits = rng.normal(0.0, 1.0, size=(pool, len(CLASSES)))
    logits[np.arange(pool), pool_truth] += rng.normal(2.5, 1.2, size=pool)
    logits += np.log(_PRIORS)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    centres = rng.normal(size=(len(CLASSES), 32))
    embeddings = (centres[pool_truth] + rng.normal(scale=0.8, size=(pool, 32))).astype(np.float32)
    return ExampleProject(
        label_config=LABEL_CONFIG,
        classes=CLASSES,
        tasks=tasks,
        pool_ids=np.arange(labelled + 1, total + 1, dtype=np.int64),
        pool_probs=probs,
        pool_embeddings=embeddings,
        pool_true=pool_truth.astype(np.int64),
    )
