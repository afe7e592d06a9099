"""The daily report the daemon writes shows exactly the store's numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlmodel import select

from planner.core.quotas import Quota
from planner.daemon.stopping import stop_config
from planner.outputs import ReportOptions
from planner.settings import StopSettings
from planner.store import Store
from planner.store.batches import active_batch, items_of
from planner.store.events import count_snapshots
from planner.store.models import Project
from planner.store.snapshots import batch_yields
from planner.store.stop_set import stop_set
from planner.store.tasks import count_table
from tests.unit.daemon.helpers import (
    TableScorer,
    by_task_id,
    digits_project,
    label_current_batch,
    make_daemon,
)

SPLITS = ("train", "val", "test")
QUOTAS = (
    Quota("1", target=30, split_targets={"train": 20, "val": 3, "test": 3}),
    Quota("7", target=25, criticality=2.0),
)


def test_the_report_holds_the_numbers_of_the_store(
    store: Store, digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    project = digits_project(digit_files[1])
    options = ReportOptions(
        folder=tmp_path / "reports", quotas=QUOTAS, splits=SPLITS, strata_fields=("time",)
    )
    daemon = make_daemon(project, store, QUOTAS, TableScorer(store, by_task_id), reports=options)
    for _ in range(2):
        assert daemon.cycle().pushed is not None
        label_current_batch(project, store)
    assert daemon.cycle().pushed is not None  # batch 3 is the one being labelled
    day = daemon.report()
    assert day is not None
    assert sorted(p.name for p in day.iterdir()) == ["report.html", "report.json", "report.md"]
    data = json.loads((day / "report.json").read_text())

    with store.session() as session:
        pid = int(session.exec(select(Project)).one().id or 0)
        table = count_table(session, pid, tuple(str(d) for d in range(10)), SPLITS)
        yields = batch_yields(session, pid)
        snapshots = count_snapshots(session, pid)
        live = active_batch(session, pid)
        assert live is not None
        live_items = items_of(session, int(live.id or 0))
    rows = {(r["class_name"], r["split"]): r for r in data["quotas"]}
    for quota in QUOTAS:
        column = table.classes.index(quota.class_name)
        for s, split in enumerate(SPLITS):
            assert rows[quota.class_name, split]["count"] == int(table.images[s, column])
        total = rows[quota.class_name, "total"]
        assert total["count"] == int(table.images[:, column].sum())
        assert total["target"] == quota.target
    assert [(b["batch_id"], b["size"], b["labelled"], b["hits"]) for b in data["batches"]] == [
        (y.tag, y.size, y.labelled, y.hits) for y in yields
    ]
    assert len(yields) == 3
    assert yields[0].labelled == 10
    assert yields[2].labelled == 0
    # the batch being labelled has no yield yet: none, not 0 %
    assert data["batches"][2]["size"] == 10
    assert data["batches"][2]["yield_rate"] is None
    assert data["batches"][0]["yield_rate"] == yields[0].hits / 10
    assert len(snapshots) >= 3, "a snapshot per change of the counts"
    # the burn-up shows each day's last (UTC days), today's being now
    days = {s.taken_at.astimezone(UTC).date() for s in snapshots}
    days.add(datetime.fromisoformat(data["generated_at"]).astimezone(UTC).date())
    assert len(data["burnup"]) == len(days)
    last = data["burnup"][-1]["counts"]
    assert last == {
        q.class_name: int(table.images[:, table.classes.index(q.class_name)].sum()) for q in QUOTAS
    }
    assert {r["class_name"] for r in data["eta"]} == {"1", "7"}
    assert data["imbalance"][0]["total"] == int(table.without("unknown").images.sum())
    rules = {r["rule"] for r in data["stop"]["rules"]}
    assert {"quota", "annotation_budget", "minority_yield", "stable_predictions"} <= rules
    assert data["stop"]["should_stop"] is False
    nxt = data["next_batch"]
    assert nxt["selected"] == len(live_items) == 10
    ranked = [str(i.ls_task_id) for i in sorted(live_items, key=lambda i: i.rank)]
    assert [p["item_id"] for p in nxt["picks"]] == ranked
    assert {t["class_name"] for t in nxt["targets"]} >= {"1", "7"}
    assert data["strata_items"] == 120, "100 labelled at the start, 2 batches of 10"
    html = (day / "report.html").read_text()
    markdown = (day / "report.md").read_text()
    for shown in (yields[0].tag, "Hidden imbalance by strata", "What the next batch targets"):
        assert shown in html
        assert shown in markdown


def test_a_standby_writes_no_report(
    store: Store, digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    project = digits_project(digit_files[1])
    options = ReportOptions(folder=tmp_path / "reports", quotas=QUOTAS, splits=SPLITS)
    leader = make_daemon(project, store, QUOTAS, TableScorer(store, by_task_id), reports=options)
    assert leader.report() is not None
    standby = make_daemon(project, store, QUOTAS, leader.scorer, holder="standby", reports=options)
    assert standby.report() is None


def test_a_quota_for_a_class_the_label_config_lacks_leaves_the_stop_as_the_daemon_has_it(
    store: Store, digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    project = digits_project(digit_files[1])
    quotas = (Quota("1", target=1), Quota("not-a-digit", target=5))
    options = ReportOptions(folder=tmp_path / "reports", quotas=quotas, splits=SPLITS)
    daemon = make_daemon(project, store, quotas, TableScorer(store, by_task_id), reports=options)
    daemon.sync()
    day = daemon.report()
    assert day is not None
    data = json.loads((day / "report.json").read_text())
    # shown, at 0 of its target, but not evaluated by the stop rules
    missing = next(r for r in data["quotas"] if r["class_name"] == "not-a-digit")
    assert missing["count"] == 0
    # the daemon stopped on the quota it could evaluate; the report says the same
    assert daemon.stopped
    assert data["stop"]["should_stop"] is True
    quota_rule = next(r for r in data["stop"]["rules"] if r["rule"] == "quota")
    assert quota_rule["fired"] is True


def test_the_report_judges_stable_predictions_on_the_stop_set_the_daemon_uses(
    store: Store, digit_files: tuple[Path, list[int]], tmp_path: Path
) -> None:
    project = digits_project(digit_files[1])
    flipping: list[int] = []

    def probs(ids: npt.NDArray[np.int64], call: int) -> npt.NDArray[np.float64]:
        """``by_task_id``, but the flipping task gets another class from each version."""
        out = by_task_id(ids, call)
        hit = np.isin(ids, flipping)
        out[hit] = np.roll(out[hit], call, axis=1)
        return out

    settings = StopSettings(kappa_window=2, kappa_threshold=0.99)
    options = ReportOptions(
        folder=tmp_path / "reports", quotas=QUOTAS, splits=SPLITS, stop=stop_config(settings)
    )
    daemon = make_daemon(
        project,
        store,
        QUOTAS,
        TableScorer(store, probs),
        stop=stop_config(settings),
        reports=options,
    )
    daemon.sync()  # draws the stop set
    with store.session() as session:
        fixed = stop_set(session, int(session.exec(select(Project)).one().id or 0))
    flipping.append(fixed[0])
    for _ in range(3):  # three model versions: two successive pairs
        assert daemon.cycle().pushed is not None
        label_current_batch(project, store)
    project.fake.delete_task(fixed[0])  # its scores stay stored until the next model
    daemon.housekeeping()  # the full listing that finds deleted tasks
    day = daemon.report()  # syncs (the daemon evaluates the rules), then reports
    assert day is not None
    data = json.loads((day / "report.json").read_text())
    assert daemon.last_decision is not None
    evaluated = next(e for e in daemon.last_decision.events if e.rule == "stable_predictions")
    assert evaluated.fired, "the deleted task's disagreement is left out: kappa 1"
    shown = next(r for r in data["stop"]["rules"] if r["rule"] == "stable_predictions")
    assert (shown["fired"], shown["reason"]) == (evaluated.fired, evaluated.reason)
