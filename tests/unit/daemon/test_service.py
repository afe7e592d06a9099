"""One project's daemon jobs against the in-memory Label Studio, a SQLite store and the
embedded scorer (the bootstrap model on real digit images)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import SQLModel, select

from integrations.label_studio.fake import FakeLabelStudio
from planner.core.plan import PlanOptions
from planner.core.quotas import Quota
from planner.daemon.run import build_daemon
from planner.daemon.service import ProjectDaemon, unknown_quotas
from planner.errors import TransientError
from planner.ports import PushBatch, PushResult
from planner.settings import Settings
from planner.store import DatabaseLease, Store, open_store
from planner.store.models import (
    Batch,
    BatchItem,
    CountSnapshot,
    ScoreRecord,
    SyncState,
    Task,
)
from tests.unit.daemon.helpers import (
    CLASSES,
    Project150,
    TableScorer,
    by_task_id,
    choice,
    digits_project,
    label_current_batch,
    make_daemon,
)
from workers.config import WorkerConfig
from workers.dispatch import score_pool

LEASE = SQLModel.metadata.tables["lease"]


def _embedded(store: Store, root: Path) -> TableScorer | object:
    cfg = WorkerConfig(
        store_url=store.engine.url.render_as_string(hide_password=False),
        classes=CLASSES,
        image_root=root,
    )

    def scorer(project_id: int, items: Sequence[tuple[int, str]]) -> str:
        return score_pool(cfg, project_id, items).model_version

    return scorer


def _batches(store: Store) -> list[Batch]:
    with store.session() as session:
        return list(session.exec(select(Batch).order_by(Batch.number)).all())


def test_a_cycle_pushes_a_ranked_batch_once_and_only_the_leader_does(
    digit_files: tuple[Path, list[int]], store: Store
) -> None:
    root, targets = digit_files
    project = digits_project(targets)
    quotas = [Quota("7", target=40, criticality=3.0)]
    daemon = make_daemon(project, store, quotas, _embedded(store, root))  # type: ignore[arg-type]
    outcome = daemon.cycle()
    assert outcome.why == "pushed"
    assert outcome.pushed is not None
    assert outcome.sync is not None
    assert outcome.sync.seen == 150
    batch_ids = project.fake.view_task_ids(project.pid, 1)
    assert len(batch_ids) == 10
    assert set(batch_ids) <= set(project.ids[100:])
    assert project.fake.next_task(project.pid) == batch_ids[0]
    (row,) = _batches(store)
    assert (row.tag, row.state) == (outcome.pushed, "pushed")  # active once a sync sees it served
    daemon.sync()
    (row,) = _batches(store)
    assert row.state == "active"
    assert daemon.lease.renew()  # the leader's heartbeat
    standby = make_daemon(project, store, quotas, daemon.scorer, holder="second")
    assert standby.cycle().why == "not the leader"
    assert standby.sync() is None, "a standby does not even sync"
    assert len(_batches(store)) == 1, "a second daemon must not push while the first leads"
    assert standby.telemetry.registry.get_sample_value("planner_leader") == 0
    assert daemon.telemetry.registry.get_sample_value("planner_leader") == 1


def test_a_sync_asks_for_a_cycle_when_no_batch_is_open_but_a_cycle_does_not_ask_again(
    digit_files: tuple[Path, list[int]], store: Store
) -> None:
    project = digits_project(digit_files[1])
    asked: list[str] = []
    daemon = make_daemon(project, store, [Quota("7", target=40)], TableScorer(store, by_task_id))
    daemon.on_cycle_due = lambda: asked.append("cycle")
    assert daemon.sync() is not None
    assert asked == ["cycle"], "no batch is open: the sync asks for one"
    assert daemon.cycle().pushed is not None
    assert asked == ["cycle"], "the cycle's own sync does not ask for the cycle running now"
    assert daemon.sync() is not None
    assert asked == ["cycle"], "the batch just pushed is not done"


def test_labelled_tasks_are_scored_and_vote_in_the_plan(
    digit_files: tuple[Path, list[int]], store: Store
) -> None:
    root, targets = digit_files
    project = digits_project(targets)
    daemon = make_daemon(project, store, [Quota("7", target=40)], _embedded(store, root))  # type: ignore[arg-type]
    assert daemon.cycle().why == "pushed"
    with store.session() as session:
        scored = {r.ls_task_id for r in session.exec(select(ScoreRecord)).all()}
    assert set(project.ids) <= scored, "the 100 labelled tasks are scored with the pool"
    (row,) = _batches(store)
    notes = row.summary["notes"]
    assert any("nearest of 100 labelled images" in n for n in notes), notes
    assert not set(project.fake.view_task_ids(project.pid, 1)) & set(project.ids[:100])


class _Killed(BaseException):
    """The process dies here (SIGKILL): nothing after this line of the push runs."""


class _DiesMidPush(FakeLabelStudio):
    """Predictions reach the server, then the process dies before the view is updated."""

    def __init__(self, inner: FakeLabelStudio, *, before_predictions: bool = False) -> None:
        self.__dict__ = inner.__dict__  # the same projects and tasks: one server, two clients
        self.before_predictions = before_predictions
        self.daemon: ProjectDaemon | None = None
        """When set, a webhook asks this daemon for a sync just before it dies."""
        self.pushes = 0

    def push_batch(self, project_id: int, batch: PushBatch) -> PushResult:
        self.pushes += 1
        if self.daemon is not None:
            assert self.daemon.sync() is None  # the cycle holds the lock: asked for later
        if self.before_predictions:
            raise _Killed
        state = self._project(project_id)
        old_ranks = dict(state.ranks)
        super().push_batch(project_id, batch)
        state.ranks = old_ranks  # the ranks that order the view were never written
        raise _Killed


def _one_prediction_per_batch_task(
    project: Project150, store: Store, state: str = "pushed"
) -> None:
    (batch,) = _batches(store)
    with store.session() as session:
        items = session.exec(select(BatchItem).where(BatchItem.batch_id == batch.id)).all()
        ranked = [i.ls_task_id for i in sorted(items, key=lambda i: i.rank)]
    predictions = project.fake._project(project.pid).predictions.values()
    assert sorted(p.task for p in predictions) == sorted(ranked), "one per batch task, no other"
    assert {p.model_version for p in predictions} == {batch.tag}
    assert project.fake.view_task_ids(project.pid, 1) == ranked, "the view holds the batch"
    assert batch.state == state  # pushed; active once a sync sees the project serve it


@pytest.mark.parametrize(
    ("before_predictions", "webhook"), [(False, False), (True, False), (False, True)]
)
def test_a_batch_half_pushed_when_the_daemon_died_is_finished_on_restart(
    store: Store, digit_files: tuple[Path, list[int]], before_predictions: bool, webhook: bool
) -> None:
    project = digits_project(digit_files[1])
    scorer = TableScorer(store, by_task_id)
    quotas = [Quota("7", target=40)]
    dying = _DiesMidPush(project.fake, before_predictions=before_predictions)
    first = make_daemon(project, store, quotas, scorer, backend=dying)
    if webhook:  # the sync asked for during the job must not run in a dying process
        dying.daemon = first
    with pytest.raises(_Killed):
        first.cycle()
    assert dying.pushes == 1, "a dying job runs no sync (nor its recovery) on the way out"
    (planned,) = _batches(store)
    assert planned.state == "planned"
    first.lease.release()  # the dead process's lease ran out
    restarted = make_daemon(project, store, quotas, scorer, holder="restarted")
    outcome = restarted.cycle()
    assert (outcome.pushed, outcome.recovered) == (planned.tag, True)
    assert scorer.calls == 1, "the restart finishes the batch; it does not plan another"
    _one_prediction_per_batch_task(project, store)
    assert restarted.cycle().pushed != planned.tag, "the next cycle is a normal one again"
    assert len(_batches(store)) == 2


def test_a_failed_push_is_retried_by_the_next_job_not_duplicated(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    scorer = TableScorer(store, by_task_id)
    now = [datetime.now(UTC)]
    daemon = make_daemon(project, store, [Quota("7", target=40)], scorer, clock=lambda: now[0])
    assert daemon.sync() is not None
    original = project.fake.push_batch

    def refuse(project_id: int, batch: PushBatch) -> PushResult:
        raise TransientError("Label Studio answered 503")

    project.fake.push_batch = refuse  # type: ignore[method-assign]
    outcome = daemon.cycle()
    assert outcome.pushed is None
    assert outcome.why.startswith("failed, retried next time")
    assert [b.state for b in _batches(store)] == ["planned"]
    project.fake.push_batch = original  # type: ignore[method-assign]
    assert (daemon.health.state, daemon.health.failures) == ("failing", 1)
    assert daemon.sync() is None, "backing off: Label Studio is left alone for 5 s"
    now[0] += timedelta(seconds=5)
    assert daemon.retry_due()
    assert daemon.sync() is not None  # the next job of any kind finishes it first
    assert daemon.health.state == "ok"
    assert [b.state for b in _batches(store)] == ["active"]
    _one_prediction_per_batch_task(project, store, "active")


def test_housekeeping_expires_stale_batches_and_deleted_items(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    now = [datetime.now(UTC)]
    daemon = make_daemon(
        project,
        store,
        [Quota("7", target=40)],
        TableScorer(store, by_task_id),
        clock=lambda: now[0],
    )
    pushed = daemon.cycle().pushed
    assert pushed is not None
    with store.session() as session:
        items = session.exec(select(BatchItem).order_by(BatchItem.rank)).all()
        gone = items[0].ls_task_id
    project.fake.delete_task(gone)
    daemon.housekeeping()
    with store.session() as session:
        states = {i.ls_task_id: i.state for i in session.exec(select(BatchItem)).all()}
    assert states[gone] == "expired", "a deleted task cannot be labelled any more"
    assert _batches(store)[0].state == "active", "a fresh batch stays"
    now[0] += timedelta(days=8)
    daemon.housekeeping()
    (batch,) = _batches(store)
    assert batch.state == "expired", "a batch older than schedule.batch_ttl is closed"
    with store.session() as session:
        assert {i.state for i in session.exec(select(BatchItem)).all()} == {"expired"}


def test_an_unreachable_label_studio_is_recorded_and_survived(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    now = [datetime.now(UTC)]
    daemon: ProjectDaemon = make_daemon(
        project,
        store,
        [Quota("7", target=40)],
        TableScorer(store, by_task_id),
        clock=lambda: now[0],
    )
    daemon.sync()
    project.fake.unreachable = True
    assert daemon.sync() is None
    assert daemon.health.state == "unreachable"
    assert daemon.cycle().why.startswith("Label Studio unreachable since"), "backing off"
    now[0] += timedelta(seconds=5)
    assert daemon.cycle().why == "the sync failed; see the log"
    assert daemon.health.failures == 2
    assert daemon.health.retry_at == now[0] + timedelta(seconds=10), "the wait doubled"
    rendered = daemon.telemetry.render()
    assert b"planner_errors_total" in rendered
    assert b'planner_label_studio_state{planner_label_studio_state="unreachable"} 1.0' in rendered
    project.fake.unreachable = False
    now[0] += timedelta(seconds=10)
    assert daemon.sync() is not None
    assert (daemon.health.state, daemon.health.failures) == ("ok", 0)


class _SyncsMidPush(FakeLabelStudio):
    """While a batch is being pushed, an annotator labels a task and a webhook makes the
    scheduler's other thread run a sync job."""

    def __init__(self, inner: FakeLabelStudio, annotate: int) -> None:
        self.__dict__ = inner.__dict__
        self.pushes: list[str] = []
        self.daemon: ProjectDaemon | None = None
        self.sync_result: object = "not run"
        self.annotate_mid_push = annotate

    def push_batch(self, project_id: int, batch: PushBatch) -> PushResult:
        self.pushes.append(batch.tag)
        if self.daemon is not None and len(self.pushes) == 1:
            self.annotate(self.annotate_mid_push, choice("7"))
            other = threading.Thread(
                target=lambda: setattr(self, "sync_result", self.daemon.sync())
            )
            other.start()
            other.join(timeout=30)
        return super().push_batch(project_id, batch)


