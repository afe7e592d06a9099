"""`planner cycle --once` over the in-memory Label Studio: it pushes, waits while the open
batch is not done enough, pushes again once it is (or when forced); the command's refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.core.quotas import Quota
from planner.cycle_once import _cycle
from planner.store import Store, open_store
from tests.unit.daemon.helpers import (
    TableScorer,
    by_task_id,
    digits_project,
    label_current_batch,
    make_daemon,
)

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as opened:
        yield opened


def test_one_cycle_pushes_then_waits_for_the_open_batch(store: Store) -> None:
    project = digits_project([i % 10 for i in range(150)])
    scorer = TableScorer(store, by_task_id)
    daemon = make_daemon(project, store, [Quota("7", target=40)], scorer)
    first = _cycle(daemon, 0.8, force=False)
    assert first.outcome.pushed is not None
    assert first.batch is not None
    assert (first.batch.tag, first.batch.size, first.batch.done) == (first.outcome.pushed, 10, 0)
    assert first.batch.targets[0][0] == "7", "the class short of its quota comes first"
    assert sum(first.batch.reasons.values()) == 10

    waiting = _cycle(daemon, 0.8, force=False)
    assert waiting.outcome.pushed is None
    assert f"batch {first.outcome.pushed} is 0% labelled" in waiting.outcome.why
    assert waiting.batch is not None
    assert waiting.batch.tag == first.outcome.pushed
    assert scorer.calls == 1, "nothing scored while the batch is open"
    assert waiting.as_dict()["batch"]["tag"] == first.outcome.pushed

    forced = _cycle(daemon, 0.8, force=True)
    assert forced.outcome.pushed not in (None, first.outcome.pushed)
    label_current_batch(project, store)
    again = _cycle(daemon, 0.8, force=False)
    assert again.outcome.pushed not in (None, forced.outcome.pushed), "done: the next batch"
    assert scorer.calls == 3


def test_one_cycle_pushes_nothing_while_a_daemon_leads(store: Store) -> None:
    project = digits_project([i % 10 for i in range(150)])
    scorer = TableScorer(store, by_task_id)
    quotas = [Quota("7", target=40)]
    running = make_daemon(project, store, quotas, scorer, holder="planner-run")
    assert running.lease.acquire()
    once = _cycle(make_daemon(project, store, quotas, scorer, holder="once"), 0.8, force=False)
    assert (once.outcome.pushed, once.outcome.why, once.batch) == (None, "not the leader", None)
    assert scorer.calls == 0
    assert project.fake.list_predictions(project.pid) == []


def test_cycle_needs_once_and_a_project(no_planner_env: None, tmp_path: Path) -> None:
    without = runner.invoke(app, ["cycle"])
    assert without.exit_code == 2
    assert "pass --once" in without.output
    config = tmp_path / "planner.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "p.db"}"\n', encoding="utf-8")
    no_project = runner.invoke(app, ["cycle", "--once", "-c", str(config)])
    assert no_project.exit_code == 2
    assert "label_studio.project_id is not set" in no_project.output
