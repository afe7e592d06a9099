"""Planning without a daemon: the figures behind ``planner weights`` and ``planner resample``.

Each function takes class names and counts (what a lead has in a spreadsheet), calls the core and
returns a JSON-ready dict whose ``classes`` entry maps every class name to its figures, in the
order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from planner.core.priors import focal_alpha, log_priors
from planner.core.resampling import resampling_plan
from planner.core.weights import SCHEMES, Normalisation, WeightScheme, compare_schemes


def weights_figures(
    classes: Sequence[str],
    counts: Sequence[float],
    *,
    scheme: WeightScheme = "balanced",
    beta: float = 0.999,
    normalise: Normalisation | None = None,
    max_ratio: float | None = None,
    tau: float = 1.0,
) -> dict[str, Any]:
    """Every weight scheme side by side, the chosen one's focal alpha, the log-priors and the
    logit adjustment ``tau * log_prior`` (what a training job adds to its logits).

    ``normalise`` and ``max_ratio`` apply to every scheme alike so the columns stay comparable;
    ``None`` keeps each scheme's own convention.
    """
    by_scheme = compare_schemes(
        classes, counts, beta=beta, normalise=normalise, max_ratio=max_ratio
    )
    chosen = by_scheme[scheme]
    alpha = focal_alpha(chosen).alpha
    priors = log_priors(classes, counts, tau=tau)
    figures = {
        name: {
            "count": _plain(chosen.counts[i]),
            "weight": float(chosen.weights[i]),
            **{s: float(by_scheme[s].weights[i]) for s in SCHEMES},
            "focal_alpha": float(alpha[i]),
            "prior": float(priors.priors[i]),
            "log_prior": float(priors.log_priors[i]),
            "adjustment": float(priors.adjustment[i]),
        }
        for i, name in enumerate(chosen.classes)
    }
    return {
        "scheme": scheme,
        "schemes": list(SCHEMES),
        "normalisation": {s: by_scheme[s].normalisation for s in SCHEMES},
        "empty": list(chosen.empty),
        "clipped": list(chosen.clipped),
        "tau": tau,
        "classes": figures,
    }


def resample_figures(
    classes: Sequence[str],
    counts: Sequence[float],
    *,
    target: int | None = None,
    max_oversample: float = 5.0,
    allow_undersample: bool = True,
) -> dict[str, Any]:
    """Per-class effective counts and multipliers for one epoch of ``target`` images."""
    plan = resampling_plan(
        classes,
        counts,
        target=target,
        max_oversample=max_oversample,
        allow_undersample=allow_undersample,
    )
    return {
        **plan.summary(),
        "empty": list(plan.empty),
        "capped": list(plan.capped),
        "dropped": list(plan.dropped),
        "classes": plan.as_dict(),
    }


def _plain(value: float) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number
