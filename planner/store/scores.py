"""Model scores per task and model version, written idempotently by the workers."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    LargeBinary,
    String,
    and_,
    any_,
    bindparam,
    delete,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlmodel import Session, col, func, select

from planner.errors import InputError
from planner.store.batches import OPEN
from planner.store.db import dialect_insert, is_postgres
from planner.store.models import Batch, ModelVersionRecord, ScoreRecord, Task, now

_CHUNK = 2000
_SCORED = ["n_classes", "probs", "dim", "embedding", "unscorable", "bald", "image_digest"]
_SCORED.append("created_at")  # what replacing a row of another image overwrites
_ROW_TYPES = {
    "ls_task_id": BigInteger,
    "n_classes": Integer,
    "probs": LargeBinary,
    "dim": Integer,
    "embedding": LargeBinary,
    "unscorable": String,
    "bald": Float,
    "image_digest": String,
}
"""A score row's own columns, the types of the arrays PostgreSQL is sent them in."""


@dataclass(frozen=True, slots=True)
class ScoreSet:
    """Scores of one model version: rows in ``task_ids`` order (unscorable tasks left out)."""

    task_ids: npt.NDArray[np.int64]
    probs: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32] | None
    unscorable: dict[int, str] = field(default_factory=dict)
    bald: npt.NDArray[np.float64] | None = None
    """``(n,)`` BALD of the MC-dropout passes; None unless every row has one."""


def write_scores(
    session: Session,
    *,
    project_id: int,
    model_version: str,
    task_ids: Sequence[int],
    probs: npt.ArrayLike | None,
    embeddings: npt.ArrayLike | None = None,
    unscorable: Mapping[int, str] | None = None,
    bald: npt.ArrayLike | None = None,
    images: Mapping[int, str] | None = None,
) -> int:
    """Store ``probs: (n, c)`` (and ``embeddings: (n, d)``, ``bald: (n,)``) for ``task_ids``;
    rows already stored for this version are left as they are, so a redelivered chunk writes
    nothing. Returns the rows written.

    ``images``: the image reference each task was scored from. A row whose task shows another
    image by now (a sync saw it change while the chunk was scored) is not written: it
    describes the old image, and the task is scored again. A stored row of another image is
    replaced."""
    rows: list[dict[str, object]] = []
    ids = [int(i) for i in task_ids]
    if ids:
        if probs is None:
            raise InputError(f"write_scores got {len(ids)} task ids but no probs; pass (n, c)")
        p = np.ascontiguousarray(np.asarray(probs, dtype=np.float32))
        if p.ndim != 2 or p.shape[0] != len(ids):
            raise InputError(f"probs must be (n, c) with n = {len(ids)} rows, got {p.shape}")
        e = None if embeddings is None else np.ascontiguousarray(np.asarray(embeddings, np.float32))
        if e is not None and (e.ndim != 2 or e.shape[0] != len(ids)):
            raise InputError(f"embeddings must be (n, d) with n = {len(ids)}, got {e.shape}")
        b = None if bald is None else np.asarray(bald, dtype=np.float64)
        if b is not None and (b.shape != (len(ids),) or not np.isfinite(b).all()):
            raise InputError(f"bald must be ({len(ids)},) finite values, got shape {b.shape}")
        for row, task_id in enumerate(ids):
            rows.append(
                {
                    "ls_task_id": task_id,
                    "n_classes": p.shape[1],
                    "probs": p[row].tobytes(),
                    "dim": 0 if e is None else e.shape[1],
                    "embedding": None if e is None else e[row].tobytes(),
                    "unscorable": None,
                    "bald": None if b is None else float(b[row]),
                }
            )
    for task_id, reason in (unscorable or {}).items():
        rows.append(
            {
                "ls_task_id": int(task_id),
                "n_classes": 0,
                "probs": None,
                "dim": 0,
                "embedding": None,
                "unscorable": reason or "unscorable",
                "bald": None,
            }
        )
    rows = _current(session, project_id, rows, images)
    if not rows:
        return 0
    # One order for every writer: two workers inserting overlapping chunks then wait on
    # each other's rows in the same sequence instead of deadlocking (PostgreSQL).
    rows.sort(key=lambda values: int(values["ls_task_id"]))  # type: ignore[call-overload]
    stamp = now()
    keys = ["project_id", "ls_task_id", "model_version"]
    if is_postgres(session):
        # one statement of eight arrays: its text is the same for any number of rows, so
        # psycopg parses it once, where it parsed every multi-row INSERT afresh
        # (docs/benchmarks.md, *Scoring a pool by chunks*)
        shared = {"project_id": project_id, "model_version": model_version, "created_at": stamp}
        table = ScoreRecord.__table__.c  # type: ignore[attr-defined]
        unnested = (
            func.unnest(
                *(bindparam(None, [v[n] for v in rows], ARRAY(t)) for n, t in _ROW_TYPES.items())
            )
            .table_valued(*_ROW_TYPES)
            .render_derived(name="scored", with_types=False)
        )
        given = sa_select(
            *(bindparam(None, v, table[n].type) for n, v in shared.items()),
            *(unnested.c[n] for n in _ROW_TYPES),
        ).order_by(unnested.c.ls_task_id)
        insert_rows = pg_insert(ScoreRecord).from_select([*shared, *_ROW_TYPES], given)
        statement = _upserting(insert_rows, keys)
        return len(session.connection().execute(statement).all())
    for values in rows:
        values.update(project_id=project_id, model_version=model_version, created_at=stamp)
    statement = _upserting(dialect_insert(session)(ScoreRecord), keys)
    # executemany with RETURNING: SQLAlchemy batches the rows into multi-row INSERTs itself.
    return len(session.connection().execute(statement, rows).all())


