from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from planner.artifacts import (
    LoadedArtifact,
    TrainImages,
    build_artifact,
    plan_training,
    write_artifact,
)
from planner.errors import InputError
from planner.training import (
    TwoLevelSampler,
    class_weight_tensor,
    focal_alpha_tensor,
    image_weights,
    load_latest,
    log_prior_tensor,
    weighted_sampler,
)
from tests.unit.artifacts.helpers import (
    CLASSES,
    NOW,
    small_artifact,
    small_table,
    stop_reason,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def artifact(tmp_path: Path) -> LoadedArtifact:
    write_artifact(tmp_path, small_artifact())
    return load_latest(tmp_path)


def test_class_weights_are_the_chosen_scheme_as_float32(artifact: LoadedArtifact) -> None:
    weight = class_weight_tensor(artifact, CLASSES)
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    yolo = class_weight_tensor(artifact, CLASSES, scheme="yolo")
    expected = artifact.data["class_weights"]["schemes"]["yolo"]["weights"]
    torch.testing.assert_close(yolo, torch.tensor(expected, dtype=torch.float32))
    # the weights plug straight into the loss
    loss = torch.nn.CrossEntropyLoss(weight=weight)(torch.zeros(2, 3), torch.tensor([0, 2]))
    assert torch.isfinite(loss)


def test_an_unknown_scheme_is_refused(artifact: LoadedArtifact) -> None:
    with pytest.raises(InputError, match="'lvis' is not one of"):
        class_weight_tensor(artifact, CLASSES, scheme="lvis")


def test_a_different_class_order_is_an_error(artifact: LoadedArtifact) -> None:
    with pytest.raises(InputError, match=r"orders its classes .*'dog', 'cat'"):
        class_weight_tensor(artifact, ("dog", "cat", "fox"))
    with pytest.raises(InputError, match=r"missing: \['fox'\], extra: \['wolf'\]"):
        focal_alpha_tensor(artifact, ("cat", "dog", "wolf"))


def test_focal_alpha_and_log_priors(artifact: LoadedArtifact) -> None:
    alpha = focal_alpha_tensor(artifact, CLASSES)
    assert float(alpha.sum()) == pytest.approx(1.0)
    assert float(alpha[2]) > float(alpha[1]) > float(alpha[0])
    priors = log_prior_tensor(artifact, CLASSES)
    expected = np.log((np.array([6, 3, 1]) + 0.5) / 11.5)
    np.testing.assert_allclose(priors.numpy(), expected, rtol=1e-6)


def test_the_sampler_draws_each_image_in_proportion_to_its_weight(
    artifact: LoadedArtifact,
) -> None:
    sampler = weighted_sampler(artifact, rng=np.random.default_rng(0), num_samples=30_000)
    assert isinstance(sampler, WeightedRandomSampler)
    drawn = np.bincount(list(sampler), minlength=10)
    # weights 2/3 (cat), 1 (dog), 3 (fox); the single fox image is index 9
    np.testing.assert_allclose(drawn / 30_000, artifact.image_weights / 10.0, atol=0.01)
    default = weighted_sampler(artifact, rng=np.random.default_rng(0))
    assert len(default) == 10  # the planned epoch length


def test_the_same_rng_seed_gives_the_same_draws(artifact: LoadedArtifact) -> None:
    first = list(weighted_sampler(artifact, rng=np.random.default_rng(5)))
    second = list(weighted_sampler(artifact, rng=np.random.default_rng(5)))
    assert first == second


def test_past_the_category_limit_the_two_level_plan_is_used(artifact: LoadedArtifact) -> None:
    sampler = weighted_sampler(
        artifact, rng=np.random.default_rng(1), num_samples=30_000, max_categories=4
    )
    assert isinstance(sampler, TwoLevelSampler)
    assert sampler.plan.num_buckets == 3
    drawn = np.bincount(list(sampler), minlength=10)
    np.testing.assert_allclose(drawn / 30_000, artifact.image_weights / 10.0, atol=0.01)
    data = TensorDataset(torch.arange(10))
    batches = list(DataLoader(data, batch_size=1000, sampler=sampler))
    assert sum(len(b[0]) for b in batches) == 30_000


def test_weights_follow_the_dataset_order(artifact: LoadedArtifact) -> None:
    ids = [109, 100, 106]
    np.testing.assert_allclose(image_weights(artifact, ids), [3.0, 2 / 3, 1.0])
    with pytest.raises(InputError, match=r"1 dataset images are not in artifact .*\[555\]"):
        image_weights(artifact, [100, 555])
    # ids as the artifact's splits write them (JSON keys are text) find the same weights
    split_ids = [i for i, split in artifact.data["splits"].items() if split == "train"]
    assert split_ids[0] == "100"
    np.testing.assert_allclose(image_weights(artifact, ["109", "100"]), [3.0, 2 / 3])


def test_a_labelled_image_the_plan_leaves_out_weighs_nothing(tmp_path: Path) -> None:
    # task 7 is labelled and in the train split, but with no class the plan counts
    images = TrainImages(ids=tuple(np.arange(4)), labels=("cat", "cat", "dog", "fox"))
    table = small_table((2, 1, 1))
    plan = plan_training(table, images)
    splits = {**{int(i): "train" for i in images.ids}, 7: "train"}
    built = build_artifact(plan, table=table, splits=splits, reason=stop_reason(), created_at=NOW)
    write_artifact(tmp_path, built)
    loaded = load_latest(tmp_path)
    assert loaded.data["sampling"]["image_ids"] == [0, 1, 2, 3]  # numpy ids written as ints
    weights = image_weights(loaded, [int(i) for i in loaded.data["splits"]])
    assert weights[-1] == 0.0
    assert (weights[:-1] > 0).all()


def test_importing_the_planner_does_not_import_torch() -> None:
    code = (
        "import sys, planner.training, planner.artifacts, planner.reports; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, timeout=120)
    assert done.returncode == 0


@pytest.mark.slow
def test_the_example_script_trains_from_an_artifact_folder(tmp_path: Path) -> None:
    from examples.train_with_planner import emit_demo_artifacts

    emit_demo_artifacts(tmp_path, np.random.default_rng(3))
    script = "examples/train_with_planner.py"
    done = subprocess.run(
        [sys.executable, script, "--epochs", "1", "--artifacts", tmp_path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "artifact v0001: 437 training images, 1 epochs" in done.stdout
    assert "balanced accuracy:" in done.stdout


@pytest.mark.slow
def test_the_example_script_reports_a_class_mismatch(tmp_path: Path) -> None:
    write_artifact(tmp_path, small_artifact())  # cat, dog, fox: not digits
    done = subprocess.run(
        [sys.executable, "examples/train_with_planner.py", "--artifacts", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert "emit artifacts for this class list" in done.stderr
