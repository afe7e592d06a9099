"""Builds ``ReportData`` from plain inputs: counts, quotas, snapshots, batches, core results.

The daemon feeds it from the store; tests and ``planner report`` from an export. Quota status,
ETA and imbalance are computed here by the core; the stop decision, next batch and strata
report are passed in as the core returned them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from planner.core.daily import last_of_each_day
from planner.core.metrics import ImbalanceReport, table_imbalance
from planner.core.quota_eta import DEFAULT_WINDOW, eta
from planner.core.quotas import ClassStatus, Quota, deficits
from planner.core.select_result import REASONS, Batch
from planner.core.stop_policy import StopDecision
from planner.core.strata import StrataReport
from planner.core.table import UNKNOWN, CountKind, CountTable
from planner.errors import InputError
from planner.health import ScoringRun
from planner.reports.model import (
    BatchRecord,
    BatchYield,
    BurnupPoint,
    EtaRow,
    HeldApartRow,
    ImbalanceRow,
    NextBatch,
    PickRow,
    QuotaRow,
    ReportData,
    StopRow,
    StopStatus,
    StrataRow,
    TargetRow,
)

TOTAL = "total"
MAX_PICKS_SHOWN = 20


def build_report(
    *,
    project: str,
    now: datetime,
    table: CountTable,
    quotas: Sequence[Quota],
    snapshots: Sequence[tuple[datetime, CountTable]] = (),
    batches: Sequence[BatchRecord] = (),
    stop: StopDecision | None = None,
    next_batch: Batch | NextBatch | None = None,
    strata: StrataReport | None = None,
    imbalance_kind: CountKind = "images",
    eta_window: timedelta = DEFAULT_WINDOW,
    held_apart: Sequence[HeldApartRow] = (),
    timezone: str = "UTC",
    scoring: ScoringRun | None = None,
) -> ReportData:
    """The report at ``now`` (aware); ``snapshots`` are earlier count tables, any order. The
    ETA reads every snapshot in ``eta_window``; the burn-up shows the last of each day (in
    ``timezone``), now's table the last of today. ``scoring``: the last scoring run."""
    if now.tzinfo is None:
        raise InputError(f"now ({now}) is a naive datetime; give it a timezone, e.g. UTC")
    status = deficits(quotas, table)
    # a snapshot stamped after now (the daemon's, committed while this report was read; a
    # host whose clock runs ahead) says nothing now's table does not: left out, not an error
    earlier = [(at, snapshot) for at, snapshot in snapshots if at <= now]
    history = sorted([*earlier, (now, table)], key=lambda point: point[0])
    return ReportData(
        project=project,
        generated_at=now,
        classes=table.classes,
        splits=table.splits,
        overall_progress=status.overall_progress,
        all_met=status.all_met,
        quotas=tuple(row for s in status.statuses for row in _quota_rows(s, table)),
        burnup=_burnup(history, status.statuses, ZoneInfo(timezone)),
        batches=tuple(_batch_yield(b) for b in sorted(batches, key=lambda b: b.pushed_at)),
        eta=tuple(_eta_row(s, history, now, eta_window) for s in status.statuses),
        imbalance_kind=imbalance_kind,
        imbalance=_imbalance(table, imbalance_kind),
        strata=() if strata is None else _strata_rows(strata),
        strata_items=None if strata is None else strata.n_items,
        stop=None if stop is None else _stop(stop),
        next_batch=next_batch
        if next_batch is None or isinstance(next_batch, NextBatch)
        else _next(next_batch),
        held_apart=tuple(held_apart),
        scoring=scoring,
    )


def _quota_rows(status: ClassStatus, table: CountTable) -> list[QuotaRow]:
    quota = status.quota
    column = table.classes.index(quota.class_name) if status.in_table else None
    rows = []
    for i, split in enumerate(table.splits):
        count = 0 if column is None else int(table.of(quota.kind)[i, column])
        target = quota.split_targets.get(split)
        deficit = None if target is None else max(0, target - count)
        met = None if deficit is None else deficit == 0
        rows.append(QuotaRow(quota.class_name, quota.kind, split, count, target, deficit, met))
    rows.append(
        QuotaRow(
            quota.class_name,
            quota.kind,
            TOTAL,
            status.count,
            status.target,
            status.deficit,
            status.met,
        )
    )
    return rows


def _burnup(
    history: Sequence[tuple[datetime, CountTable]],
    statuses: Sequence[ClassStatus],
    zone: ZoneInfo,
) -> tuple[BurnupPoint, ...]:
    """A point a day, its last: a snapshot is kept per change, up to one per sync."""
    days = last_of_each_day([at for at, _ in history], zone)
    return tuple(
        BurnupPoint(at=history[i][0], counts=_class_counts(history[i][1], statuses)) for i in days
    )


