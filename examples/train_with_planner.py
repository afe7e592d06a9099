"""Train a small CNN on scikit-learn's digits with the planner's artifacts (CPU, a few seconds).

    python examples/train_with_planner.py                       # emits demo artifacts first
    python examples/train_with_planner.py --artifacts artifacts/  # uses `planner emit` output

The artifact's image ids are indices into ``sklearn.datasets.load_digits()`` and its classes the
digits "0" to "9". Without ``--artifacts`` the script plays the planner's part: it keeps a
long-tailed subset of the digits (digit 9 rare), emits artifacts into a temporary folder and
then trains from them like any job would: class-weighted cross-entropy and a weighted sampler.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from planner.artifacts import EmitReason, TrainImages, build_artifact, plan_training, write_artifact
from planner.core.table import CountTable
from planner.errors import PlannerError
from planner.training import class_weight_tensor, load_latest, log_prior_tensor, weighted_sampler

CLASSES = tuple(str(d) for d in range(10))


def emit_demo_artifacts(folder: Path, rng: np.random.Generator) -> None:
    """The planner's side: a long-tailed training split and the artifacts made from it."""
    digits = load_digits()
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(digits.target == d))[: 150 // (1 + d)] for d in range(10)]
    )
    labels = tuple(str(int(y)) for y in digits.target[keep])
    ids = tuple(int(i) for i in keep)
    counts = np.bincount(digits.target[keep], minlength=10)[None, :].astype(np.int64)
    table = CountTable(CLASSES, ("train",), counts, counts, counts)
    plan = plan_training(table, TrainImages(ids=ids, labels=labels))
    reason = EmitReason("on_demand", "example script")
    artifact = build_artifact(
        plan,
        table=table,
        splits=dict.fromkeys(ids, "train"),
        reason=reason,
        created_at=datetime.now(UTC),
    )
    write_artifact(folder, artifact)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        self.head = nn.Linear(16 * 4 * 4, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def train(folder: Path, *, epochs: int, seed: int) -> dict[str, float]:
    """The training job's side: load the latest artifacts and train with them."""
    artifact = load_latest(folder)
    weight = class_weight_tensor(artifact, CLASSES)  # raises if the class order differs
    adjustment = log_prior_tensor(artifact, CLASSES)
    digits = load_digits()
    ids = [int(i) for i in artifact.data["sampling"]["image_ids"]]
    x = torch.tensor(digits.images[ids] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target[ids], dtype=torch.long)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sampler = weighted_sampler(artifact, rng=rng, image_ids=ids)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, sampler=sampler)
    model = SmallCNN()
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for batch_x, batch_y in loader:
            optimiser.zero_grad()
            loss = loss_fn(model(batch_x), batch_y)
            loss.backward()
            optimiser.step()
    test = np.setdiff1d(np.arange(len(digits.target)), ids)
    with torch.no_grad():
        logits = model(torch.tensor(digits.images[test] / 16.0, dtype=torch.float32).unsqueeze(1))
        # post-hoc logit adjustment (Menon et al.): subtract tau * log prior
        predicted = (logits - adjustment).argmax(dim=1).numpy()
    truth = digits.target[test]
    recall = {c: float((predicted[truth == int(c)] == int(c)).mean()) for c in CLASSES}
    print(f"artifact {artifact.version}: {len(ids)} training images, {epochs} epochs")
    print("recall per digit on held-out images:")
    print(" ".join(f"{c}:{r:.2f}" for c, r in recall.items()))
    print(f"balanced accuracy: {np.mean(list(recall.values())):.3f}")
    return recall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, help="artifact folder written by the planner")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.artifacts is not None:
            train(args.artifacts, epochs=args.epochs, seed=args.seed)
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            emit_demo_artifacts(Path(tmp), np.random.default_rng(args.seed))
            train(Path(tmp), epochs=args.epochs, seed=args.seed)
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
