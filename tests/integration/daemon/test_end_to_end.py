"""End to end against the real Label Studio, the real Redis and a real `celery worker` process:
a long-tailed digits project goes from unlabeled to every quota met through the daemon's
cycles, a simulated annotator labelling what the labelling stream serves. The weights and the
resampling plan are emitted exactly when the stop rule fires, once; the daily report shows
the store's numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from integrations.label_studio.launcher import ServerState
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.artifacts.layout import versions
from planner.core.quotas import deficits
from planner.daemon.run import build_daemon, keep_lease, make_lease
from planner.daemon.service import ProjectDaemon
from planner.demo_driver import label_stream
from planner.demo_live import LiveDemoOptions, write_config
from planner.examples.digits import LABEL_CONFIG, write_digit_images
from planner.outputs import project_row
from planner.settings import load_settings
from planner.store import Store, open_store
from planner.store.events import stop_fired
from planner.store.tasks import count_table
from planner.training import load_latest
from tests.integration.daemon.processes import PLANNER, batch_items, batches, kill

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/12"
QUOTAS = {"8": 2, "9": 2}
BATCH = 8
FIRST = 16
MAX_CYCLES = 10
SPLITS = ("train", "val", "test")


@pytest.fixture
def worker(tmp_path: Path, label_studio: ServerState) -> Iterator[Path]:
    """A `planner worker` process on the score queue of this test's Redis database."""
    redis.Redis.from_url(REDIS).flushdb()
    config = tmp_path / "worker.toml"
    own = f'bootstrap_dir = "{tmp_path / "bootstrap"}"\n'  # the worker's own folder
    config.write_text(
        f'[workers]\nbroker_url = "{REDIS}"\nnum_workers = 0\n{own}', encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANNER_")}
    env["PLANNER_LABEL_STUDIO__TOKEN"] = label_studio.token
    env["PLANNER_LABEL_STUDIO__URL"] = label_studio.url  # where the token may go
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [PLANNER, "worker", "-c", str(config), "--queues", "score"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield log
    assert kill(proc, signal.SIGTERM) == 0


def _store_table(store: Store, ls_project_id: int) -> dict[str, dict[str, dict[str, int]]]:
    with store.session() as session:
        project = project_row(session, ls_project_id)
        table = count_table(session, int(project.id or 0), tuple(project.classes), SPLITS)
        return table.as_dict()


def _quotas_met(store: Store, ls_project_id: int, daemon_quotas: object) -> bool:
    with store.session() as session:
        project = project_row(session, ls_project_id)
        table = count_table(session, int(project.id or 0), tuple(project.classes), SPLITS)
    return deficits(daemon_quotas, table, known_classes=table.classes).all_met  # type: ignore[arg-type]


def test_unlabeled_to_quotas_met_emits_once_when_the_rule_fires(  # noqa: PLR0917
    label_studio: ServerState,
    backend: LabelStudioWorkbench,
    images: Path,
    tmp_path: Path,
    worker: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digits = write_digit_images(images / f"e2e-{uuid.uuid4().hex[:6]}", head=36, ratio=8.0)
    pid = backend.create_project(f"e2e-{uuid.uuid4().hex[:8]}", LABEL_CONFIG)
    backend.connect_local_storage(pid, str(digits.folder))
    ids = backend.import_tasks(pid, digits.tasks(Path(label_studio.document_root)))
    truth = dict(zip(ids, digits.digits, strict=True))
    assert digits.counts()["9"] < digits.counts()["0"] / 5, "a long tail"
    # the demo's config, with the broker and the quota rule alone, as the environment may set
    options = LiveDemoOptions(batch_size=BATCH, quotas=QUOTAS)
    config = write_config(tmp_path, label_studio, pid, options)
    monkeypatch.setenv("PLANNER_WORKERS__BROKER_URL", REDIS)
    monkeypatch.setenv("PLANNER_STOP__YIELD_WINDOW", "50")  # only the quota rule may stop it
    settings = load_settings(config)
    assert settings.workers.broker_url == REDIS
    artifacts = settings.artifacts.dir
    db = tmp_path / "planner.db"
    # a person labels a first handful from the stream: the bootstrap model needs some
    assert len(label_stream(backend, pid, truth, FIRST)) == FIRST
    with open_store(settings.store.url) as store:
        lease = make_lease(settings, store, f"project-{pid}")
        assert type(lease).__name__ == "RedisLease"
        daemon = build_daemon(settings, backend=backend, store=store, lease=lease)
        with keep_lease(lease):
            fired_at = _cycles_until_stopped(daemon, store, backend, truth, tmp_path)
        assert fired_at is not None, f"quotas not met after {MAX_CYCLES} cycles"
        assert fired_at > 1, "the quotas were met through the cycles, not by the first labels"
        pushed = batches(db)
        assert [n for n, _, _ in pushed] == list(range(1, fired_at)), "one batch per cycle"
        with store.session() as session:
            fired = stop_fired(
                session, int(project_row(session, pid).id or 0), policy=daemon.policy
            )
        assert len(fired) == 1
        assert "quota" in fired[0].reason.lower()

        # the stop holds: more cycles push nothing and emit nothing again
        again = daemon.cycle()
        assert again.pushed is None
        assert again.why.startswith("stopped")
        assert versions(artifacts) == ["v0001"], "exactly one artifact"
        assert batches(db) == pushed

        table = _store_table(store, pid)
        artifact = load_latest(artifacts)
        assert artifact.data["reason"]["trigger"] == "stop_rule"
        assert artifact.data["counts"] == table, "the artifact's counts are the store's"
        assert artifact.data["class_weights"]["schemes"]["balanced"]["weights"]
        assert artifact.data["resampling"]
        report = daemon.report()
    assert report is not None
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    _check_report(data, table)
    assert label_studio.token not in worker.read_text()


def _cycles_until_stopped(
    daemon: ProjectDaemon,
    store: Store,
    backend: LabelStudioWorkbench,
    truth: dict[int, int],
    tmp_path: Path,
) -> int | None:
    """Cycles, the annotator labelling each batch as the stream serves it, until one stops;
    that cycle's number. Before it no artifact exists; in it, exactly one is emitted."""
    artifacts, db = tmp_path / "artifacts", tmp_path / "planner.db"
    for cycle in range(1, MAX_CYCLES + 1):
        started = time.monotonic()
        outcome = daemon.cycle()
        print(f"cycle {cycle}: {outcome.why} in {time.monotonic() - started:.1f} s")
        met = _quotas_met(store, daemon.ls_project_id, daemon.quotas)
        if outcome.pushed is None:
            assert met, f"cycle {cycle} stopped with quotas unmet: {outcome.why}"
            assert outcome.why.startswith("stopped")
            assert versions(artifacts) == ["v0001"], "emitted when the rule fired"
            return cycle
        assert not met, "a batch is pushed only while a quota is short"
        assert versions(artifacts) == [], f"no artifact before the stop (cycle {cycle})"
        assert not daemon.stopped
        ranked = batch_items(db, outcome.pushed)
        assert len(ranked) == BATCH
        served = label_stream(backend, daemon.ls_project_id, truth, len(ranked))
        assert set(served) == set(ranked), "the stream serves the pushed batch"
    return None


def _check_report(data: dict[str, object], table: dict[str, dict[str, dict[str, int]]]) -> None:
    """Every count of the report's quota rows is the store's."""
    images = table["images"]
    rows = data["quotas"]
    assert isinstance(rows, list)
    assert rows
    seen = set()
    for row in rows:
        name, split, count = row["class_name"], row["split"], row["count"]
        expected = sum(images[s][name] for s in SPLITS) if split == "total" else images[split][name]
        assert count == expected, f"{name}/{split}: report {count}, store {expected}"
        seen.add(name)
    assert set(QUOTAS) <= seen
    assert data["all_met"] is True
