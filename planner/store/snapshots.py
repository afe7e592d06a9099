"""What the reports and the stop rules read back: count snapshots, batch yields, annotations.

A count snapshot is the count table as a sync left it; one is kept whenever the counts or the
annotation total changed since the last one, and at least once a day, so the burn-up chart and
the labelling-rate ETA have a point per change without a row every five minutes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

import numpy as np
from sqlmodel import Session, col, select

from planner.core.daily import last_of_each_day
from planner.core.table import CountTable
from planner.store.events import count_snapshots, record_counts
from planner.store.models import Batch, BatchItem, CountSnapshot, Task

SNAPSHOT_AT_LEAST_EVERY = timedelta(days=1)
KINDS = ("images", "instances", "pixels")


def table_from_dict(
    data: Mapping[str, object], classes: tuple[str, ...], splits: tuple[str, ...]
) -> CountTable:
    """The ``CountTable`` of ``CountTable.as_dict()`` output, on ``classes`` and ``splits``
    (a class or split the snapshot lacks counts 0: the project grew since)."""
    arrays = {}
    for kind in KINDS:
        per_split = data.get(kind)
        rows = per_split if isinstance(per_split, Mapping) else {}
        arrays[kind] = np.array(
            [[int(_cell(rows, split, name)) for name in classes] for split in splits],
            dtype=np.int64,
        ).reshape(len(splits), len(classes))
    return CountTable(classes=classes, splits=splits, **arrays)


def _cell(rows: Mapping[str, object], split: str, name: str) -> int:
    row = rows.get(split)
    value = row.get(name, 0) if isinstance(row, Mapping) else 0
    return int(value) if isinstance(value, int | float) else 0


def annotations_used(session: Session, project_id: int) -> int:
    """Annotations (skips included: they cost an annotator's time) on the project's tasks."""
    rows = session.exec(
        select(Task.annotation_ids).where(Task.project_id == project_id, Task.state != "deleted")
    ).all()
    return sum(len(ids or ()) for ids in rows)


def snapshot_counts(
    session: Session,
    project_id: int,
    table: CountTable,
    *,
    annotations: int,
    at: datetime,
    every: timedelta = SNAPSHOT_AT_LEAST_EVERY,
) -> CountSnapshot | None:
    """Record ``table`` when it or the annotation total changed, or the last is ``every`` old."""
    counts = table.as_dict()
    last = session.exec(
        select(CountSnapshot)
        .where(CountSnapshot.project_id == project_id)
        .order_by(col(CountSnapshot.taken_at).desc(), col(CountSnapshot.id).desc())
    ).first()
    if (
        last is not None
        and last.counts == counts
        and last.annotations == annotations
        and at - last.taken_at < every
    ):
        return None
    return record_counts(
        session, project_id=project_id, counts=counts, annotations=annotations, at=at
    )


def count_history(
    session: Session,
    project_id: int,
    classes: tuple[str, ...],
    splits: tuple[str, ...],
    *,
    since: datetime | None = None,
    every_since: datetime | None = None,
    zone: tzinfo = UTC,
) -> list[tuple[datetime, CountTable]]:
    """Snapshots taken from ``since`` on as ``(taken_at, table)``, oldest first: every one from
    ``every_since`` on (a rate's window), only the last of each day (in ``zone``) before it."""
    if every_since is None:
        return _tables(count_snapshots(session, project_id, since=since), classes, splits)
    # the times alone first: months of five-minute snapshots are read as (id, time), and only
    # a day's last one is read whole (counts JSON) and turned into a table
    query = select(CountSnapshot.id, CountSnapshot.taken_at).where(
        CountSnapshot.project_id == project_id, col(CountSnapshot.taken_at) < every_since
    )
    if since is not None:
        query = query.where(col(CountSnapshot.taken_at) >= since)
    order = (col(CountSnapshot.taken_at), col(CountSnapshot.id))
    stamps = session.exec(query.order_by(*order)).all()
    daily = [stamps[i][0] for i in last_of_each_day([at for _, at in stamps], zone)]
    closing = session.exec(
        select(CountSnapshot).where(col(CountSnapshot.id).in_(daily)).order_by(*order)
    ).all()
    recent = count_snapshots(session, project_id, since=every_since)
    return _tables([*closing, *recent], classes, splits)


def _tables(
    snapshots: Sequence[CountSnapshot], classes: tuple[str, ...], splits: tuple[str, ...]
) -> list[tuple[datetime, CountTable]]:
    return [(s.taken_at, table_from_dict(s.counts, classes, splits)) for s in snapshots]


@dataclass(frozen=True, slots=True)
class BatchYield:
    """One pushed batch: how many of its items got labelled and how many held a short class.

    ``short``: the classes still short of their quota when the batch was planned (from its
    summary); ``hits``: labelled items holding one of them; ``class_hits``: per class.
    """

    tag: str
    number: int
    state: str
    pushed_at: datetime
    size: int
    labelled: int
    hits: int
    short: tuple[str, ...]
    class_hits: Mapping[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in ("completed", "superseded")


def short_classes(summary: Mapping[str, object]) -> tuple[str, ...]:
    """Classes a stored batch summary (``Batch.as_dict()``) was asked to cover."""
    classes = summary.get("classes")
    if not isinstance(classes, Mapping):
        return ()
    return tuple(
        name
        for name, entry in classes.items()
        if isinstance(entry, Mapping) and float(entry.get("shortfall", 0) or 0) > 0
    )


def batch_yields(session: Session, project_id: int) -> list[BatchYield]:
    """Every pushed batch of the project with its yield, oldest first."""
    query = (
        select(Batch)
        .where(Batch.project_id == project_id, col(Batch.pushed_at).is_not(None))
        .order_by(col(Batch.number))
    )
    batches = session.exec(query).all()
    # every batch's items in one query, not one a batch
    items_by_batch: dict[int, list[BatchItem]] = {}
    all_items = session.exec(
        select(BatchItem)
        .join(Batch, col(Batch.id) == col(BatchItem.batch_id))
        .where(Batch.project_id == project_id, col(Batch.pushed_at).is_not(None))
    ).all()
    for item in all_items:
        items_by_batch.setdefault(item.batch_id, []).append(item)
    found = []
    for batch in batches:
        items = items_by_batch.get(int(batch.id or 0), [])
        done = [i for i in items if i.state == "completed"]
        short = short_classes(batch.summary)
        class_hits = {name: sum(name in i.found for i in done) for name in short}
        hits = sum(any(name in i.found for name in short) for i in done)
        assert batch.pushed_at is not None  # noqa: S101 - the query asked for it
        found.append(
            BatchYield(
                tag=batch.tag,
                number=batch.number,
                state=batch.state,
                pushed_at=batch.pushed_at,
                size=len(items),
                labelled=len(done),
                hits=hits,
                short=short,
                class_hits=class_hits,
            )
        )
    return found


def yield_series(
    yields: Sequence[BatchYield], classes: Sequence[str]
) -> tuple[list[int], list[int], dict[str, list[int]]]:
    """Sizes, hits and per-class hits of the finished batches with a labelled item, oldest
    first: what ``minority_yield_low`` reads (a batch still being labelled is left out)."""
    done = [y for y in yields if y.finished and y.labelled > 0]
    per_class = {name: [y.class_hits.get(name, 0) for y in done] for name in classes}
    return [y.labelled for y in done], [y.hits for y in done], per_class