def _class_counts(table: CountTable, statuses: Sequence[ClassStatus]) -> dict[str, int]:
    """Each quota class's total of its quota kind in ``table`` (0 when the column is absent)."""
    out = {}
    for s in statuses:
        name = s.class_name
        present = name in table.classes
        out[name] = int(table.totals(s.quota.kind)[table.classes.index(name)]) if present else 0
    return out


def _batch_yield(batch: BatchRecord) -> BatchYield:
    labelled = batch.size if batch.labelled is None else batch.labelled
    if not 0 <= batch.hits <= labelled <= batch.size:
        raise InputError(
            f"batch {batch.batch_id}: hits {batch.hits}, labelled {labelled} and size "
            f"{batch.size} must be in that order, from 0 up"
        )
    rate = batch.hits / labelled if labelled else None
    return BatchYield(
        batch.batch_id,
        batch.pushed_at,
        batch.size,
        batch.hits,
        rate,
        dict(batch.class_hits),
        labelled=labelled,
    )


def _eta_row(
    status: ClassStatus,
    history: Sequence[tuple[datetime, CountTable]],
    now: datetime,
    window: timedelta,
) -> EtaRow:
    points = [
        (at, float(_class_counts(table, (status,))[status.class_name])) for at, table in history
    ]
    estimate = eta(points, deficit=status.deficit, now=now, window=window)
    return EtaRow(
        class_name=status.class_name,
        state=estimate.state,
        deficit=estimate.deficit,
        rate_per_day=estimate.rate_per_day,
        days_remaining=estimate.days_remaining,
        completion=estimate.completion,
    )


def _imbalance(table: CountTable, kind: CountKind) -> tuple[ImbalanceRow, ...]:
    measured = table_imbalance(table.without(UNKNOWN), kind)
    scopes = [(TOTAL, measured.overall), *zip(measured.splits, measured.per_split, strict=True)]
    return tuple(_imbalance_row(scope, r) for scope, r in scopes)


def _imbalance_row(scope: str, r: ImbalanceReport) -> ImbalanceRow:
    return ImbalanceRow(
        scope=scope,
        total=r.total,
        imbalance_ratio=r.imbalance_ratio,
        normalised_entropy=r.normalised_entropy,
        effective_classes=r.effective_classes,
        gini=r.gini,
        majority_class=r.majority_class,
        minority_class=r.minority_class,
        tail_classes=r.tail_classes,
    )


def _strata_rows(strata: StrataReport) -> tuple[StrataRow, ...]:
    return tuple(
        StrataRow(
            field=f.field,
            class_name=f.class_name,
            stratum=f.stratum,
            flag=f.kind,
            count=f.count,
            expected=f.expected,
            total_variation=f.total_variation,
            reason=f.reason,
        )
        for f in strata.flags
    )


def _stop(decision: StopDecision) -> StopStatus:
    rows = tuple(StopRow(e.rule, e.class_name, e.fired, e.reason) for e in decision.events)
    return StopStatus(should_stop=decision.should_stop, reason=decision.reason, rules=rows)


def _next(batch: Batch) -> NextBatch:
    return NextBatch(
        requested=batch.requested,
        selected=len(batch.picks),
        reasons={reason: batch.count(reason) for reason in REASONS},
        targets=tuple(
            TargetRow(name, float(batch.shortfall[c]), float(batch.expected[c]))
            for c, name in enumerate(batch.classes)
        ),
        picks=tuple(
            PickRow(p.rank, str(p.id), p.reason_text, p.class_name, p.probability)
            for p in batch.picks[:MAX_PICKS_SHOWN]
        ),
        notes=batch.notes,
    )


def next_from_summary(summary: Mapping[str, Any]) -> NextBatch:
    """The "next batch" section from a stored batch summary (``Batch.as_dict()`` of the core)."""
    classes = summary.get("classes")
    targets = (
        tuple(
            TargetRow(
                str(name), float(entry.get("shortfall", 0.0)), float(entry.get("expected", 0))
            )
            for name, entry in classes.items()
            if isinstance(entry, Mapping)
        )
        if isinstance(classes, Mapping)
        else ()
    )
    picks = [p for p in summary.get("picks", ()) if isinstance(p, Mapping)]
    reasons = summary.get("reasons")
    return NextBatch(
        requested=int(summary.get("requested", len(picks))),
        selected=int(summary.get("selected", len(picks))),
        reasons={str(k): int(v) for k, v in reasons.items()}
        if isinstance(reasons, Mapping)
        else {},
        targets=targets,
        picks=tuple(
            PickRow(
                int(p.get("rank", 0)),
                str(p.get("id", "")),
                str(p.get("why", p.get("reason", ""))),
                str(p.get("class", "")),
                float(p.get("probability", 0.0)),
            )
            for p in picks[:MAX_PICKS_SHOWN]
        ),
        notes=tuple(str(n) for n in summary.get("notes", ())),
    )
