"""The training side: the latest artifacts as torch tensors and a sampler.

Torch is imported inside the functions, so importing the planner never loads it::

    artifact = load_latest("artifacts/")
    loss = nn.CrossEntropyLoss(weight=class_weight_tensor(artifact, dataset.classes))
    sampler = weighted_sampler(artifact, rng=np.random.default_rng(0), image_ids=dataset.ids)
    loader = DataLoader(dataset, batch_size=64, sampler=sampler)

Every tensor follows the artifact's class order, which must equal the job's class list: a loss
weight in the wrong order silently trains the wrong classes up, so a mismatch is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from planner.artifacts import LoadedArtifact, read_artifact
from planner.core.sampling import MAX_CATEGORIES, SamplingPlan, sampling_plan
from planner.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import WeightedRandomSampler

ItemId = int | str


def load_latest(folder: str | os.PathLike[str]) -> LoadedArtifact:
    """The latest verified artifact in ``folder`` (checksums and schema version checked)."""
    return read_artifact(folder)


def check_classes(artifact: LoadedArtifact, classes: Sequence[str]) -> None:
    """Raises ``InputError`` unless ``classes`` is the artifact's class list, in its order."""
    expected = artifact.classes
    given = tuple(classes)
    if given == expected:
        return
    if set(given) == set(expected):
        raise InputError(
            f"the training job orders its classes {given}, the artifact {artifact.version} "
            f"orders them {expected}; index the model's outputs in the artifact's order"
        )
    raise InputError(
        f"the training job's classes {given} differ from artifact {artifact.version}'s "
        f"{expected} (missing: {sorted(set(expected) - set(given))}, extra: "
        f"{sorted(set(given) - set(expected))}); emit artifacts for this class list"
    )


def class_weight_tensor(
    artifact: LoadedArtifact, classes: Sequence[str], *, scheme: str | None = None
) -> torch.Tensor:
    """``(C,)`` float32 weights for ``nn.CrossEntropyLoss(weight=...)``; default: the chosen
    scheme."""
    check_classes(artifact, classes)
    block = artifact.data["class_weights"]
    name = block["chosen"] if scheme is None else scheme
    if name not in block["schemes"]:
        raise InputError(f"weight scheme {name!r} is not one of {sorted(block['schemes'])}")
    return _tensor(block["schemes"][name]["weights"])


def focal_alpha_tensor(artifact: LoadedArtifact, classes: Sequence[str]) -> torch.Tensor:
    """``(C,)`` focal-loss alpha (its kind is ``artifact.data["focal_alpha"]["loss"]``)."""
    check_classes(artifact, classes)
    return _tensor(artifact.data["focal_alpha"]["alpha"])


def log_prior_tensor(artifact: LoadedArtifact, classes: Sequence[str]) -> torch.Tensor:
    """``(C,)`` ``tau * log pi``: add to the logits in the loss, or subtract post hoc."""
    check_classes(artifact, classes)
    block = artifact.data["log_priors"]
    return _tensor(np.asarray(block["log_priors"]) * block["tau"])


def image_weights(
    artifact: LoadedArtifact, image_ids: Sequence[ItemId] | None = None
) -> npt.NDArray[np.float64]:
    """``(N,)`` per-image weights, in the order of ``image_ids`` (default: the artifact's).

    An id may be given as the artifact's ``splits`` write it (JSON keys are text: ``"17"``) or
    as the sampler's (``17``). A labelled image the plan leaves out (in ``splits``, but with no
    class the plan counts: its label is unknown to the label config) weighs 0: never drawn.
    """
    weights = artifact.image_weights
    if image_ids is None:
        return weights
    sampled = artifact.data["sampling"]["image_ids"]
    position = {item: i for i, item in enumerate(sampled)}
    as_text: dict[str, int] = {}  # built at the first id not found as it is
    labelled = artifact.data.get("splits") or {}
    out: npt.NDArray[np.float64] = np.zeros(len(image_ids), dtype=np.float64)
    missing = []
    for k, item in enumerate(image_ids):
        found = position.get(item)
        if found is None:
            as_text = as_text or {str(key): i for i, key in enumerate(sampled)}
            found = as_text.get(str(item))
        if found is not None:
            out[k] = weights[found]
        elif str(item) not in labelled:
            missing.append(item)
    if missing:
        raise InputError(
            f"{len(missing)} dataset images are not in artifact {artifact.version} "
            f"(first: {missing[:5]}); emit artifacts after these images were labelled"
        )
    return out


class TwoLevelSampler:
    """Draws image indices bucket first, then image, for more than 2**24 images.

    ``torch.multinomial`` refuses more categories; ``DataLoader(sampler=...)`` accepts any
    iterable of indices, so this needs no torch. Each epoch draws with a fresh child of ``rng``.
    """

    def __init__(self, plan: SamplingPlan, rng: np.random.Generator) -> None:
        self.plan = plan
        self._rng = rng

    def __len__(self) -> int:
        return self.plan.num_samples

    def __iter__(self) -> Iterator[int]:
        drawn = self.plan.draw(None, self._rng)
        return iter(drawn.tolist())


def weighted_sampler(
    artifact: LoadedArtifact,
    *,
    rng: np.random.Generator,
    image_ids: Sequence[ItemId] | None = None,
    num_samples: int | None = None,
    max_categories: int = MAX_CATEGORIES,
) -> WeightedRandomSampler | TwoLevelSampler:
    """A sampler drawing dataset index ``i`` with probability ``w_i / sum(w)``, with replacement.

    ``image_ids`` gives the dataset's order (default: the artifact's). ``num_samples`` defaults
    to the planned epoch length. Up to ``max_categories`` images it is torch's
    ``WeightedRandomSampler``; beyond, a ``TwoLevelSampler`` over the core's two-level plan.
    """
    weights = image_weights(artifact, image_ids)
    planned = int(artifact.data["sampling"]["num_samples"])
    count = planned if num_samples is None else num_samples
    plan = sampling_plan(weights, num_samples=count, max_categories=max_categories)
    if plan.num_buckets > 1:
        return TwoLevelSampler(plan, rng)
    import torch  # noqa: PLC0415 - torch only when a training job asks for it
    from torch.utils.data import WeightedRandomSampler  # noqa: PLC0415

    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    # torch annotates weights as Sequence[float] but takes (and prefers) a tensor: no copy
    probabilities = cast("Sequence[float]", torch.from_numpy(plan.probabilities))
    return WeightedRandomSampler(
        probabilities,
        plan.num_samples,
        replacement=True,
        generator=generator,
    )


def _tensor(values: Sequence[float] | npt.NDArray[np.float64]) -> torch.Tensor:
    import torch  # noqa: PLC0415 - torch only when a training job asks for it

    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)
