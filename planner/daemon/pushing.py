"""The cycle's middle: what to score, and the batch chosen from the scores and pushed.

The batch row is committed as ``planned`` before the push, and marked pushed after it: a
crash, or Label Studio down, in between leaves a batch ``planner.daemon.upkeep`` pushes again
on the next job. Tasks deleted in Label Studio since the batch was planned are left out of the
push (their items expire; a batch with none left expires unpushed), and a push Label Studio
refuses for any other reason than being down or rejecting the token expires the batch: a batch
that can never be pushed must not hold up the jobs after it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlmodel import Session, col, select

from planner.core.plan import PlanOptions, plan_batch
from planner.core.quotas import Quota
from planner.daemon.leader import LeaderLease
from planner.errors import AuthError, PlannerError, TransientError
from planner.ports import AnnotationBackend, PushBatch
from planner.store import Store
from planner.store.batches import PlannedItem, create_batch, expire, finish_push
from planner.store.models import Batch, Project, Task
from planner.store.scores import load_scores
from planner.store.stop_set import ensure_stop_set, live_stop_set, stop_set
from planner.store.tasks import count_table, mark_gone, task_images, unlabelled_ids

log = logging.getLogger("planner.daemon")
LABELLED_TO_SCORE = 20_000
"""At most this many labelled tasks (the latest labelled) are scored with the pool each
model version: their embeddings are what the labelled neighbours' vote and discovery's
novelty are measured against (:func:`planner.core.plan.plan_batch`)."""
RETRIED = (TransientError, AuthError)
"""Push failures that leave the batch planned for the next job to push again (Label Studio
down or slow, the token rejected until it is re-read); any other failure expires it."""


@dataclass(frozen=True, slots=True)
class Pushed:
    """A planned batch after its push."""

    tag: str
    served: bool
    """False: none of its tasks was left in Label Studio, and it expired unpushed."""
    missing: tuple[int, ...] = ()
    """Its tasks Label Studio no longer had: their items expired."""


def push_planned(
    store: Store,
    backend: AnnotationBackend,
    ls_project_id: int,
    batch_id: int,
    batch: PushBatch,
    *,
    at: datetime,
) -> Pushed:
    """Push the planned batch ``batch_id`` and record the outcome (``finish_push``): the
    tasks Label Studio no longer has are marked deleted at once, so no later batch picks them.

    A ``RETRIED`` failure is raised with the batch left planned; any other is raised after
    the batch expired.
    """
    try:
        result = backend.push_batch(ls_project_id, batch)
    except RETRIED:
        raise
    except PlannerError:
        with store.session() as session:
            row = session.get(Batch, batch_id)
            if row is not None and row.state == "planned":
                expire(session, row, at=at)
        raise
    with store.session() as session:
        row = session.get(Batch, batch_id)
        served = row is None or row.state != "planned"  # finished by another job meanwhile
        if row is not None and not served:
            served = finish_push(session, row, result.view_id, result.missing, at=at)
            mark_gone(session, row.project_id, result.missing)
    if result.missing:
        log.warning(
            "batch %s of project %s: %d task(s) no longer in Label Studio (deleted), %s: %s",
            batch.tag,
            ls_project_id,
            len(result.missing),
            "their items expired" if served else "nothing left to push; the batch expired",
            list(result.missing[:20]),
        )
    return Pushed(batch.tag, served, result.missing)


def stop_set_items(
    session: Session, project_id: int, *, size: int, seed: int, at: datetime
) -> list[tuple[int, str]]:
    """The fixed stop set (drawn, seeded, from the unlabelled pool the first time it is asked
    for) as ``(task id, image)``; deleted and quarantined tasks are left out."""
    if not stop_set(session, project_id):  # drawn once; later calls never read the whole pool
        pool = unlabelled_ids(session, project_id)
        rng = np.random.default_rng(seed)
        ensure_stop_set(session, project_id, pool, size=size, rng=rng, at=at)
    return live_stop_set(session, project_id)  # the report reads the same tasks


def items_to_score(
    session: Session, project_id: int, *, stop_set_size: int, seed: int, at: datetime
) -> list[tuple[int, str]]:
    """The unlabelled pool, the stop set (every model version scores the stop set, so
    successive models can be compared on it) and up to ``LABELLED_TO_SCORE`` labelled tasks
    (the latest; the planner measures neighbours and novelty against them); empty when no
    task is left to label."""
    pool = dict(task_images(session, project_id, "unlabelled"))
    if not pool:
        return []
    pool |= dict(stop_set_items(session, project_id, size=stop_set_size, seed=seed, at=at))
    latest = session.exec(
        select(Task.ls_task_id, Task.image)
        .where(Task.project_id == project_id, Task.state == "labelled")
        .order_by(col(Task.labelled_at).desc(), col(Task.ls_task_id).desc())
        .limit(LABELLED_TO_SCORE)
    ).all()
    pool |= {int(i): image for i, image in latest}
    return sorted(pool.items())


@dataclass(frozen=True, slots=True)
class Pusher:
    """Chooses the next batch from one model version's scores and pushes it, as the leader."""

    store: Store
    backend: AnnotationBackend
    lease: LeaderLease
    ls_project_id: int
    quotas: Sequence[Quota]
    plan_options: PlanOptions
    splits: tuple[str, ...]
    seed: int

    def push(self, project_id: int, version: str, *, at: datetime) -> Pushed | None:
        """The batch pushed; None when no scored unlabelled task is left or the lease was lost.
        A failed push raises (``push_planned``)."""
        with self.store.session() as session:
            planned = self._plan(session, project_id, version)
            if planned is None:
                return None
            items, summary = planned
            # scoring took long: the lease may have run out; it is ours again only if nobody
            # took it meanwhile (then nobody else can have pushed), else leave the push
            if not self._still_leading():
                session.rollback()
                return None
            stored = create_batch(session, project_id, items, summary, at=at, model_version=version)
            batch_id, tag = int(stored.id or 0), stored.tag
        ranked = PushBatch(tag, [(i.ls_task_id, i.rank) for i in items])
        return push_planned(self.store, self.backend, self.ls_project_id, batch_id, ranked, at=at)

    def _still_leading(self) -> bool:
        """Whether the lease is ours again now; a lease store that cannot answer (Redis
        down) is no leadership, and no fault of Label Studio's: the push waits."""
        try:
            if self.lease.renew() or self.lease.acquire():
                return True
        except TransientError as exc:
            log.warning("cannot check the leader lease of project %s: %s", self.ls_project_id, exc)
            return False
        log.warning("lost leadership of project %s before pushing", self.ls_project_id)
        return False

    def _plan(
        self, session: Session, project_id: int, version: str
    ) -> tuple[list[PlannedItem], dict[str, object]] | None:
        project = session.get(Project, project_id)
        classes = tuple(project.classes) if project else ()
        scores = load_scores(session, project_id=project_id, model_version=version)
        open_ids = set(unlabelled_ids(session, project_id))
        keep = np.array([int(i) in open_ids for i in scores.task_ids], dtype=bool)
        if not keep.any():
            return None
        labelled = dict(
            session.exec(
                select(Task.ls_task_id, Task.labels).where(
                    Task.project_id == project_id, Task.state == "labelled"
                )
            ).all()
        )
        # Scored tasks that are not open (labelled ones, tasks in flight) are never picked;
        # discovery measures novelty against them, and the labelled ones vote.
        plan = plan_batch(
            count_table(session, project_id, classes, self.splits),
            self.quotas,
            scores.task_ids,
            scores.probs,
            options=self.plan_options,
            rng=np.random.default_rng(self.seed),
            classes=classes,
            embeddings=scores.embeddings,
            bald_scores=scores.bald,
            exclude=scores.task_ids[~keep],
            labels=labelled,  # plan_batch leaves out the ones it has no scores for
        )
        picks = plan.batch.picks
        items = [PlannedItem(int(p.id), p.rank, p.reason, p.class_name, p.gain) for p in picks]
        return (items, plan.batch.as_dict()) if items else None
