"""Stop rules evaluated by the daemon after each sync, on the store, with the real emit path."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from sqlmodel import select

from planner.artifacts import list_versions, read_artifact
from planner.core.quotas import Quota
from planner.core.stop_policy import StopConfig
from planner.daemon.stopping import policy_fingerprint, stop_config, stop_set_predictions
from planner.outputs import EmitOptions
from planner.settings import StopSettings
from planner.store import Store, ensure_project
from planner.store.events import record_model_version
from planner.store.models import ArtifactRecord, ModelVersionRecord, Project, StopEventRecord
from planner.store.scores import write_scores
from planner.store.stop_set import stop_set
from tests.unit.daemon.helpers import (
    CLASSES,
    TableScorer,
    by_task_id,
    choice,
    digits_project,
    label_current_batch,
    make_daemon,
)


def _events(store: Store) -> list[StopEventRecord]:
    with store.session() as session:
        return list(session.exec(select(StopEventRecord).order_by(StopEventRecord.id)).all())


def test_the_quota_rule_emits_artifacts_exactly_when_it_fires(
    store: Store, digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    project = digits_project(digit_files[1])
    ones = sum(1 for t in project.targets[:100] if t == 1)
    quotas = [Quota("1", target=ones + 2)]
    folder = tmp_path / "artifacts"
    scorer = TableScorer(store, by_task_id)
    daemon = make_daemon(project, store, quotas, scorer, emit=EmitOptions(folder))
    assert daemon.sync() is not None
    assert not daemon.stopped
    assert not folder.exists(), "no artifacts before the rule fires"
    assert daemon.last_decision is not None
    assert not daemon.last_decision.should_stop
    for task in project.ids[100:102]:
        project.fake.annotate(task, choice("1"))
    assert daemon.sync() is not None
    assert daemon.stopped
    assert list_versions(folder) == ["v0001"], "emitted when the rule fired"
    artifact = read_artifact(folder)
    reason = artifact.data["reason"]
    assert reason["trigger"] == "stop_rule"
    assert reason["stop"]["should_stop"] is True
    assert reason["stop"]["triggered_by"] == ["quota"]
    assert reason["detail"].startswith("stop (quota): all 1 class quotas met")
    (event,) = _events(store)
    assert (event.rule, event.fired, event.numbers["deficit"]) == ("quota", True, 0.0)
    assert daemon.sync() is not None
    restarted = make_daemon(
        project, store, quotas, scorer, holder="restarted", emit=EmitOptions(folder)
    )
    daemon.lease.release()
    assert restarted.stopped, "the stop is read from the store"
    assert restarted.sync() is not None
    outcome = restarted.cycle()
    assert outcome.pushed is None
    assert outcome.why.startswith("stopped")
    assert scorer.calls == 0, "a stopped project is not even scored"
    assert len(_events(store)) == 1, "neither a second sync nor a restart records it again"
    assert list_versions(folder) == ["v0001"], "nor emits again"
    with store.session() as session:
        (record,) = session.exec(select(ArtifactRecord)).all()
    manifest = (folder / "v0001" / "MANIFEST.json").read_bytes()
    assert record.checksum == hashlib.sha256(manifest).hexdigest()
    assert record.reason == reason["detail"]


def test_a_raised_quota_re_arms_a_stopped_project(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    scorer = TableScorer(store, by_task_id)
    met = make_daemon(project, store, [Quota("1", target=3)], scorer)
    met.sync()
    assert met.stopped
    met.lease.release()
    raised = make_daemon(project, store, [Quota("1", target=500)], scorer, holder="raised")
    assert not raised.stopped, "the stop held for the old quota"
    assert raised.cycle().pushed is not None


def test_quotas_met_do_not_stop_when_the_setting_says_so(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    config = stop_config(StopSettings(when_quotas_met=False))
    daemon = make_daemon(
        project, store, [Quota("1", target=3)], TableScorer(store, by_task_id), stop=config
    )
    daemon.sync()
    assert daemon.last_decision is not None
    quota = next(e for e in daemon.last_decision.events if e.rule == "quota")
    assert quota.fired, "still evaluated and reported"
    assert not daemon.stopped
    assert _events(store) == []


def test_the_annotation_and_calendar_budgets_stop(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    scorer = TableScorer(store, by_task_id)
    quotas = [Quota("1", target=500)]
    budget = make_daemon(
        project, store, quotas, scorer, stop=stop_config(StopSettings(budget_annotations=102))
    )
    budget.sync()
    assert not budget.stopped
    project.fake.annotate(project.ids[100], choice("3"))
    project.fake.annotate(project.ids[101], choice("3"), cancelled=True)  # a skip costs too
    budget.sync()
    (event,) = _events(store)
    assert (event.rule, event.numbers["used"], event.numbers["budget"]) == (
        "annotation_budget",
        102.0,
        102.0,
    )
    budget.lease.release()
    later = [datetime.now(UTC) + timedelta(days=3)]
    calendar = make_daemon(
        project,
        store,
        quotas,
        scorer,
        holder="calendar",
        stop=stop_config(StopSettings(budget_days=2.5)),
        clock=lambda: later[0],
    )
    assert not calendar.stopped, "another policy"
    calendar.sync()
    assert calendar.stopped
    assert _events(store)[-1].rule == "time_budget"
    assert _events(store)[-1].numbers["elapsed_days"] >= 2.5


def _flip(ids: npt.NDArray[np.int64], call: int) -> npt.NDArray[np.float64]:
    """Each model version predicts differently: kappa between versions stays low."""
    probs = np.full((ids.size, len(CLASSES)), 0.02)
    probs[np.arange(ids.size), (ids * (call + 3) + call) % len(CLASSES)] = 0.82
    return probs


@pytest.mark.parametrize(("probs", "stops"), [(by_task_id, True), (_flip, False)])
def test_low_yield_stops_only_together_with_stable_predictions(
    store: Store, digit_files: tuple[Path, list[int]], probs: object, stops: bool
) -> None:
    project = digits_project(digit_files[1])
    scorer = TableScorer(store, probs)  # type: ignore[arg-type]
    settings = StopSettings(yield_window=3, min_yield=0.05, kappa_window=3, kappa_threshold=0.99)
    daemon = make_daemon(
        project, store, [Quota("1", target=500)], scorer, stop=stop_config(settings)
    )
    for _ in range(4):  # four batches, each labelled "3": no item holds the short class 1
        assert daemon.cycle().pushed is not None
        label_current_batch(project, store, label="3")
    daemon.sync()
    decision = daemon.last_decision
    assert decision is not None
    by_rule = {e.rule: e for e in decision.events}
    assert by_rule["minority_yield"].fired
    assert by_rule["minority_yield"].numbers["pooled_yield"] == 0.0
    stable = by_rule["stable_predictions"]
    assert stable.numbers["versions"] == 4, "one prediction vector per model version"
    assert stable.fired is stops
    assert daemon.stopped is stops
    if stops:
        assert sorted(e.rule for e in _events(store)) == ["minority_yield", "stable_predictions"]
        assert stable.numbers["min_kappa"] == 1.0
    # the stop set was drawn once and every version scored all of it
    with store.session() as session:
        pid = session.exec(select(Project)).one().id
        fixed = stop_set(session, int(pid or 0))
    assert fixed
    assert all(set(fixed) <= set(seen) for seen in scorer.seen)


def test_a_macro_f1_plateau_is_reported_from_recorded_validation_scores(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    daemon = make_daemon(project, store, [Quota("1", target=500)], TableScorer(store, by_task_id))
    daemon.sync()
    assert daemon.last_decision is not None
    before = next(e for e in daemon.last_decision.events if e.rule == "f1_plateau")
    assert before.numbers["evaluations"] == 0
    with store.session() as session:
        pid = int(session.exec(select(Project)).one().id or 0)
        at = datetime.now(UTC)
        for k, f1 in enumerate((0.60, 0.71, 0.712, 0.713, 0.711)):
            record_model_version(
                session,
                project_id=pid,
                version=f"v{k}",
                source="training",
                at=at + timedelta(minutes=k),
                macro_f1=f1,
            )
    daemon.sync()
    plateau = next(e for e in daemon.last_decision.events if e.rule == "f1_plateau")
    assert plateau.fired
    assert plateau.numbers["best_before"] == pytest.approx(0.71)
    assert json.dumps(daemon.last_decision.as_dict())  # what the report and artifacts carry


def test_a_cycle_rechecks_the_rules_after_its_own_sync(
    store: Store, digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    project = digits_project(digit_files[1])
    ones = sum(1 for t in project.targets[:100] if t == 1)
    scorer = TableScorer(store, by_task_id)
    folder = tmp_path / "artifacts"
    daemon = make_daemon(
        project, store, [Quota("1", target=ones + 1)], scorer, emit=EmitOptions(folder)
    )
    assert daemon.sync() is not None
    assert not daemon.stopped
    project.fake.annotate(project.ids[100], choice("1"))  # labelled after the last sync
    outcome = daemon.cycle()
    assert outcome.pushed is None, "the cycle's own sync saw the quota met"
    assert outcome.why.startswith("stopped: stop (quota)")
    assert scorer.calls == 0
    assert list_versions(folder) == ["v0001"]


def test_a_stopped_project_asks_for_no_cycle_after_its_syncs(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    # a cycle of a stopped project pushes nothing and would only sync a second time
    project = digits_project(digit_files[1])
    daemon = make_daemon(project, store, [Quota("1", target=3)], TableScorer(store, by_task_id))
    asked: list[str] = []
    daemon.on_cycle_due = lambda: asked.append("cycle")
    daemon.sync()
    assert daemon.stopped
    daemon.sync()
    assert asked == []
    raised = make_daemon(project, store, [Quota("1", target=500)], daemon.scorer, holder="b")
    daemon.lease.release()
    raised.on_cycle_due = lambda: asked.append("cycle")
    raised.sync()
    assert asked == ["cycle"], "a project short of its quota still asks"


def test_the_stop_modes_come_from_the_settings_and_keep_older_policies() -> None:
    settings = StopSettings(budget_annotations=5000, kappa_mode="mean", yield_mode="mean")
    config = stop_config(settings)
    assert (config.kappa_mode, config.yield_mode) == ("mean", "mean")
    quotas = [Quota("Wheelchair", target=150)]
    # fingerprints a planner from before `kappa_mode` recorded its stops under (commit 31d9f62):
    # an upgrade must not re-arm a stop that already fired
    assert policy_fingerprint(StopConfig(), []) == "e17a3d94c9e15671"
    older = stop_config(StopSettings(budget_annotations=5000))
    assert policy_fingerprint(older, quotas) == "3dc3b59599aa8133"
    assert policy_fingerprint(config, quotas) != policy_fingerprint(older, quotas)


def test_a_model_scored_again_under_other_settings_counts_once_in_the_kappa_history(
    store: Store,
) -> None:
    ids = list(range(1, 9))
    first, second, third = [i % 3 for i in ids], [(i + 1) % 3 for i in ids], [0] * 8
    history = [  # oldest first: MC passes turned on, then another input size, a new model
        ("m1", first),
        ("m1+mc5", first),  # the same argmax: the setting alone would agree with m1
        ("m2", second),
        ("m2+64px", third),  # rescored at 64 px: m2's newest scores
        ("m3", first),
    ]
    at = datetime(2026, 12, 1, tzinfo=UTC)
    with store.session() as session:
        pid = int(ensure_project(session, ls_project_id=1).id or 0)
        for k, (version, labels) in enumerate(history):
            record_model_version(
                session, project_id=pid, version=version, source="test", at=at + timedelta(k)
            )
            probs = np.full((len(ids), 3), 0.05)
            probs[np.arange(len(ids)), labels] = 0.9
            write_scores(session, project_id=pid, model_version=version, task_ids=ids, probs=probs)
    with store.session() as session:
        versions = list(session.exec(select(ModelVersionRecord).order_by(ModelVersionRecord.id)))
        got = stop_set_predictions(session, pid, versions, ids, needed=3, width=3)
    # m1 by its newest scores (m1+mc5), m2 by m2+64px's, then m3: three models, not five
    assert [vector.tolist() for vector in got] == [first, third, first]