def _one_of(session: Session, column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    """``column`` among ``ids``: on PostgreSQL one array, a statement whose text is the same
    however many (psycopg parses it once); elsewhere an IN list."""
    if is_postgres(session):
        among: ColumnElement[bool] = column == any_(
            bindparam(None, [int(i) for i in ids], ARRAY(BigInteger))
        )
        return among
    return column.in_(ids)  # type: ignore[no-any-return]


def _upserting(insert_rows: Any, keys: list[str]) -> Any:
    """``insert_rows`` writing a row only where none is stored for its keys, or one of
    another image, counting the rows written."""
    new, stored = insert_rows.excluded, col(ScoreRecord.image_digest)
    return insert_rows.on_conflict_do_update(
        index_elements=keys,
        set_={name: new[name] for name in _SCORED},
        # only a row of another image is replaced: a redelivered chunk changes nothing
        where=and_(
            stored.is_not(None),
            new.image_digest.is_not(None),
            stored != new.image_digest,
        ),
    ).returning(  # RETURNING counts what was written (rowcount is unreliable when batched)
        col(ScoreRecord.ls_task_id)
    )


def unscored(
    session: Session, *, project_id: int, model_version: str, task_ids: Sequence[int]
) -> list[int]:
    """The ids of ``task_ids`` with no row for ``model_version`` of the image the task shows
    now, in input order."""
    wanted = [int(i) for i in task_ids]
    done: set[int] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        query = sa_select(col(ScoreRecord.ls_task_id), col(ScoreRecord.image_digest)).where(
            col(ScoreRecord.project_id) == project_id,
            col(ScoreRecord.model_version) == model_version,
            _one_of(session, col(ScoreRecord.ls_task_id), chunk),
        )
        scored = {int(i): digest for i, digest in session.execute(query).all()}
        shown = _images(session, project_id, list(scored))
        done.update(
            i
            for i, digest in scored.items()
            if digest is None or i not in shown or digest == image_digest(shown[i])
        )
    return [i for i in wanted if i not in done]


def image_digest(reference: str) -> str:
    """What a score row keeps of the image reference it was scored from (a reference can be
    a long URL, or a whole image as a data: URL)."""
    return hashlib.blake2b(reference.encode(), digest_size=16).hexdigest()


def _images(
    session: Session, project_id: int, task_ids: Sequence[int], *, lock: bool = False
) -> dict[int, str]:
    """The image reference each of ``task_ids`` shows now (tasks not stored left out).
    ``lock``: share-locked until the transaction ends (PostgreSQL), so a sync changing one
    waits for the scores written meanwhile, and then forgets them."""
    query = (
        select(Task.ls_task_id, Task.image)
        .where(Task.project_id == project_id, _one_of(session, col(Task.ls_task_id), task_ids))
        .order_by(col(Task.ls_task_id))  # locked in one order by every writer
    )
    if lock:
        query = query.with_for_update(read=True)
    return {int(i): str(image) for i, image in session.exec(query).all()}


def _current(
    session: Session,
    project_id: int,
    rows: list[dict[str, object]],
    images: Mapping[int, str] | None,
) -> list[dict[str, object]]:
    """``rows`` with the digest of the image each was scored from; those whose task shows
    another image now are left out."""
    if images is None:
        for values in rows:
            values["image_digest"] = None
        return rows
    ids = sorted({int(values["ls_task_id"]) for values in rows})  # type: ignore[call-overload]
    shown: dict[int, str] = {}
    for start in range(0, len(ids), _CHUNK):
        shown.update(_images(session, project_id, ids[start : start + _CHUNK], lock=True))
    kept = []
    for values in rows:
        task_id = int(values["ls_task_id"])  # type: ignore[call-overload]
        reference = images.get(task_id)
        if reference is not None and task_id in shown and shown[task_id] != reference:
            continue  # scored from an image the task no longer shows
        values["image_digest"] = None if reference is None else image_digest(reference)
        kept.append(values)
    return kept


def forget_scores(session: Session, *, project_id: int, task_ids: Collection[int]) -> int:
    """Delete every score of ``task_ids`` (all model versions): they describe images the
    tasks no longer show, and ``unscored`` then hands each to the next scoring. The rows
    deleted."""
    wanted = sorted({int(i) for i in task_ids})
    deleted = 0
    for start in range(0, len(wanted), _CHUNK):
        result = session.execute(
            delete(ScoreRecord).where(
                col(ScoreRecord.project_id) == project_id,
                _one_of(session, col(ScoreRecord.ls_task_id), wanted[start : start + _CHUNK]),
            )
        )
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


def load_scores(
    session: Session,
    *,
    project_id: int,
    model_version: str,
    task_ids: Sequence[int] | None = None,
) -> ScoreSet:
    """Scores of ``model_version`` (all, or those of ``task_ids``) as arrays, by task id."""
    columns = (
        col(ScoreRecord.ls_task_id),
        col(ScoreRecord.n_classes),
        col(ScoreRecord.dim),
        col(ScoreRecord.probs),
        col(ScoreRecord.embedding),
        col(ScoreRecord.unscorable),
        col(ScoreRecord.bald),
    )
    base = sa_select(*columns).where(
        col(ScoreRecord.project_id) == project_id, col(ScoreRecord.model_version) == model_version
    )
    # Plain column tuples, not ORM objects: 100k rows load in well under a second.
    rows: list[Any] = []
    if task_ids is None:
        rows.extend(session.execute(base).all())
    else:
        wanted = sorted({int(i) for i in task_ids})
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            among = _one_of(session, col(ScoreRecord.ls_task_id), chunk)
            rows.extend(session.execute(base.where(among)).all())
    rows.sort(key=lambda r: r[0])
    bad = {int(r[0]): str(r[5]) for r in rows if r[5] is not None}
    good = [r for r in rows if r[5] is None and r[3] is not None]
    shapes = {(int(r[1]), int(r[2])) for r in good}
    if len(shapes) > 1:
        raise InputError(
            f"scores of model {model_version!r} mix shapes (classes, dim) {sorted(shapes)}; "
            "score the project again under a new model version"
        )
    c, d = shapes.pop() if shapes else (0, 0)
    ids = np.fromiter((r[0] for r in good), dtype=np.int64, count=len(good))
    probs = np.frombuffer(b"".join(r[3] for r in good), dtype=np.float32).reshape(len(good), c)
    emb = None
    if d and good and all(r[4] is not None for r in good):
        joined = b"".join(r[4] for r in good)
        emb = np.frombuffer(joined, dtype=np.float32).reshape(len(good), d).copy()
    bald = None
    if good and all(r[6] is not None for r in good):
        bald = np.fromiter((r[6] for r in good), dtype=np.float64, count=len(good))
    return ScoreSet(ids, probs.copy(), emb, bad, bald)


def prune_scores(
    session: Session, *, project_id: int, keep: int, protect: Collection[str] = ()
) -> dict[str, int]:
    """Delete the score rows of every model version but the newest ``keep`` (by their newest
    score row), the newest recorded version, the versions open batches were planned from and
    those in ``protect``; the rows deleted per version.

    A new model version scores the whole pool again, so without this the store grows by a
    pool's worth of probabilities and embeddings per model. A version with scores but no
    record (a worker still scoring a model the daemon has not recorded, or a scoring that
    failed before it was recorded) ranks by when it last wrote: one still scoring is the
    newest and stays, an abandoned one falls behind the versions scored since and goes."""
    if keep < 1:
        raise InputError(f"prune_scores keeps at least one model version, got keep={keep}")
    last_written = session.execute(
        sa_select(col(ScoreRecord.model_version), func.max(col(ScoreRecord.created_at)))
        .where(col(ScoreRecord.project_id) == project_id)
        .group_by(col(ScoreRecord.model_version))
    ).all()
    newest_first = [
        str(version)
        for version, _ in sorted(last_written, key=lambda r: (r[1], r[0]), reverse=True)
    ]
    kept = set(newest_first[:keep]) | set(protect) | _in_use(session, project_id)
    deleted: dict[str, int] = {}
    for version in newest_first:
        if version in kept:
            continue
        result = session.execute(
            delete(ScoreRecord).where(
                col(ScoreRecord.project_id) == project_id,
                col(ScoreRecord.model_version) == version,
            )
        )
        deleted[version] = int(getattr(result, "rowcount", 0) or 0)
    return deleted


def _in_use(session: Session, project_id: int) -> set[str]:
    """The newest recorded model version (the daemon's current model) and those the open
    batches were planned from."""
    newest = session.exec(
        select(ModelVersionRecord.version)
        .where(ModelVersionRecord.project_id == project_id)
        .order_by(col(ModelVersionRecord.created_at).desc(), col(ModelVersionRecord.id).desc())
        .limit(1)
    ).all()
    planned = session.exec(
        select(Batch.model_version).where(
            Batch.project_id == project_id,
            col(Batch.state).in_(OPEN),
            col(Batch.model_version).is_not(None),
        )
    ).all()
    return {str(v) for v in (*newest, *planned) if v is not None}
