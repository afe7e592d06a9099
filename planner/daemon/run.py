"""``planner run``: one project's daemon, scheduled, leading or standing by, stopped by SIGTERM.

The main thread is the lease heartbeat: it renews the lease (or tries to take it) every
``HEARTBEAT_S``, runs the schedule only while it leads and pauses it when the lease is lost, so
a standby's scheduler never touches the job store the leader's uses. Scoring and the daily
report run in child processes (``planner.daemon.embedded``): this process never imports torch.

It serves its metrics on ``dashboard.metrics_port`` and, with ``dashboard.webhook_secret`` set,
the dashboard and the webhook receiver on ``dashboard.host``/``port``: a Label Studio webhook
asks for an early sync (the poll stays the source of truth); with ``dashboard.webhook_url`` it
registers the project's webhook there (``planner.daemon.serving``). A port taken (a standby on
the leader's host) is tried again at every heartbeat.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

from planner.connect import connect, open_settings_store, sync_options, worker_config
from planner.core.labels import parse_label_config
from planner.core.plan import PlanOptions
from planner.core.quotas import Quota
from planner.daemon.embedded import ChildGroup, ChunkDeaths, report_in_child, score_pool_in_child
from planner.daemon.leader import DEFAULT_TTL_S, LeaderLease, RedisLease, holder_name
from planner.daemon.rotation import TokenInUse, token_refresher
from planner.daemon.schedule import Schedule
from planner.daemon.service import ProjectDaemon, Scorer, unknown_quotas
from planner.daemon.serving import Servers, register_webhook
from planner.daemon.stopping import stop_config
from planner.errors import ConfigError, PlannerError, StoreError, TransientError
from planner.health import ScoringRun
from planner.outputs import emit_options, report_options
from planner.params import quotas_from_settings
from planner.ports import AnnotationBackend
from planner.settings import Settings
from planner.status import served_counts, served_hints
from planner.store import DatabaseLease, Store
from planner.store.models import Project
from planner.store.sync_state import record_scoring
from planner.web import check_exposure

if TYPE_CHECKING:
    from integrations.label_studio.client import LabelStudioBackend

log = logging.getLogger("planner.daemon")
HEARTBEAT_S = DEFAULT_TTL_S / 3


class _Jobs:
    """The schedule's view of the daemon: four jobs that return nothing."""

    def __init__(self, daemon: ProjectDaemon) -> None:
        self.daemon = daemon

    def sync(self) -> None:
        self.daemon.sync()

    def cycle(self) -> None:
        outcome = self.daemon.cycle()
        log.info("cycle of project %s: %s", self.daemon.ls_project_id, outcome.why)

    def report(self) -> None:
        self.daemon.report()

    def housekeeping(self) -> None:
        self.daemon.housekeeping()


