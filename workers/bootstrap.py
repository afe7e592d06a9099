"""The built-in bootstrap network: a small CNN trained on the labelled images for a cold start.

It is trained again only when enough new labels have arrived (``needs_training``), and kept as
a plain state dict in a shared folder so every worker scores with the same network and the
same version, whichever of them trained it. A network's columns are the project's classes in
the order it was trained with: the file name and the version carry a hash of that tuple and the
file the tuple itself, so a network trained on other classes is never taken for this one.

Workers that train for the same state at once (project, classes, label count) may still get
different networks: an image one of them could not fetch for now, another torch build. One
file a state, created only if absent: the first saved wins, and the others score with it
instead of their own, so a pool is scored by one version. The version is a hash of the
weights, not of the inputs, so the same version always means the same network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from planner.errors import ConfigError
from workers.devices import torch_threads
from workers.models import ScoringModel, read_state_dict

_SAVED = re.compile(
    r"^bootstrap-p(?P<project>\d+)-c(?P<classes>[0-9a-f]{8})-n(?P<count>\d+)\.state$"
)
_NAMING = "bootstrap-pP-cCLASSES-nN"


class BootstrapNet(nn.Module):
    """A small CNN for a cold start: logits and a 64-d embedding."""

    def __init__(self, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, 64),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.features(x)
        return self.head(self.dropout(embedding)), embedding


@dataclass(frozen=True, slots=True)
class Trained:
    """A bootstrap network, how many labelled tasks were there when it was trained, and the
    classes its columns are, in order."""

    model: ScoringModel
    labelled: int
    classes: tuple[str, ...]


def classes_hash(classes: Sequence[str]) -> str:
    """8 hex digits naming ``classes`` in their order (the columns of a network's output)."""
    return hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()[:8]


def needs_training(trained_on: int | None, labelled_now: int, min_new: int) -> bool:
    """Train (again) when there is no network yet, or ``min_new`` labels arrived since."""
    if labelled_now == 0:
        return False
    return trained_on is None or labelled_now - trained_on >= max(1, min_new)


def train_bootstrap(
    images: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    classes: Sequence[str],
    *,
    seed: int = 0,
    epochs: int = 30,
    labelled: int | None = None,
) -> Trained:
    """Train on ``images: (N, 3, H, W)`` in [0, 1] with class-balanced weights (deterministic
    for the same inputs on the same torch build and CPU)."""
    if len(images) == 0:
        raise ConfigError("the bootstrap model needs labelled images; label a few first")
    n_classes = len(classes)
    torch.manual_seed(seed)
    model = BootstrapNet(n_classes)
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    # tensors this small train several times faster on one thread than on contended cores
    with torch_threads(1):
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), 64):
                batch = order[start : start + 64]
                optimiser.zero_grad()
                logits, _ = model(x[batch])
                loss_fn(logits, y[batch]).backward()
                optimiser.step()
    model.eval()
    count = len(labels) if labelled is None else labelled
    return _trained(model, count, tuple(classes))


def _trained(model: BootstrapNet, count: int, classes: tuple[str, ...]) -> Trained:
    weights = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    version = f"bootstrap-{count}-{classes_hash(classes)}-{weights.hexdigest()[:12]}"
    return Trained(ScoringModel(model, version), count, classes)


def save_bootstrap(trained: Trained, folder: Path, project_id: int) -> Trained:
    """Save the network for its state (project, classes, label count) unless one is saved
    already; the network saved for that state, to score with: ``trained`` or the other."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"bootstrap-p{project_id}-c{classes_hash(trained.classes)}-n{trained.labelled}"
    path = folder / f"{name}.state"
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".part")
    os.close(handle)
    try:
        state = {"classes": list(trained.classes), **trained.model.module.state_dict()}
        torch.save(state, temporary)
        # a link fails where the name exists, unlike a rename; readers never see half a file
        os.link(temporary, path)
    except FileExistsError:
        return load_saved(path)  # another worker saved first: its network is the state's
    finally:
        os.unlink(temporary)
    return trained


def latest_saved(folder: Path | None, project_id: int, classes: Sequence[str]) -> Path | None:
    """The saved bootstrap network trained on the most labels for ``project_id`` with these
    ``classes`` in this order (one trained on others is no network for them)."""
    if folder is None or not folder.is_dir():
        return None
    wanted = classes_hash(classes)
    found = []
    for path in folder.iterdir():
        match = _SAVED.match(path.name)
        if match and int(match["project"]) == project_id and match["classes"] == wanted:
            found.append((int(match["count"]), path.name, path))
    return max(found)[2] if found else None


def saved_labelled(path: Path) -> int:
    """How many labelled tasks the saved network at ``path`` was trained with."""
    match = _SAVED.match(path.name)
    if match is None:
        raise ConfigError(f"{path} is not a saved bootstrap network ({_NAMING})")
    return int(match["count"])


def load_saved(path: Path) -> Trained:
    """A saved bootstrap network (a plain state dict, read with ``weights_only=True``), with
    the classes it was trained on as its file holds them."""
    match = _SAVED.match(path.name)
    if match is None:
        raise ConfigError(f"{path} is not a saved bootstrap network ({_NAMING})")
    state = read_state_dict(
        path, "the bootstrap network", "delete it and the bootstrap network is trained again"
    )
    names = state.pop("classes", None)
    if not isinstance(names, list) or not names:
        raise ConfigError(
            f"{path} does not say which classes it was trained on; delete it and the "
            "bootstrap network is trained again"
        )
    classes = tuple(str(name) for name in names)
    model = BootstrapNet(len(classes))
    model.load_state_dict(state)
    model.eval()
    return _trained(model, int(match["count"]), classes)
