"""Charts for the HTML report: matplotlib on the Agg backend, inline SVG data URIs, alt text.

Figures are made with the object API (``Figure`` + the Agg canvas), never ``pyplot``: no global
figure state, no display, safe in a daemon thread.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from planner.reports.model import ReportData
from planner.reports.tables import fmt


@dataclass(frozen=True, slots=True)
class Chart:
    key: str
    title: str
    alt: str
    data_uri: str


def report_charts(report: ReportData) -> tuple[Chart, ...]:
    """The charts that have data, in page order."""
    charts = [_quota_chart(report)]
    if len(report.burnup) > 1:
        charts.append(_burnup_chart(report))
    if report.batches:
        charts.append(_yield_chart(report))
    if any(r.days_remaining is not None for r in report.eta):
        charts.append(_eta_chart(report))
    return tuple(charts)


def _quota_chart(report: ReportData) -> Chart:
    scopes = [*report.splits, "total"]
    classes = list(dict.fromkeys(r.class_name for r in report.quotas))
    figure = Figure(figsize=(3.2 * len(scopes), 3.0))
    axes = figure.subplots(1, len(scopes), sharey=False, squeeze=False)[0]
    for ax, scope in zip(axes, scopes, strict=True):
        rows = {r.class_name: r for r in report.quotas if r.split == scope}
        counts = [rows[c].count for c in classes]
        targets = [np.nan if rows[c].target is None else rows[c].target for c in classes]
        y = np.arange(len(classes))
        ax.barh(y, counts, color="#4c72b0", label="count")
        ax.scatter(targets, y, marker="|", s=300, color="#c44e52", label="target", zorder=3)
        ax.set_yticks(y, [_text(c) for c in classes])
        ax.set_title(scope)
        ax.invert_yaxis()
    axes[0].legend(loc="lower right", fontsize="small")
    parts = [
        f"{r.class_name} {r.split} {r.count}" + ("" if r.target is None else f" of {r.target}")
        for r in report.quotas
    ]
    alt = "Bar chart of counts against quota targets per split: " + "; ".join(parts) + "."
    return Chart("quotas", "Counts against quota", alt, _svg(figure))


def _burnup_chart(report: ReportData) -> Chart:
    figure = Figure(figsize=(7, 3.2))
    ax = figure.subplots()
    times = [p.at for p in report.burnup]
    days = [(t - times[0]).total_seconds() / 86_400 for t in times]
    targets = {r.class_name: r.target for r in report.quotas if r.split == "total"}
    for name in report.burnup[-1].counts:
        counts = [p.counts.get(name, 0) for p in report.burnup]
        line = ax.plot(days, counts, label=_text(name))
        target = targets.get(name)
        if target is not None:
            ax.axhline(target, linestyle="--", linewidth=0.8, color=line[0].get_color())
    ax.set_xlabel(f"days since {fmt(times[0])}")
    ax.set_ylabel("count")
    ax.legend(fontsize="small")
    last = report.burnup[-1]
    alt = (
        f"Line chart of counts per class from {fmt(times[0])} to {fmt(times[-1])}, dashed lines "
        "at the targets; latest counts: "
        + ", ".join(f"{c} {n}" for c, n in last.counts.items())
        + "."
    )
    return Chart("burnup", "Burn-up", alt, _svg(figure))


def _yield_chart(report: ReportData) -> Chart:
    figure = Figure(figsize=(7, 2.8))
    ax = figure.subplots()
    names = [b.batch_id for b in report.batches]
    # a batch nothing of which is labelled yet has no bar (NaN), not a bar at 0
    rates = [np.nan if b.yield_rate is None else b.yield_rate for b in report.batches]
    ax.bar(names, rates, color="#55a868")
    ax.set_ylabel("yield")
    ax.set_ylim(0, 1)
    alt = "Bar chart of the yield of each batch: " + ", ".join(
        f"{b.batch_id} {fmt(b.yield_rate)}" for b in report.batches
    )
    return Chart("batches", "Yield of each batch", alt + ".", _svg(figure))


def _eta_chart(report: ReportData) -> Chart:
    rows = [r for r in report.eta if r.days_remaining is not None]
    figure = Figure(figsize=(7, 0.5 + 0.4 * len(rows)))
    ax = figure.subplots()
    ax.barh(_names(rows), [r.days_remaining or 0.0 for r in rows], color="#8172b2")
    ax.invert_yaxis()
    ax.set_xlabel("days left")
    alt = "Bar chart of days left per class: " + ", ".join(
        f"{r.class_name} {fmt(r.days_remaining)}" for r in rows
    )
    return Chart("eta", "Expected completion", alt + ".", _svg(figure))


def _names(rows: Sequence[object]) -> list[str]:
    return [_text(str(getattr(r, "class_name", ""))) for r in rows]


def _text(name: str) -> str:
    """A class name as matplotlib shows it literally: a ``$`` pair is maths to it (an unknown
    symbol failed the whole report) and a legend leaves out labels starting with ``_``."""
    shown = name.replace("$", r"\$")
    return "\u200b" + shown if shown.startswith("_") else shown


def _svg(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    # no date metadata: the same report gives the same bytes
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
