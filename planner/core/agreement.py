"""Agreement between two labelings: Cohen's kappa, and kappa between successive model versions.

``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the share of items on which the two agree and
``p_e = sum_k p_a(k) p_b(k)`` the agreement expected by chance from each side's label shares.
When the two label vectors are identical kappa is 1, including the degenerate case where both
give one class everywhere (``p_e = 1``; scikit-learn returns NaN or 0 there). That is the only
way ``p_e`` reaches 1, so kappa is always defined.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from planner.errors import InputError

__all__ = ["cohen_kappa", "successive_kappas"]


def _labels(values: npt.ArrayLike, name: str) -> npt.NDArray[np.generic]:
    array = np.asarray(values)
    if array.dtype.kind not in "biufU":
        raise InputError(f"{name} must hold int, bool, float or str labels, got {array.dtype}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(f"{name} holds NaN or infinite labels; drop or fill them first")
    return array


def cohen_kappa(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Cohen's kappa between label vectors ``a: (n,)`` and ``b: (n,)``, in ``[-1, 1]``.

    Labels may be ints or strings. Multi-label predictions ``(n, C)`` are compared as ``n * C``
    binary decisions. Identical vectors give exactly 1.
    """
    left, right = _labels(a, "a"), _labels(b, "b")
    if left.shape != right.shape:
        raise InputError(f"label vectors differ in shape: {left.shape} and {right.shape}")
    if left.size == 0:
        raise InputError("kappa needs at least one labelled item")
    left, right = left.ravel(), right.ravel()
    if np.array_equal(left, right):
        return 1.0
    if (left.dtype.kind == "U") != (right.dtype.kind == "U"):
        raise InputError(
            f"one label vector holds strings and the other numbers ({left.dtype}, {right.dtype}); "
            "map both to the same label type"
        )
    _, codes = np.unique(np.concatenate([left, right]), return_inverse=True)
    n = left.size
    k = int(codes.max()) + 1
    code_a, code_b = codes[:n], codes[n:]
    observed = float(np.count_nonzero(code_a == code_b)) / n
    share_a = np.bincount(code_a, minlength=k) / n
    share_b = np.bincount(code_b, minlength=k) / n
    expected = float(share_a @ share_b)
    # expected < 1 here: both sides constant on one class would have made them equal above.
    return (observed - expected) / (1.0 - expected)


def successive_kappas(predictions: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float64]:
    """``(V - 1,)`` kappa between each model version's predictions and the next one's.

    ``predictions``: ``V`` label vectors on the same fixed stop set, oldest first.
    """
    kappas = [cohen_kappa(before, after) for before, after in itertools.pairwise(predictions)]
    out: npt.NDArray[np.float64] = np.array(kappas, dtype=np.float64)
    return out
