"""The daemon's jobs for one project: sync, cycle (score → select → push), report, housekeeping.

Plain code over ports (STYLE 7): the annotation backend, the store, a scorer and a lease are
passed in, so tests drive it with the in-memory Label Studio. Only the leader acts: every job
first makes sure this daemon holds the lease, then finishes a half-pushed batch, and only then
does its own work. After every sync the stop rules are evaluated; the first time they say stop,
the stop is recorded in the store (so a restart neither records it again nor pushes again) and
the training artifacts are emitted. Every job records its failure and the daemon goes on.

A failed Label Studio call moves ``health`` to the fault it shows (``planner.health``): the
daemon then leaves Label Studio alone until the backed-off next try (``run.py`` asks for it),
re-reads the token on a 401, and is ok again after the next successful sync. Nothing is lost
meanwhile: a sync cut short commits nothing and its watermark stays; a push cut short is
finished by the next job (``finish_half_pushed``). A push Label Studio refuses for good (a bad
request, not an outage) expires its batch and backs nothing off; tasks deleted before the push
only drop out of it (``planner.daemon.pushing``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session, select

from planner.core.plan import PlanOptions
from planner.core.quotas import Quota, case_hint, deficits, known_quotas
from planner.core.stop_policy import StopConfig, StopDecision
from planner.daemon.leader import LeaderLease
from planner.daemon.pushing import RETRIED, Pusher, items_to_score, stop_set_items
from planner.daemon.stopping import evaluate_and_record, policy_fingerprint
from planner.daemon.upkeep import finish_half_pushed
from planner.daemon.watch import BACKOFF_BASE_S, BackendWatch
from planner.errors import AuthError, PlannerError, StoreError
from planner.health import BackendHealth
from planner.outputs import EmitOptions, ReportOptions, emit_pending, write_daily_report
from planner.ports import AnnotationBackend
from planner.quarantine import count_held_apart
from planner.store import Store, prune_scores
from planner.store.batches import active_batch, refresh_progress
from planner.store.events import record_model_version, stop_fired
from planner.store.models import Project
from planner.store.snapshots import annotations_used, snapshot_counts
from planner.store.stop_set import DEFAULT_SIZE
from planner.store.sync_state import record_sync_error, sync_state
from planner.store.tasks import count_table
from planner.sync import SyncOptions, SyncReport, sync_project
from planner.telemetry import Telemetry

log = logging.getLogger("planner.daemon")

Scorer = Callable[[int, Sequence[tuple[int, str]]], str]
"""Scores ``(task id, image)`` items of a planner project; returns the model version used."""
ReportWriter = Callable[[int, ReportOptions, datetime], Path]
"""Writes the daily report of a Label Studio project; the folder written."""


@dataclass(frozen=True, slots=True)
class CycleOutcome:
    """What one cycle did: the batch pushed (or finished after a crash) and why, or why not."""

    pushed: str | None
    why: str
    sync: SyncReport | None = None
    recovered: bool = False
    """``pushed`` is a half-pushed batch of an earlier run, finished now."""
    stop: StopDecision | None = None
    model_version: str | None = None
    missing: tuple[int, ...] = ()
    """Tasks of the batch Label Studio no longer had (deleted): left out, their items expired."""

    def as_dict(self) -> dict[str, object]:
        return {
            "pushed": self.pushed,
            "why": self.why,
            "recovered": self.recovered,
            "missing": list(self.missing),
            "model_version": self.model_version,
            "sync": None if self.sync is None else self.sync.as_dict(),
            "stop": None if self.stop is None else self.stop.as_dict(),
        }


def unknown_quotas(
    quotas: Sequence[Quota], classes: Sequence[str], ls_project_id: int
) -> str | None:
    """What to fix when quotas name classes the project's label config lacks; None when all
    are known. Such quotas are left out of the counts and the stop rules until fixed."""
    unknown = [q.class_name for q in quotas if q.class_name not in classes]
    if not unknown:
        return None
    return (
        f"quotas {unknown} name no class of Label Studio project {ls_project_id}'s label "
        f"config{case_hint(unknown, classes)}; they are left out of the quota counts and the "
        f"stop rules, the other quotas count. Rename each [quotas.<Class>] section to one of "
        f"{list(classes)} (class names are case-sensitive), or add the class to the label config"
    )


@dataclass
class ProjectDaemon:
    """Everything the scheduled jobs of one project need."""

    backend: AnnotationBackend
    store: Store
    ls_project_id: int
    quotas: Sequence[Quota]
    scorer: Scorer
    lease: LeaderLease
    plan_options: PlanOptions = field(default_factory=lambda: PlanOptions(batch_size=50))
    sync_options: SyncOptions = field(default_factory=SyncOptions)
    cycle_when_done: float = 0.8
    seed: int = 0
    stop: StopConfig = field(default_factory=StopConfig)
    emit: EmitOptions | None = None
    """Where artifacts go when a stop rule fires; None emits nothing."""
    reports: ReportOptions | None = None
    """The daily report's options; None makes ``report()`` only sync."""
    report_writer: ReportWriter | None = None
    """How the report is written (``planner run``: in a child process); None: in-process."""
    stop_set_size: int = DEFAULT_SIZE
    telemetry: Telemetry = field(default_factory=Telemetry)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    on_cycle_due: Callable[[], None] = lambda: None
    on_synced: Callable[[], None] = lambda: None
    """Called after each successful sync: Label Studio answers (``run.py`` registers the
    webhook then, if it could not at the start)."""
    retry_backoff_max_s: float = 300.0
    """Longest wait between two tries while Label Studio fails (``schedule.retry_backoff_max``)."""
    retry_backoff_base_s: float = BACKOFF_BASE_S
    refresh_token: Callable[[], bool] = lambda: False
    """Re-read the Label Studio token (after a 401); True when a new one is now in use."""
    last_sync: SyncReport | None = None
    last_decision: StopDecision | None = None

    _busy: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    """One job at a time: the scheduler's threads would otherwise sync beside a push, and a
    sync's recovery would push a batch this daemon is pushing (duplicate predictions)."""
    _sync_wanted: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    """A sync was asked for (a webhook) while another job ran; that job syncs when it ends,
    since its own sync may have read Label Studio before the new annotation."""
    _reconcile_wanted: threading.Event = field(
        default_factory=threading.Event, init=False, repr=False
    )
    """The sync asked for must reconcile (tasks were deleted, which an incremental listing
    does not show); kept until a sync has reconciled."""
    _watch: BackendWatch = field(init=False, repr=False)
    _unknown_quotas_logged: str = field(default="", init=False, repr=False)
    _scoring_failed: bool = field(default=False, init=False, repr=False)
    """The last cycle's scoring failed: syncs leave the retry to the scheduled cycle."""

    def __post_init__(self) -> None:
        self._watch = BackendWatch(
            self.store,
            self.ls_project_id,
            self.telemetry,
            self.clock,
            base_s=self.retry_backoff_base_s,
            max_s=self.retry_backoff_max_s,
        )

    @property
    def health(self) -> BackendHealth:
        """What this daemon last saw of Label Studio (``planner.health``)."""
        return self._watch.health

    def retry_due(self) -> bool:
        """Label Studio failed and the backed-off next try is due (``run.py`` syncs then)."""
        return self._watch.retry_due()

    # -- jobs -----------------------------------------------------------------------------
    def sync(self, *, reconcile: bool = False) -> SyncReport | None:
        """Sync, update metrics and snapshots, evaluate the stop rules; ask for a cycle when
        the active batch is mostly done. Only the leader syncs; None when this daemon does
        not lead, another job is running (it syncs again when it ends) or the sync failed."""
        while True:
            if not self._busy.acquire(blocking=False):
                self._sync_wanted.set()  # before the second try: the running job sees it
                if not self._busy.acquire(blocking=False):
                    log.debug(
                        "project %s: a job is running; it syncs again when it ends",
                        self.ls_project_id,
                    )
                    return None
            self._sync_wanted.clear()  # this sync serves every request made until now
            wanted = self._reconcile_wanted.is_set()
            self._reconcile_wanted.clear()
            report = None
            try:
                report = self._locked_sync(reconcile=reconcile or wanted)
            finally:
                if wanted and report is None:  # not synced (backing off, not leading): later
                    self._reconcile_wanted.set()
                self._busy.release()
            if not self._sync_wanted.is_set():
                return report

    def want_sync(self, *, reconcile: bool = False) -> None:
        """Ask for a sync (a webhook) without running one here: the job running now syncs
        again when it ends, a sync job included, which the scheduler would not start twice
        (one instance a job) and so would never see the request. ``reconcile``: tasks were
        deleted; the sync compares every task id (requests coalesce into one)."""
        if reconcile:
            self._reconcile_wanted.set()
        self._sync_wanted.set()

    def _locked_sync(self, *, reconcile: bool) -> SyncReport | None:
        with self._surviving_store("sync"):
            if not self._lead() or not self._watch.ready():
                return None
            self._recover()
            return self._sync(reconcile=reconcile) if self._watch.ready() else None
        return None

    @contextmanager
    def _job(self, name: str) -> Iterator[None]:
        """Hold the one-job lock and survive a lost database; afterwards sync once more if a
        sync was asked for meanwhile (the request is not lost until the next poll). A job
        that raised (a shutdown, a bug) does not: the exception goes up first."""
        with self._busy, self._surviving_store(name):
            yield
        if self._sync_wanted.is_set():
            self.sync()

    def cycle(self) -> CycleOutcome:
        """One cycle (``planner cycle --once`` too): finish a half-pushed batch, or sync,
        re-check the stop rules, score the pool with the current model and push the batch."""
        with self._job("cycle"):
            return self._cycle()
        return CycleOutcome(None, "the planner database is unavailable; retried next time")

    def _cycle(self) -> CycleOutcome:
        if not self._lead():
            log.info("not the leader of project %s; no push", self.ls_project_id)
            return CycleOutcome(None, "not the leader")
        recovered = self._recover() if self._watch.ready() else None
        if recovered is not None:
            return CycleOutcome(recovered, "finished a half-pushed batch", recovered=True)
        if not self._watch.ready():
            return CycleOutcome(None, self._watch.waiting())
        report = self._sync(cycling=True)
        if report is None:
            return CycleOutcome(None, "the sync failed; see the log", stop=self.last_decision)
        if self.stopped:
            why = "stopped: " + (self.last_decision.reason if self.last_decision else "")
            return CycleOutcome(None, why, sync=report, stop=self.last_decision)
        return self._score_and_push(report)

    def housekeeping(self) -> None:
        """Reconcile deleted tasks, expire stale batches, drop superseded models' scores."""
        with self._job("housekeeping"):
            if self._lead() and self._watch.ready():
                self._recover()
                if self._watch.ready():
                    report = self._sync(reconcile=True)
                    if report is not None:
                        self._prune_scores(report.project_id)

    @property
    def score_versions_kept(self) -> int:
        """Model versions whose scores housekeeping keeps: the stop rule's kappa compares the
        newest ``kappa_window + 1`` on the stop set; one more is spare."""
        return self.stop.kappa_window + 2

    def _prune_scores(self, project_id: int) -> None:
        with self.store.session() as session:
            deleted = prune_scores(session, project_id=project_id, keep=self.score_versions_kept)
        if deleted:
            log.info(
                "project %s: dropped %d score rows of %d superseded model versions",
                self.ls_project_id,
                sum(deleted.values()),
                len(deleted),
            )

    def report(self) -> Path | None:
        """Sync, then write the daily report (HTML, Markdown, JSON); the folder written."""
        with self._job("report"):
            if not self._lead():
                return None
            if self._watch.ready():  # a report is written even while Label Studio is down
                self._recover()
            if self._watch.ready():
                self._sync()
            return self._write_report()
        return None

    def _write_report(self) -> Path | None:
        if self.reports is None:
            return None
        try:
            if self.report_writer is not None:
                return self.report_writer(self.ls_project_id, self.reports, self.clock())
            return write_daily_report(
                self.store, self.ls_project_id, self.reports, now=self.clock()
            )
        except PlannerError as exc:
            self.telemetry.failed("report")
            log.warning("the daily report of project %s failed: %s", self.ls_project_id, exc)
            return None

    @property
    def policy(self) -> str:
        """The fingerprint of the stop rules and quotas a recorded stop holds for."""
        return policy_fingerprint(self.stop, self.quotas)

    @property
    def stopped(self) -> bool:
        """A stop rule fired under the current policy (read from the store's stop events)."""
        with self.store.session() as session:
            project = self._project(session)
            return project is not None and bool(
                stop_fired(session, int(project.id or 0), policy=self.policy)
            )

    # -- steps ----------------------------------------------------------------------------
    def _lead(self) -> bool:
        try:
            held = self.lease.held() or self.lease.acquire()
        except PlannerError as exc:
            self.telemetry.failed("lease")
            log.warning("leader lease of project %s: %s", self.ls_project_id, exc)
            held = False
        self.telemetry.leader.set(1 if held else 0)
        return held

    def _score_and_push(self, report: SyncReport) -> CycleOutcome:
        project_id, now = report.project_id, self.clock()
        with self.store.session() as session:
            items = items_to_score(
                session, project_id, stop_set_size=self.stop_set_size, seed=self.seed, at=now
            )
        if not items:
            return CycleOutcome(None, "no unlabelled task left", sync=report)
        self._scoring_failed = False
        try:
            version = self._score(project_id, items)
            with self.store.session() as session:
                record_model_version(
                    session, project_id=project_id, version=version, source="scorer", at=now
                )
        except PlannerError as exc:
            self.telemetry.failed("cycle")
            self._scoring_failed = True
            log.warning("cycle of project %s failed: %s", self.ls_project_id, exc)
            return CycleOutcome(None, f"failed, retried next time: {exc}", sync=report)
        try:
            pushed = self._pusher().push(project_id, version, at=self.clock())
        except PlannerError as exc:
            return CycleOutcome(None, self._push_failed(exc), sync=report)
        if pushed is None:
            return CycleOutcome(None, "no scored unlabelled task, or lost the lease", sync=report)
        if not pushed.served:
            why = f"every task of batch {pushed.tag} was deleted in Label Studio; it expired"
            return CycleOutcome(None, why, sync=report, missing=pushed.missing)
        self.telemetry.batches_pushed.inc()
        return CycleOutcome(
            pushed.tag,
            "pushed",
            sync=report,
            stop=self.last_decision,
            model_version=version,
            missing=pushed.missing,
        )

    def _score(self, project_id: int, items: Sequence[tuple[int, str]]) -> str:
        try:
            return self.scorer(project_id, items)
        except AuthError:  # the images were refused the token: it may have been rotated
            if not self.refresh_token():
                raise
        log.info("Label Studio refused the scoring's token; scoring again with the one re-read")
        return self.scorer(project_id, items)

    def _push_failed(self, exc: PlannerError) -> str:
        """After a failed push, why. Label Studio down or the token rejected: the batch stays
        planned, the next job pushes it again after the backoff. Any other refusal is no
        outage: the batch expired, the error is recorded and nothing backs off."""
        self.telemetry.failed("cycle")
        if isinstance(exc, RETRIED):
            self._watch.failed(exc)
            return f"failed, retried next time: {exc}"
        why = f"Label Studio refused the batch, which expired; the next cycle plans anew: {exc}"
        log.warning("project %s: %s", self.ls_project_id, why)
        self._record_error(why)
        return why

    def _pusher(self) -> Pusher:
        return Pusher(
            store=self.store,
            backend=self.backend,
            lease=self.lease,
            ls_project_id=self.ls_project_id,
            quotas=self.quotas,
            plan_options=self.plan_options,
            splits=tuple(self.sync_options.split_ratios),
            seed=self.seed,
        )

    def _recover(self) -> str | None:
        with self.store.session() as session:
            project = self._project(session)
            project_id = None if project is None else int(project.id or 0)
        if project_id is None:
            return None
        try:
            pushed = finish_half_pushed(
                self.store, self.backend, self.ls_project_id, project_id, at=self.clock()
            )
        except PlannerError as exc:
            if isinstance(exc, AuthError) and self.refresh_token():
                log.info("Label Studio rejected the token; pushing again with the one re-read")
                return self._recover()
            self._push_failed(exc)
            return None
        if pushed is None or not pushed.served:
            return None
        self.telemetry.batches_pushed.inc()
        return pushed.tag

    def _sync(self, *, reconcile: bool = False, cycling: bool = False) -> SyncReport | None:
        """Sync and evaluate; ask for a cycle when one is due, unless this is a cycle's sync."""
        try:
            report = sync_project(
                self.backend,
                self.store,
                self.ls_project_id,
                now=self.clock(),
                options=self.sync_options,
                reconcile=reconcile,
            )
        except PlannerError as exc:
            if isinstance(exc, AuthError) and self.refresh_token():
                log.info("Label Studio rejected the token; syncing again with the one re-read")
                return self._sync(reconcile=reconcile, cycling=cycling)
            self._watch.failed(exc)
            return None
        self._watch.ok()
        self.on_synced()
        self.last_sync = report
        self.telemetry.synced(self.clock())
        try:
            done = self._after_sync(report.project_id)
        except PlannerError as exc:
            self.telemetry.failed("planning")
            self._record_error(str(exc))
            log.warning("after the sync of project %s: %s", self.ls_project_id, exc)
            return report
        due = done is None or done >= self.cycle_when_done
        # a stopped project pushes nothing: its cycle would only sync; after a failed scoring
        # the scheduled cycle retries, not every sync (a torch child each sync interval)
        if not cycling and due and not self._scoring_failed and not self.stopped:
            self.on_cycle_due()
        return report

    def _after_sync(self, project_id: int) -> float | None:
        """Batch progress, metrics, a count snapshot, the stop rules; the active batch's share
        done (None when none is active). A quota naming a class the label config lacks is
        reported and left out; the rest are evaluated."""
        now = self.clock()
        with self.store.session() as session:
            project = session.get(Project, project_id)
            if project is None:
                return None
            classes = tuple(project.classes)
            splits = tuple(self.sync_options.split_ratios)
            table = count_table(session, project_id, classes, splits)
            quotas = known_quotas(self.quotas, classes)
            status = deficits(quotas, table, known_classes=table.classes)
            self.telemetry.set_counts("images", table.as_dict()["images"])
            self.telemetry.set_quotas(
                {s.class_name: s.progress for s in status.statuses},
                {s.class_name: s.deficit for s in status.statuses},
            )
            self.telemetry.tasks_quarantined.set(count_held_apart(session, project_id))
            used = annotations_used(session, project_id)
            snapshot_counts(session, project_id, table, annotations=used, at=now)
            batch = active_batch(session, project_id)
            done = None if batch is None else refresh_progress(session, batch, at=now)
            self.telemetry.batch_done.set(-1 if done is None else done)
            stop_set = stop_set_items(
                session, project_id, size=self.stop_set_size, seed=self.seed, at=now
            )
            decision, stopped = evaluate_and_record(
                session,
                project,
                table,
                quotas,
                self.stop,
                stop_set=[task_id for task_id, _ in stop_set],
                now=now,
                policy=self.policy,  # the configured quotas': fixing the config re-arms
            )
            self.last_decision = decision
            self.telemetry.set_stop(decision)
            self._report_unknown_quotas(session, project_id, classes)
        self.telemetry.stopped.set(1 if stopped else 0)
        if stopped:
            self._emit_pending(project_id)
        return done

    def _report_unknown_quotas(
        self, session: Session, project_id: int, classes: Sequence[str]
    ) -> None:
        """Record (after every sync, as the config warning: the sync itself worked) and log
        (once per set of names) the quotas that name no class of the label config."""
        problem = unknown_quotas(self.quotas, classes, self.ls_project_id)
        sync_state(session, project_id).config_warning = problem
        if problem is None:
            self._unknown_quotas_logged = ""
            return
        if problem != self._unknown_quotas_logged:
            log.warning("%s", problem)
            self._unknown_quotas_logged = problem

    def _emit_pending(self, project_id: int) -> None:
        if self.emit is None:
            return
        try:
            written = emit_pending(
                self.store,
                self.ls_project_id,
                project_id,
                self.emit,
                splits=tuple(self.sync_options.split_ratios),
                policy=self.policy,
                now=self.clock(),
            )
        except PlannerError as exc:  # the next sync tries again
            self.telemetry.failed("artifacts")
            log.error("a stop rule fired but the artifacts could not be written: %s", exc)
            return
        if written is not None:
            log.info("stop rule fired: artifacts %s written", written.version)

    def _project(self, session: Session) -> Project | None:
        query = select(Project).where(Project.ls_project_id == self.ls_project_id)
        return session.exec(query).first()

    @contextmanager
    def _surviving_store(self, job: str) -> Iterator[None]:
        """A locked or unreachable planner database ends the job; its next run retries."""
        try:
            yield
        except StoreError as exc:
            self.telemetry.failed("store")
            log.warning("%s of project %s: %s", job, self.ls_project_id, exc)

    def _record_error(self, message: str) -> None:
        try:
            with self.store.session() as session:
                row = self._project(session)
                if row is not None:
                    record_sync_error(session, int(row.id or 0), message)
        except PlannerError:
            log.exception("could not record the sync error")
