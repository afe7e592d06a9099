"""The report's tables as text cells, built once and shown by both HTML and Markdown.

Numbers are formatted here and only here, so the two renderings cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from planner.health import ScoringRun
from planner.reports.model import ImbalanceRow, ReportData


@dataclass(frozen=True, slots=True)
class Table:
    key: str
    title: str
    note: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def fmt(value: object) -> str:
    """One cell: ``-`` for nothing, yes/no, integers as is, floats to 2 decimals, UTC minutes."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.2f}"
    elif isinstance(value, datetime):
        text = value.isoformat(timespec="minutes")
    elif isinstance(value, tuple | list):
        text = ", ".join(fmt(v) for v in value) or "-"
    else:
        text = str(value)
    return text


def cells(*values: object) -> tuple[str, ...]:
    """A table row: every value through ``fmt``."""
    return tuple(fmt(v) for v in values)


_IMBALANCE_HEADERS = (
    *("Scope", "Total", "Ratio", "Norm. entropy", "Eff. classes", "Gini"),
    *("Majority", "Minority", "Tail classes"),
)


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def report_tables(report: ReportData) -> tuple[Table, ...]:
    """Every table of the report, in page order; empty sections are left out."""
    tables = [
        Table(
            "quotas",
            "Counts against quota",
            f"Overall progress {pct(report.overall_progress)}; all quotas met: "
            f"{fmt(report.all_met)}.",
            ("Class", "Kind", "Split", "Count", "Target", "Deficit", "Met"),
            tuple(
                cells(r.class_name, r.kind, r.split, r.count, r.target, r.deficit, r.met)
                for r in report.quotas
            ),
        ),
        Table(
            "eta",
            "Expected completion per class",
            "At the labelling rate of the last days (least-squares slope of the counts).",
            ("Class", "State", "Deficit", "Per day", "Days left", "Completion"),
            tuple(
                cells(
                    r.class_name, r.state, r.deficit, r.rate_per_day, r.days_remaining, r.completion
                )
                for r in report.eta
            ),
        ),
        Table(
            "imbalance",
            f"Imbalance ({report.imbalance_kind})",
            "Ratio: largest over smallest non-empty class; entropy 1 is perfectly balanced.",
            _IMBALANCE_HEADERS,
            tuple(_imbalance_cells(r) for r in report.imbalance),
        ),
    ]
    if report.burnup:
        classes = tuple(report.burnup[-1].counts)
        tables.append(
            Table(
                "burnup",
                "Burn-up",
                "Count of each quota class at the end of each day (today: now).",
                ("Time", *classes),
                tuple(cells(p.at, *(p.counts.get(c, 0) for c in classes)) for p in report.burnup),
            )
        )
    if report.batches:
        tables.append(
            Table(
                "batches",
                "Yield of each batch",
                "Yield: share of a batch's items holding a class still short of its quota.",
                ("Batch", "Pushed", "Size", "Labelled", "Hits", "Yield"),
                tuple(
                    cells(b.batch_id, b.pushed_at, b.size, b.labelled, b.hits, b.yield_rate)
                    for b in report.batches
                ),
            )
        )
    if report.strata_items is not None:
        tables.append(
            Table(
                "strata",
                "Hidden imbalance by strata",
                f"{report.strata_items} labelled items; flags for skewed classes and small cells.",
                ("Field", "Class", "Stratum", "Flag", "Count", "Expected", "TV", "Why"),
                tuple(
                    cells(*(r.field, r.class_name, r.stratum, r.flag, r.count, r.expected))
                    + cells(r.total_variation, r.reason)
                    for r in report.strata
                ),
            )
        )
    if report.stop is not None:
        tables.append(
            Table(
                "stop",
                "Stop rules",
                f"Stop now: {fmt(report.stop.should_stop)}. {report.stop.reason}",
                ("Rule", "Class", "Fired", "Why"),
                tuple(cells(r.rule, r.class_name, r.fired, r.reason) for r in report.stop.rules),
            )
        )
    if report.next_batch is not None:
        tables.extend(_next_batch_tables(report))
    if report.held_apart:
        tables.append(
            Table(
                "held_apart",
                "Held apart",
                f"{len(report.held_apart)} tasks left out of the counts, scoring and batches "
                "until they are fixed in Label Studio.",
                ("Task", "Kind", "Since", "Problem", "What to do"),
                tuple(
                    cells(h.task_id, h.kind, h.since, h.problem, h.fix) for h in report.held_apart
                ),
            )
        )
    if report.scoring is not None and report.scoring.warnings:
        tables.append(_scoring_table(report.scoring))
    return tuple(tables)


def _scoring_table(scoring: ScoringRun) -> Table:
    failed = f"; {scoring.failed_chunks} chunk(s) failed for good" if scoring.failed_chunks else ""
    return Table(
        "scoring",
        "Scoring",
        f"What the last scoring run ({fmt(scoring.at)}, model {fmt(scoring.model_version)}"
        f"{failed}) could not do; the daemon's log has the same.",
        ("Warning",),
        tuple(cells(w) for w in scoring.warnings),
    )


def _imbalance_cells(r: ImbalanceRow) -> tuple[str, ...]:
    return cells(
        *(r.scope, r.total, r.imbalance_ratio, r.normalised_entropy, r.effective_classes, r.gini),
        *(r.majority_class, r.minority_class, r.tail_classes),
    )


def _next_batch_tables(report: ReportData) -> list[Table]:
    batch = report.next_batch
    assert batch is not None  # noqa: S101 - the caller checked
    reasons = ", ".join(f"{name} {count}" for name, count in batch.reasons.items())
    notes = (" " + " ".join(batch.notes)) if batch.notes else ""
    return [
        Table(
            "next_targets",
            "What the next batch targets",
            f"{batch.selected} of {batch.requested} items selected; by reason: {reasons}.{notes}",
            ("Class", "Shortfall", "Expected picks"),
            tuple(cells(r.class_name, r.shortfall, r.expected) for r in batch.targets),
        ),
        Table(
            "next_picks",
            "Top picks and why",
            "The highest-ranked items of the next batch.",
            ("Rank", "Item", "Why", "Class", "Probability"),
            tuple(
                cells(p.rank, p.item_id, p.why, p.class_name, p.probability) for p in batch.picks
            ),
        ),
    ]
