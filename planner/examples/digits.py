"""Long-tailed digit images for the live demo and the end-to-end test.

scikit-learn's bundled digits (1,797 8x8 scans, about 180 of each digit) are thinned to a long
tail, digit ``k`` keeping ``head * ratio^(-k/9)`` images (0 the most common, 9 the rarest),
shuffled, upscaled and written as PNG files a Label Studio Local storage serves. Only the demo
and the tests need scikit-learn (the ``dev`` extra); it is imported when images are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIGITS = tuple(str(d) for d in range(10))
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Header value="Which digit is this?"/>'
    '<Choices name="digit" toName="image" choice="single" showInline="true">'
    + "".join(f'<Choice value="{d}"/>' for d in DIGITS)
    + "</Choices></View>"
)


@dataclass(frozen=True, slots=True)
class DigitImages:
    """PNG files in ``folder`` and the true digit of each, in import order."""

    folder: Path
    files: tuple[str, ...]
    digits: tuple[int, ...]

    def counts(self) -> dict[str, int]:
        found = np.bincount(np.asarray(self.digits, dtype=np.int64), minlength=len(DIGITS))
        return {name: int(n) for name, n in zip(DIGITS, found, strict=True)}

    def tasks(self, document_root: Path) -> list[dict[str, Any]]:
        """Label Studio task dicts whose image is served from ``document_root``'s Local storage."""
        relative = self.folder.resolve().relative_to(document_root.resolve())
        return [{"data": {"image": f"/data/local-files/?d={relative}/{f}"}} for f in self.files]


def long_tail_counts(head: int, ratio: float) -> list[int]:
    """Images kept of each digit: ``head`` of 0 down to ``head / ratio`` of 9 (at least 1)."""
    if head < 1 or ratio < 1:
        raise ValueError(f"head must be ≥ 1 and ratio ≥ 1 (got {head}, {ratio})")
    return [max(1, round(head * ratio ** (-k / 9))) for k in range(len(DIGITS))]


def write_digit_images(
    folder: Path, *, head: int = 120, ratio: float = 12.0, size: int = 64, seed: int = 0
) -> DigitImages:
    """Write the long-tailed digits to ``folder`` as ``size``x``size`` grey PNGs."""
    # imported here: only the demo and the tests make images
    from PIL import Image  # noqa: PLC0415
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]  # noqa: PLC0415

    bundled = load_digits()
    rng = np.random.default_rng(seed)
    wanted = long_tail_counts(head, ratio)
    chosen: list[int] = []
    for digit, count in enumerate(wanted):
        where = np.flatnonzero(bundled.target == digit)
        chosen.extend(int(i) for i in rng.choice(where, size=min(count, len(where)), replace=False))
    order = rng.permutation(len(chosen))
    folder.mkdir(parents=True, exist_ok=True)
    files, digits = [], []
    for position, k in enumerate(order):
        index = chosen[int(k)]
        pixels = (bundled.images[index] * 16).clip(0, 255).astype(np.uint8)
        name = f"digit-{position:04d}.png"
        # nearest-neighbour: the scan's own 8x8 cells, large enough to see in Label Studio
        Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).save(folder / name)
        files.append(name)
        digits.append(int(bundled.target[index]))
    return DigitImages(folder, tuple(files), tuple(digits))


def choice_result(digit: int | str) -> list[dict[str, Any]]:
    """The annotation result of choosing ``digit`` in ``LABEL_CONFIG``."""
    return [
        {
            "from_name": "digit",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [str(digit)]},
        }
    ]