def _scorer(
    settings: Settings,
    store: Store,
    children: ChildGroup | None = None,
    token: TokenInUse | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Scorer:
    """Scores in a child process and records each run's outcome in the store (``clock``: when
    it ended)."""
    token = token or TokenInUse.of(settings)
    deaths = ChunkDeaths()  # the chunks scoring children died on, kept from cycle to cycle
    hinted: set[str] = set()  # folders the log has named already: once a daemon is enough

    def score(project_id: int, items: Sequence[tuple[int, str]]) -> str:
        with store.session() as session:
            project = session.get(Project, project_id)
            classes = tuple(project.classes) if project else ()
            counts = served_counts(session, project_id)
        unsaid = {kind: count for kind, count in counts.items() if kind not in hinted}
        for hint in served_hints(unsaid, settings.workers):  # `planner status` says it each time
            log.warning("scoring project %s: %s", settings.label_studio.project_id, hint)
        hinted.update(kind for kind, count in unsaid.items() if count)
        # the token in use now: the settings' is revoked once the daemon took a rotated one
        cfg = replace(worker_config(settings, classes), label_studio_token=token.value)
        # in a child process: the daemon stays free of torch (embedded and Celery alike)
        result = score_pool_in_child(cfg, project_id, items, group=children, deaths=deaths)
        for warning in result.warnings:  # a chunk left unscored, a model file passed over
            log.warning("scoring project %s: %s", settings.label_studio.project_id, warning)
        # for `planner status`, the report and the dashboard: the log alone reaches no one
        run = ScoringRun(clock(), result.model_version or None, result.warnings, result.failed)
        with store.session() as session:
            record_scoring(session, project_id, run)
        if not result.model_version:
            raise ConfigError("scoring produced no model version; check workers.model")
        return str(result.model_version)

    return score


def make_lease(settings: Settings, store: Store, name: str) -> LeaderLease:
    """The Redis lease with a broker configured, the database lease otherwise."""
    if settings.workers.broker_url:
        return RedisLease.from_url(settings.workers.broker_url, name)
    return DatabaseLease(store.engine, name, holder=holder_name())


def build_daemon(
    settings: Settings,
    *,
    backend: AnnotationBackend,
    store: Store,
    lease: LeaderLease,
    children: ChildGroup | None = None,
    token: TokenInUse | None = None,
) -> ProjectDaemon:
    """The project daemon of ``settings`` (also what ``planner cycle --once`` runs); its
    scoring and report children belong to ``children`` (cancelled on shutdown); ``token``:
    the Label Studio token its scoring uses (``token_refresher`` rotates it)."""
    children = children or ChildGroup()
    project_id = settings.label_studio.project_id
    if project_id is None:
        raise ConfigError("label_studio.project_id is not set; the daemon watches one project")
    planning = settings.planning
    password = settings.store.password
    secret = None if password is None else password.get_secret_value()
    return ProjectDaemon(
        backend=backend,
        store=store,
        ls_project_id=project_id,
        quotas=quotas_from_settings(settings),
        scorer=_scorer(settings, store, children, token),
        lease=lease,
        plan_options=PlanOptions(
            batch_size=planning.batch_size,
            exploration_share=planning.exploration_share,
            hard_negative_share=planning.hard_negative_share,
            discovery_share=planning.discovery_share,
            discovery_whiten=planning.discovery_whiten,
            discovery_short_weight=planning.discovery_short_weight,
            shortfall_factor=planning.shortfall_factor,
            vote_neighbours=planning.vote_neighbours,
            vote_distance_power=planning.vote_distance_power,
            met_uncertainty=planning.met_uncertainty,
            met_rarity_power=planning.met_rarity_power,
            balance_lambda=planning.balance_lambda,
            diversity=planning.diversity,
        ),
        sync_options=sync_options(settings),
        cycle_when_done=settings.schedule.cycle_when_done,
        seed=planning.seed,
        stop=stop_config(settings.stop),
        emit=emit_options(settings),
        reports=report_options(settings),
        report_writer=lambda pid, options, now: report_in_child(
            settings.store.url, secret, pid, options, now, group=children
        ),
        retry_backoff_max_s=settings.schedule.retry_backoff_max.total_seconds(),
    )


def _heartbeat(lease: LeaderLease) -> bool:
    try:
        return lease.renew() if lease.held() else lease.acquire()
    except PlannerError as exc:
        log.warning("leader lease %s: %s", lease.name, exc)
        return False


@contextmanager
def keep_lease(lease: LeaderLease) -> Iterator[None]:
    """Renew (or take) the leader lease every ``HEARTBEAT_S`` in the background while the block
    runs, as ``planner run``'s main thread does, then release it: a cycle that scores for longer
    than the lease lasts (``planner cycle --once``, the demo) would otherwise lose it before
    pushing. The push checks the lease itself, so a failed beat only logs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            _heartbeat(lease)

    thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        release(lease)


def release(lease: LeaderLease) -> None:
    """Give the lease up; one that cannot be (Redis down) runs out within its ttl, so a
    shutdown only logs it and closes the rest."""
    try:
        lease.release()
    except PlannerError as exc:
        log.warning("leader lease %s not released (it runs out by itself): %s", lease.name, exc)


def finish_jobs(schedule: Schedule, lease: LeaderLease) -> None:
    """Shut the schedule down, the running job finishing while the lease is still beaten (a
    job outlasting the lease would otherwise push while a standby took over and pushed too);
    jobs not started yet are skipped. The lease is released after."""
    with keep_lease(lease):
        schedule.shutdown(wait=True)


def run_daemon(settings: Settings, *, stop: threading.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``). The running job finishes first, except a scoring
    or report child, which is stopped: nothing is pushed from a scoring that did not end."""
    project_id = _checked_project(settings)
    stop = stop or threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: finishing the running job, then stopping", signum)
        stop.set()

    # from the start: a SIGTERM while the daemon connects or migrates still stops it cleanly
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    # each step's undoing runs however a later one ends (a failing one too), last first
    with ExitStack() as undo:
        backend = connect(settings)
        undo.callback(backend.close)
        # every setting checked before anything is written: no half-configured daemon, no
        # store migrated for a project that cannot be read
        _check(backend, project_id, quotas_from_settings(settings))
        store = open_settings_store(settings)
        undo.callback(store.dispose)
        name = f"project-{project_id}"
        lease = make_lease(settings, store, name)
        undo.callback(release, lease)
        children = ChildGroup()
        token = TokenInUse.of(settings)
        daemon = build_daemon(
            settings, backend=backend, store=store, lease=lease, children=children, token=token
        )
        daemon.refresh_token = token_refresher(settings, backend, token)
        schedule = Schedule(name, _Jobs(daemon), settings.schedule, store.engine)
        daemon.on_cycle_due = lambda: schedule.run_soon("cycle")

        register_webhook(settings, backend, daemon)
        servers = Servers(settings, daemon, schedule)
        undo.callback(servers.stop_metrics)  # served while the running job finishes
        undo.callback(finish_jobs, schedule, lease)
        undo.callback(_cancel, children)
        undo.callback(servers.stop_receiver)
        while not stop.is_set():
            servers.ensure()  # a standby on the leader's host: once the leader's ports are free
            _beat(lease, daemon, schedule)
            if stop.wait(timeout=HEARTBEAT_S):
                break


def _checked_project(settings: Settings) -> int:
    """The watched project, once the settings that need no server are checked."""
    project_id = settings.label_studio.project_id
    if project_id is None:
        raise ConfigError("label_studio.project_id is not set; the daemon watches one project")
    board = settings.dashboard
    if board.webhook_url is not None and board.webhook_secret is None:
        # no receiver is served without the secret: the webhook would call nothing
        raise ConfigError(
            "dashboard.webhook_url is set but dashboard.webhook_secret is not: the daemon "
            "serves the webhook receiver only with a secret. Set PLANNER_DASHBOARD__WEBHOOK_SECRET "
            "or dashboard.webhook_secret_file, or remove dashboard.webhook_url"
        )
    if board.metrics_port or board.webhook_secret is not None:
        # the metrics and the receiver listen on dashboard.host: refused there without a token
        # now, not once the store is migrated and the webhook registered
        check_exposure(board.host, board.token.get_secret_value() if board.token else None)
    return project_id


def _cancel(children: ChildGroup) -> None:
    stopped = children.cancel()  # a long scoring run is dropped, not waited for
    if stopped:
        log.info("stopped %s running child process(es); their work is redone next time", stopped)


def _beat(lease: LeaderLease, daemon: ProjectDaemon, schedule: Schedule) -> None:
    """One heartbeat: renew (or take) the lease; start, pause or nudge the schedule."""
    leading = _heartbeat(lease)
    daemon.telemetry.leader.set(1 if leading else 0)
    project_id = daemon.ls_project_id
    if leading and not schedule.running:
        log.info("leading project %s as %s", project_id, getattr(lease, "holder", "?"))
        try:
            schedule.start()
        except StoreError as exc:  # leading still: the next heartbeat starts it
            log.warning("%s", exc)
            return
        schedule.run_soon("sync")
    elif not leading and schedule.running:
        log.warning("lost the lease of project %s; standing by", project_id)
        schedule.pause()
    elif leading and daemon.retry_due():  # Label Studio failed: the backed-off try is due
        schedule.run_soon("sync")


def _check(backend: LabelStudioBackend, project_id: int, quotas: Sequence[Quota]) -> None:
    """A wrong URL, token or project stops the start; a server down or slow now does not,
    nor a quota naming a class the label config lacks (said now, and after every sync)."""
    try:
        project = backend.check(project_id)
    except TransientError as exc:  # the daemon starts and backs off until it answers
        log.warning("Label Studio is not answering yet (%s); the daemon retries", exc)
        return
    classes = parse_label_config(project.label_config).classes
    problem = unknown_quotas(quotas, classes, project_id)
    if problem is not None:
        log.warning("%s", problem)
