"""``planner cycle --once``: one daemon cycle (sync → score → select → push) in the foreground.

It runs through the daemon's own code (``build_daemon`` and the same lease as ``planner run``),
so a running daemon keeps the lease and this cycle then pushes nothing. The lease is renewed in
the background while the cycle scores, as the daemon's heartbeat does. Unless forced, no new
batch replaces one annotators are still working through: like the daemon, the next cycle
waits until ``schedule.cycle_when_done`` of the active batch is labelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, select

from planner.connect import connect, open_settings_store
from planner.daemon.run import build_daemon, keep_lease, make_lease
from planner.daemon.service import CycleOutcome, ProjectDaemon
from planner.errors import ConfigError
from planner.settings import Settings
from planner.store import Store
from planner.store.batches import active_batch, completion_ratio, items_of
from planner.store.models import Batch, Project


@dataclass(frozen=True, slots=True)
class BatchView:
    """A batch as ``planner cycle`` shows it: its size, progress and the classes it aims at."""

    tag: str
    state: str
    size: int
    done: float
    reasons: Mapping[str, int]
    targets: tuple[tuple[str, float, float], ...]
    """``(class, shortfall, expected picks)`` of the classes the batch was chosen for."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "state": self.state,
            "size": self.size,
            "done": self.done,
            "reasons": dict(self.reasons),
            "targets": [
                {"class": name, "shortfall": short, "expected": expected}
                for name, short, expected in self.targets
            ],
        }


@dataclass(frozen=True, slots=True)
class OneCycle:
    outcome: CycleOutcome
    batch: BatchView | None
    """The batch pushed, or the active one a cycle waited for; None when neither."""

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.outcome.as_dict(),
            "batch": None if self.batch is None else self.batch.as_dict(),
        }


def run_one_cycle(settings: Settings, *, force: bool = False) -> OneCycle:
    """One cycle of the project of ``settings``; ``force`` pushes even while a batch is open."""
    project_id = settings.label_studio.project_id
    if project_id is None:
        raise ConfigError(
            "label_studio.project_id is not set; set it in the config or "
            "PLANNER_LABEL_STUDIO__PROJECT_ID"
        )
    store = open_settings_store(settings)
    try:
        with connect(settings) as backend:
            backend.check(project_id)
            lease = make_lease(settings, store, f"project-{project_id}")
            daemon = build_daemon(settings, backend=backend, store=store, lease=lease)
            with keep_lease(lease):
                return _cycle(daemon, settings.schedule.cycle_when_done, force=force)
    finally:
        store.dispose()


def _cycle(daemon: ProjectDaemon, threshold: float, *, force: bool) -> OneCycle:
    if not force and (report := daemon.sync()) is not None:
        waiting = _open_batch(daemon.store, daemon.ls_project_id)
        if waiting is not None and waiting.done < threshold:
            why = (
                f"batch {waiting.tag} is {waiting.done:.0%} labelled; the next cycle starts at "
                f"{threshold:.0%} (schedule.cycle_when_done); --force pushes a new batch now"
            )
            return OneCycle(
                CycleOutcome(None, why, sync=report, stop=daemon.last_decision), waiting
            )
    outcome = daemon.cycle()
    batch = None if outcome.pushed is None else _batch(daemon.store, outcome.pushed)
    return OneCycle(outcome, batch)


def _open_batch(store: Store, ls_project_id: int) -> BatchView | None:
    with store.session() as session:
        query = select(Project).where(Project.ls_project_id == ls_project_id)
        project = session.exec(query).first()
        batch = None if project is None else active_batch(session, int(project.id or 0))
        return None if batch is None else _view(session, batch)


def _batch(store: Store, tag: str) -> BatchView | None:
    with store.session() as session:
        batch = session.exec(select(Batch).where(Batch.tag == tag)).first()
        return None if batch is None else _view(session, batch)


def _view(session: Session, batch: Batch) -> BatchView:
    # imported here: the reports package renders charts (matplotlib) when imported
    from planner.reports.build import next_from_summary  # noqa: PLC0415

    summary = next_from_summary(batch.summary)
    batch_id = int(batch.id or 0)
    return BatchView(
        tag=batch.tag,
        state=batch.state,
        size=len(items_of(session, batch_id)),
        done=completion_ratio(session, batch_id),
        reasons={k: v for k, v in summary.reasons.items() if v},
        targets=tuple(
            (t.class_name, t.shortfall, t.expected)
            for t in sorted(summary.targets, key=lambda t: -t.expected)
            if t.shortfall > 0 or t.expected >= 0.5
        ),
    )
