"""Two `planner run` processes on one project against the real Label Studio: each batch is
pushed once, and when the leader is killed the standby takes over.

With the database lease the two share a SQLite store; with ``workers.broker_url`` they take
the Redis lease and score through a real `celery worker`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from integrations.label_studio.launcher import ServerState
from integrations.label_studio.workbench import LabelStudioWorkbench
from tests.integration.daemon.processes import (
    PLANNER,
    LiveProject,
    batch_items,
    batches,
    digits_project,
    kill,
    label,
    planner_predictions,
    start_daemon,
    store_rows,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/11"
SETTLE_S = 8.0
"""Several sync periods: long enough for a second push, had either daemon made one."""


def _leader_pid(project: LiveProject, lease: str) -> int | None:
    """The process id in the lease holder's name (``host-pid-suffix``)."""
    name = f"project-{project.pid}"
    if lease == "redis":
        value = redis.Redis.from_url(REDIS).get(f"planner:leader:{name}")
        holder = value.decode() if value else None
    else:
        rows = store_rows(project.db, "SELECT holder FROM lease WHERE name = :n", n=name)
        holder = str(rows[0][0]) if rows else None
    return None if holder is None else int(holder.rsplit("-", 2)[1])


def _pushed_once(
    backend: LabelStudioWorkbench, project: LiveProject, count: int, logs: list[Path]
) -> str:
    """Waits for batch ``count``, lets the daemons run on, and checks it was the only push."""
    wait_for(
        f"batch {count}",
        lambda: len(batches(project.db)) >= count and batches(project.db)[-1][2] == "active",
        logs,
        240,
    )
    time.sleep(SETTLE_S)
    found = batches(project.db)
    assert [n for n, _, _ in found] == list(range(1, count + 1)), f"one batch per cycle: {found}"
    tag = found[-1][1]
    ranked = batch_items(project.db, tag)
    assert len(ranked) == 8
    on_server = planner_predictions(backend, project.pid)
    assert sorted(on_server) == sorted((t, tag) for t in ranked), "one prediction per task"
    return tag


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        kill(proc, signal.SIGTERM)


@pytest.mark.parametrize("lease", ["database", "redis"])
def test_two_daemons_push_each_batch_once_and_the_standby_takes_over(  # noqa: PLR0917
    label_studio: ServerState,
    backend: LabelStudioWorkbench,
    images: Path,
    tmp_path: Path,
    celery_worker: list[subprocess.Popen[bytes]],
    lease: str,
) -> None:
    extra = ""
    if lease == "redis":
        redis.Redis.from_url(REDIS).flushdb()
        extra = f'broker_url = "{REDIS}"\n'
    project = digits_project(backend, label_studio, images, tmp_path, tasks=140, workers=extra)
    logs = [tmp_path / "a.log", tmp_path / "b.log", tmp_path / "worker.log"]
    if lease == "redis":
        with logs[2].open("ab") as out:
            celery_worker.append(
                subprocess.Popen(
                    [PLANNER, "worker", "-c", str(project.config), "--queues", "score"],
                    env=project.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    daemons = {p.pid: p for p in (start_daemon(project, logs[0]), start_daemon(project, logs[1]))}
    try:
        first = _pushed_once(backend, project, 1, logs)
        label(backend, project, batch_items(project.db, first))
        second = _pushed_once(backend, project, 2, logs)
        leader = wait_for("a leader", lambda: _leader_pid(project, lease), logs, 30)
        assert leader in daemons, f"the lease names a process of this test ({leader})"
        assert kill(daemons.pop(leader)) == -signal.SIGKILL
        (standby,) = daemons.values()
        label(backend, project, batch_items(project.db, second))
        third = _pushed_once(backend, project, 3, logs)  # the standby, after the lease ran out
        assert _leader_pid(project, lease) == standby.pid
        assert third not in (first, second)
        assert kill(standby, signal.SIGTERM) == 0
    finally:
        for proc in daemons.values():
            kill(proc)
    assert label_studio.token not in "".join(p.read_text() for p in logs if p.exists())
