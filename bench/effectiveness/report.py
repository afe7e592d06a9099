"""Summaries over seeds: the results table (Markdown), the target checks and the PNG curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.effectiveness.simulate import Run
from bench.effectiveness.strategies import PLANNER

Summary = dict[str, Any]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def summarise(runs: list[Run], *, cap: int, budgets: tuple[int, ...]) -> dict[str, Summary]:
    """Per strategy: labels needed (capped runs count as ``cap``), yield, metrics, timing."""
    out: dict[str, Summary] = {}
    for name in dict.fromkeys(r.strategy for r in runs):
        mine = [r for r in runs if r.strategy == name]
        needed = [r.labels_needed if r.labels_needed is not None else cap for r in mine]
        entry: Summary = {
            "labels_needed": _mean_sd(needed),
            "censored": sum(r.labels_needed is None for r in mine),
            "runs": len(mine),
            "yield": _mean_sd([float(np.mean(r.yields)) if r.yields else 0.0 for r in mine]),
            "select_ms": _mean_sd([1e3 * float(np.mean(r.select_seconds)) for r in mine]),
        }
        for b in budgets:
            at = [r.at_budget[b] for r in mine if b in r.at_budget]
            entry[f"f1@{b}"] = _mean_sd([m["macro_f1"] for m in at])
            entry[f"prauc@{b}"] = _mean_sd([m["rare_pr_auc"] for m in at])
            entry[f"recall@{b}"] = np.mean([m["recall"] for m in at], axis=0).tolist()
        out[name] = entry
    return out


def targets(summary: dict[str, Summary], budgets: tuple[int, ...]) -> dict[str, Any] | None:
    """The issue's three targets for the planner (with diversity) against the others;
    ``None`` when the run lacks the planner or random (``--strategies`` picked others)."""
    if "planner" not in summary or "random" not in summary:
        return None
    mine = summary["planner"]
    others = {k: v for k, v in summary.items() if k not in PLANNER}
    rivals = {k: v for k, v in others.items() if k != "random"}
    need = mine["labels_needed"][0]
    best_name = min(rivals, key=lambda k: rivals[k]["labels_needed"][0], default=None)
    best = rivals[best_name]["labels_needed"][0] if best_name else float("nan")
    random = summary["random"]["labels_needed"][0]
    f1_ok = all(
        mine[f"f1@{b}"][0] >= max(v[f"f1@{b}"][0] for v in others.values()) for b in budgets
    )
    return {
        "vs_random": need / random,
        "vs_best": need / best,
        "best_other": best_name,
        "random_ok": need <= random / 10,
        "best_ok": need <= 0.7 * best,
        "f1_ok": f1_ok,
    }


def _fmt(pair: tuple[float, float], digits: int = 0) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def table(name: str, summary: dict[str, Summary], budgets: tuple[int, ...], cap: int) -> str:
    """One Markdown table for one data set."""
    head = ["strategy", "labels to meet quotas", "rare yield / batch"]
    head += [f"macro-F1 @{b}" for b in budgets] + [f"rare PR-AUC @{b}" for b in budgets[-1:]]
    head += ["select ms / batch"]
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy, s in summary.items():
        needed = _fmt(s["labels_needed"])
        if s["censored"]:
            needed += f" ({s['censored']}/{s['runs']} hit the {cap} cap)"
        cells = [f"**{strategy}**" if strategy in PLANNER else strategy, needed]
        cells.append(_fmt(s["yield"], 2))
        cells += [_fmt(s[f"f1@{b}"], 3) for b in budgets]
        cells += [_fmt(s[f"prauc@{b}"], 3) for b in budgets[-1:]]
        cells.append(_fmt(s["select_ms"], 1))
        lines.append("| " + " | ".join(cells) + " |")
    check = targets(summary, budgets)
    if check is None:
        return "\n".join([*lines, ""])
    lines += [
        "",
        f"Planner vs random: {check['vs_random']:.2f}x the labels (target <= 0.10: "
        f"{'met' if check['random_ok'] else 'NOT met'}); vs the best other strategy "
        f"({check['best_other']}): {check['vs_best']:.2f}x (target <= 0.70: "
        f"{'met' if check['best_ok'] else 'NOT met'}); macro-F1 at every budget >= the best "
        f"other strategy's mean: {'yes' if check['f1_ok'] else 'NO'}.",
        "",
    ]
    return "\n".join(lines)


def plot(name: str, runs: list[Run], path: Path, *, xmax: int) -> None:
    """Quota progress and macro-F1 against labels, mean and spread over seeds, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    grid = np.arange(0, xmax + 1, 10)
    for strategy in dict.fromkeys(r.strategy for r in runs):
        mine = [r for r in runs if r.strategy == strategy]
        style = "-" if strategy in PLANNER else "--"
        width = 2.2 if strategy in PLANNER else 1.2
        for ax, key in ((axes[0], "quota_curve"), (axes[1], "f1_curve")):
            curves = []
            for r in mine:
                xs, ys = zip(*getattr(r, key), strict=True)
                # runs stop once done: hold the last value (quota curves end at 100%)
                curves.append(np.interp(grid, xs, ys, right=ys[-1]))
            stack = np.asarray(curves)
            keep = grid <= max(max(x for x, _ in getattr(r, key)) for r in mine)
            mean, sd = stack.mean(axis=0)[keep], stack.std(axis=0)[keep]
            ax.plot(grid[keep], mean, style, lw=width, label=strategy)
            ax.fill_between(grid[keep], mean - sd, mean + sd, alpha=0.12)
    axes[0].set(xlabel="labels", ylabel="share of quota met", title=f"{name}: quotas")
    axes[1].set(xlabel="labels", ylabel="macro-F1 (test)", title=f"{name}: macro-F1")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
