"""The daily report's data: frozen dataclasses, plain numbers; ``report_dict`` is its JSON.

The JSON is the source of truth; the HTML and Markdown renderings show the same tables
(``planner.reports.tables``), so a number can never differ between formats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from planner.core.finite import finite_json
from planner.health import ScoringRun

REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One pushed batch, as the store keeps it: ``size`` items, ``labelled`` of them labelled
    so far (None: all), ``hits`` = labelled items holding a short class."""

    batch_id: str
    pushed_at: datetime
    size: int
    hits: int
    class_hits: Mapping[str, int] = dataclasses.field(default_factory=dict)
    labelled: int | None = None


@dataclass(frozen=True, slots=True)
class QuotaRow:
    """One class in one split (or ``total``): count against target (None: no split target)."""

    class_name: str
    kind: str
    split: str
    count: int
    target: int | None
    deficit: int | None
    met: bool | None


@dataclass(frozen=True, slots=True)
class BurnupPoint:
    at: datetime
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class BatchYield:
    """``yield_rate``: hits per labelled item; None while none is labelled (no yield yet, which
    is not a yield of 0)."""

    batch_id: str
    pushed_at: datetime
    size: int
    hits: int
    yield_rate: float | None
    class_hits: Mapping[str, int]
    labelled: int = 0


@dataclass(frozen=True, slots=True)
class EtaRow:
    class_name: str
    state: str
    deficit: int
    rate_per_day: float | None
    days_remaining: float | None
    completion: datetime | None


@dataclass(frozen=True, slots=True)
class ImbalanceRow:
    scope: str
    total: int
    imbalance_ratio: float | None
    normalised_entropy: float | None
    effective_classes: float | None
    gini: float | None
    majority_class: str | None
    minority_class: str | None
    tail_classes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StrataRow:
    field: str
    class_name: str
    stratum: str
    flag: str
    count: int
    expected: float
    total_variation: float
    reason: str


@dataclass(frozen=True, slots=True)
class StopRow:
    rule: str
    class_name: str | None
    fired: bool
    reason: str


@dataclass(frozen=True, slots=True)
class StopStatus:
    should_stop: bool
    reason: str
    rules: tuple[StopRow, ...]


@dataclass(frozen=True, slots=True)
class TargetRow:
    """What the next batch aims at for one class: the shortfall and the expected picks."""

    class_name: str
    shortfall: float
    expected: float


@dataclass(frozen=True, slots=True)
class PickRow:
    rank: int
    item_id: str
    why: str
    class_name: str
    probability: float


@dataclass(frozen=True, slots=True)
class NextBatch:
    requested: int
    selected: int
    reasons: Mapping[str, int]
    targets: tuple[TargetRow, ...]
    picks: tuple[PickRow, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HeldApartRow:
    """A task held apart from the counts for bad data or a bad image, and what to do."""

    task_id: int
    kind: str
    problem: str
    fix: str
    since: datetime


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the daily report shows."""

    project: str
    generated_at: datetime
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    overall_progress: float
    all_met: bool
    quotas: tuple[QuotaRow, ...]
    burnup: tuple[BurnupPoint, ...]
    batches: tuple[BatchYield, ...]
    eta: tuple[EtaRow, ...]
    imbalance_kind: str
    imbalance: tuple[ImbalanceRow, ...]
    strata: tuple[StrataRow, ...]
    strata_items: int | None
    stop: StopStatus | None
    next_batch: NextBatch | None
    schema_version: int = REPORT_SCHEMA_VERSION
    held_apart: tuple[HeldApartRow, ...] = ()
    scoring: ScoringRun | None = None


def report_dict(report: ReportData) -> dict[str, Any]:
    """The report as strict JSON data: datetimes as ISO 8601, NaN and inf as None."""
    return finite_json(dataclasses.asdict(report), _iso)  # type: ignore[no-any-return]


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
