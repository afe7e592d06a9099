"""The count table every part of the core shares: per split, per class, three kinds of count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from planner.errors import InputError

CountKind = Literal["images", "instances", "pixels"]
COUNT_KINDS: tuple[CountKind, ...] = ("images", "instances", "pixels")
UNKNOWN = "unknown"
"""Class name under which labels outside the label config are counted."""


@dataclass(frozen=True, slots=True)
class CountTable:
    """Counts per split and class.

    ``images[s, c]`` is the number of images in split ``s`` that contain class ``c`` (for
    classification, the images labelled ``c``); ``instances[s, c]`` the regions of ``c``;
    ``pixels[s, c]`` the pixel area of ``c`` (brush masks decoded, polygon and box areas).
    All three are ``(S, C)`` int64 arrays.
    """

    classes: tuple[str, ...]
    splits: tuple[str, ...]
    images: npt.NDArray[np.int64]
    instances: npt.NDArray[np.int64]
    pixels: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        shape = (len(self.splits), len(self.classes))
        for kind in COUNT_KINDS:
            array = getattr(self, kind)
            if array.shape != shape:
                raise InputError(
                    f"{kind} has shape {array.shape}, expected {shape} (splits, classes)"
                )
        if len(set(self.classes)) != len(self.classes):
            raise InputError(f"class names repeat in {self.classes}")

    @classmethod
    def zeros(cls, classes: tuple[str, ...], splits: tuple[str, ...]) -> CountTable:
        shape = (len(splits), len(classes))
        return cls(
            classes=classes,
            splits=splits,
            images=np.zeros(shape, np.int64),
            instances=np.zeros(shape, np.int64),
            pixels=np.zeros(shape, np.int64),
        )

    def of(self, kind: CountKind) -> npt.NDArray[np.int64]:
        """The ``(S, C)`` array of one kind."""
        if kind not in COUNT_KINDS:
            raise InputError(f"count kind {kind!r} is not one of {COUNT_KINDS}")
        array: npt.NDArray[np.int64] = getattr(self, kind)
        return array

    def totals(self, kind: CountKind) -> npt.NDArray[np.int64]:
        """``(C,)`` counts of one kind summed over splits."""
        total: npt.NDArray[np.int64] = self.of(kind).sum(axis=0)
        return total

    def split(self, name: str, kind: CountKind) -> npt.NDArray[np.int64]:
        """``(C,)`` counts of one kind in one split."""
        if name not in self.splits:
            raise InputError(f"split {name!r} is not one of {self.splits}")
        row: npt.NDArray[np.int64] = self.of(kind)[self.splits.index(name)]
        return row

    def without(self, *names: str) -> CountTable:
        """The table without the columns of ``names`` (absent names are ignored).

        The planner drops the ``unknown`` bucket this way before weights and metrics: it counts
        labels the config lacks, which no training job learns.
        """
        keep = [i for i, name in enumerate(self.classes) if name not in names]
        return CountTable(
            classes=tuple(self.classes[i] for i in keep),
            splits=self.splits,
            images=self.images[:, keep],
            instances=self.instances[:, keep],
            pixels=self.pixels[:, keep],
        )

    def as_dict(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{kind: {split: {class: count}}}`` plus a ``total`` split, for JSON."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for kind in COUNT_KINDS:
            array = self.of(kind)
            per_split = {
                split: dict(zip(self.classes, (int(v) for v in array[i]), strict=True))
                for i, split in enumerate(self.splits)
            }
            per_split["total"] = dict(
                zip(self.classes, (int(v) for v in array.sum(axis=0)), strict=True)
            )
            out[kind] = per_split
        return out
