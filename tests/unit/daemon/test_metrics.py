"""The daemon's own /metrics: its live Telemetry, scraped over HTTP after a sync."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from planner.core.quotas import Quota
from planner.daemon.metrics import MetricsServer
from planner.daemon.serving import Servers
from planner.errors import ConfigError
from planner.settings import load_settings
from planner.store import Store
from planner.store.models import Project
from planner.store.tasks import count_table
from tests.unit.daemon.helpers import TableScorer, by_task_id, choice, digits_project, make_daemon


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_scrape_after_a_sync_shows_the_daemons_numbers(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    daemon = make_daemon(project, store, [Quota("7", target=40)], TableScorer(store, by_task_id))
    assert daemon.cycle().pushed is not None
    assert daemon.sync() is not None  # sees the batch it pushed: none of it labelled yet
    server = MetricsServer(daemon.telemetry, host="127.0.0.1", port=0, token="s3cret-token")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"ok": True}
        response = httpx.get(
            f"{url}/metrics", headers={"Authorization": "Bearer s3cret-token"}, timeout=5
        )
    finally:
        server.stop()
    assert response.status_code == 200
    samples = _samples(response.text)
    with store.session() as session:
        pid = int(session.exec(select(Project)).one().id or 0)
        table = count_table(
            session, pid, tuple(str(d) for d in range(10)), ("train", "val", "test")
        )
    seven = table.classes.index("7")
    for s, split in enumerate(table.splits):
        key = ("planner_class_count", (("cls", "7"), ("kind", "images"), ("split", split)))
        assert samples[key] == table.images[s, seven]
    deficit = 40 - int(table.images[:, seven].sum())
    assert samples[("planner_quota_deficit", (("cls", "7"),))] == deficit
    assert samples[("planner_leader", ())] == 1
    assert samples[("planner_batches_pushed_total", ())] == 1
    assert samples[("planner_label_studio_up", ())] == 1
    assert samples[("planner_batch_done_ratio", ())] == 0
    assert samples[("planner_stop_rule_fired", (("rule", "quota"),))] == 0
    assert samples[("planner_stopped", ())] == 0


def test_metrics_beyond_loopback_need_a_token_and_a_taken_port_is_clear(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1])
    daemon = make_daemon(project, store, [], TableScorer(store, by_task_id))
    with pytest.raises(ConfigError, match="needs a token"):
        MetricsServer(daemon.telemetry, host="0.0.0.0", port=0)  # noqa: S104
    first = MetricsServer(daemon.telemetry, host="127.0.0.1", port=0).start()
    try:
        with pytest.raises(ConfigError, match="metrics_port"):
            MetricsServer(daemon.telemetry, host="127.0.0.1", port=first.port)
        # a standby on the same host: the daemon goes on without its own metrics
        settings = load_settings(None, environ=False)
        board = settings.dashboard.model_copy(update={"metrics_port": first.port})
        taken = settings.model_copy(update={"dashboard": board})
        schedule = SimpleNamespace(running=False)
        standby = Servers(taken, daemon, schedule)  # type: ignore[arg-type]
        standby.ensure()
        assert standby.metrics is None
        # a token missing beyond loopback stays an error that stops the start
        exposed = board.model_copy(update={"host": "0.0.0.0"})  # noqa: S104
        exposed_servers = Servers(
            settings.model_copy(update={"dashboard": exposed}),
            daemon,
            schedule,  # type: ignore[arg-type]
        )
        with pytest.raises(ConfigError, match="needs a token"):
            exposed_servers.ensure()
    finally:
        first.stop()


def test_the_quarantine_gauge_counts_every_task_held_apart_not_only_this_syncs(
    store: Store, digit_files: tuple[Path, list[int]]
) -> None:
    project = digits_project(digit_files[1], labelled=20)
    for task in project.ids[20:23]:
        project.fake.annotate(task, choice("not-a-digit"))
    daemon = make_daemon(project, store, [], TableScorer(store, by_task_id))

    def held() -> float | None:
        return daemon.telemetry.registry.get_sample_value("planner_tasks_quarantined")

    assert daemon.sync() is not None
    assert held() == 3
    assert daemon.sync() is not None  # incremental: reads none of the three again
    assert held() == 3, "still held apart"
    project.fake.annotate(project.ids[23], choice("not-a-digit"))
    assert daemon.sync() is not None
    assert held() == 4