def test_a_sync_during_a_push_does_not_push_the_same_batch_again(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    late = project.ids[-1]
    backend = _SyncsMidPush(project.fake, annotate=late)
    daemon = make_daemon(
        project, store, [Quota("7", target=40)], TableScorer(store, by_task_id), backend=backend
    )
    backend.daemon = daemon
    outcome = daemon.cycle()
    assert outcome.pushed is not None
    assert backend.sync_result is None, "the sync left the work to the running job"
    assert backend.pushes == [outcome.pushed], "the batch was pushed once"
    _one_prediction_per_batch_task(project, store, state="active")  # the second sync saw it
    with store.session() as session:
        row = session.exec(select(Task).where(Task.ls_task_id == late)).one()
        assert row.state == "labelled", "the cycle synced again for the webhook's sync"
        assert row.labels == ["7"]


@pytest.mark.parametrize("taken", [False, True])
def test_a_lease_that_lapsed_during_scoring_pushes_only_if_nobody_took_it(
    store: Store, taken: bool
) -> None:
    project = digits_project([i % 10 for i in range(150)])
    quotas = [Quota("7", target=40)]
    table = TableScorer(store, by_task_id)
    rival = DatabaseLease(store.engine, f"project-{project.pid}", holder="rival")

    def slow_scorer(project_id: int, items: Sequence[tuple[int, str]]) -> str:
        version = table(project_id, items)
        with store.engine.begin() as connection:  # the scoring outlived the lease's TTL
            connection.execute(update(LEASE).values(expires_at=datetime.now(UTC) - timedelta(1)))
        if taken:
            assert rival.acquire()
        return version

    daemon = make_daemon(project, store, quotas, slow_scorer)
    outcome = daemon.cycle()
    if taken:
        assert (outcome.pushed, len(_batches(store))) == (None, 0), "the rival leads now"
        assert project.fake.view_task_ids(project.pid, 1) == []
    else:
        assert outcome.why == "pushed", "nobody took the lapsed lease: it is ours again"
        assert len(project.fake.view_task_ids(project.pid, 1)) == 10


def test_housekeeping_drops_the_scores_of_superseded_models(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    now = [datetime.now(UTC)]
    scorer = TableScorer(store, by_task_id)
    daemon = make_daemon(project, store, [Quota("7", target=40)], scorer, clock=lambda: now[0])
    keep = daemon.score_versions_kept
    assert keep == daemon.stop.kappa_window + 2
    for _ in range(keep + 2):
        assert daemon.cycle().why != "the planner database is unavailable; retried next time"
        now[0] += timedelta(minutes=5)
    assert scorer.calls == keep + 2
    daemon.housekeeping()
    with store.session() as session:
        left = set(session.exec(select(ScoreRecord.model_version).distinct()).all())
    assert left == {f"m{i}" for i in range(3, keep + 3)}, "the newest versions stay"
    daemon.cycle()  # the stop rules still see the versions they compare
    assert daemon.last_decision is not None


def test_the_daemon_plans_with_every_planning_setting(tmp_path: Path) -> None:
    settings = Settings(
        label_studio={"project_id": 3},
        store={"url": f"sqlite:///{tmp_path / 'planner.db'}"},
        planning={
            "batch_size": 17,
            "exploration_share": 0.2,
            "hard_negative_share": 0.1,
            "discovery_share": 0.4,
            "discovery_whiten": True,
            "discovery_short_weight": 0.5,
            "shortfall_factor": 1.5,
            "vote_neighbours": 7,
            "vote_distance_power": 1.5,
            "met_uncertainty": False,
            "met_rarity_power": 0.5,
            "balance_lambda": 2.5,
            "diversity": False,
        },
    )
    with open_store(settings.store.url) as store:
        lease = DatabaseLease(store.engine, "p", holder="only")
        daemon = build_daemon(settings, backend=FakeLabelStudio(), store=store, lease=lease)
    assert daemon.plan_options == PlanOptions(
        batch_size=17,
        exploration_share=0.2,
        hard_negative_share=0.1,
        discovery_share=0.4,
        discovery_whiten=True,
        discovery_short_weight=0.5,
        shortfall_factor=1.5,
        vote_neighbours=7,
        vote_distance_power=1.5,
        met_uncertainty=False,
        met_rarity_power=0.5,
        balance_lambda=2.5,
        diversity=False,
    )


def test_a_quota_naming_no_class_is_reported_and_the_other_quotas_count(
    store: Store, digit_files: tuple[Path, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    project = digits_project(digit_files[1])
    quotas = [Quota("7", target=1), Quota("Seven", target=5)]
    daemon = make_daemon(project, store, quotas, TableScorer(store, by_task_id))
    for _ in range(2):
        assert daemon.sync() is not None
    decision = daemon.last_decision
    assert decision is not None, "the stop rules were evaluated"
    assert decision.should_stop, "quota 7 is met; 'Seven' is left out, not counted as unmet"
    assert daemon.stopped
    assert daemon.cycle().why.startswith("stopped"), "no batch pushed past the stop"
    with store.session() as session:
        assert session.exec(select(CountSnapshot)).first() is not None
        (state,) = session.exec(select(SyncState)).all()
    assert state.last_error is None, "the syncs worked: a warning is no sync error"
    assert state.config_warning is not None
    assert "quotas ['Seven'] name no class of Label Studio project" in state.config_warning
    assert "Rename each [quotas.<Class>] section to one of ['0', '1'" in state.config_warning
    sample = daemon.telemetry.registry.get_sample_value
    assert sample("planner_quota_deficit", {"cls": "7"}) == 0
    warned = [r for r in caplog.records if "name no class" in r.getMessage()]
    assert len(warned) == 1, "logged once, recorded after every sync"


def test_a_quota_spelled_in_another_case_is_pointed_to_its_class() -> None:
    problem = unknown_quotas([Quota("wheelchair", target=3)], ("Car", "Wheelchair"), 4)
    assert problem is not None
    assert "'wheelchair' is 'Wheelchair' spelled in another case" in problem
    assert unknown_quotas([Quota("Car", target=3)], ("Car", "Wheelchair"), 4) is None


def test_a_webhook_during_a_sync_gets_a_sync_after_it(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    late = project.ids[-1]
    daemon = make_daemon(project, store, [Quota("7", target=40)], TableScorer(store, by_task_id))
    asked: list[int] = []

    def webhook_while_the_sync_job_ends() -> None:
        # after the listing, still inside the sync job: an annotation and its webhook; the
        # scheduler runs no second sync beside this one
        if not asked:
            project.fake.annotate(late, choice("7"))
            daemon.want_sync()
        asked.append(1)

    daemon.on_cycle_due = webhook_while_the_sync_job_ends
    assert daemon.sync() is not None
    assert len(asked) == 2, "the sync ran again for the webhook"
    with store.session() as session:
        row = session.exec(select(Task).where(Task.ls_task_id == late)).one()
        assert row.state == "labelled"


def test_after_a_failed_scoring_syncs_leave_the_retry_to_the_scheduled_cycle(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    scorer = TableScorer(store, by_task_id)
    broken = [True]

    def scoring(project_id: int, items: Sequence[tuple[int, str]]) -> str:
        if broken[0]:
            raise TransientError("the workers are down")
        return scorer(project_id, items)

    daemon = make_daemon(project, store, [Quota("7", target=40)], scoring)
    asked: list[str] = []
    daemon.on_cycle_due = lambda: asked.append("cycle")
    assert daemon.cycle().pushed is None  # the scheduled cycle: scoring failed
    daemon.sync()
    daemon.sync()
    assert asked == [], "each sync would start another scoring child"
    broken[0] = False
    assert daemon.cycle().pushed is not None  # the next scheduled cycle scores and pushes
    label_current_batch(project, store)
    daemon.sync()
    assert asked == ["cycle"], "with the batch done a sync asks for the next cycle again"
