"""Real processes racing on one store, on a SQLite file and on the real PostgreSQL.

Each racer (``race_worker``) gets ready, then all make their store call at the same moment:
opening (migrating) a fresh database, as the daemon, workers and dashboard do when they start
together; writing a score chunk, as when a broker redelivers a chunk to a second worker while
the first still runs. (Lease races run in ``tests/unit/store/test_lease.py``, in threads.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from planner.store import Store, ensure_project, load_scores, open_store
from planner.store.db import MIGRATIONS
from planner.store.models import ScoreRecord
from tests.integration.store.race_worker import PATTERN

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = "tests.integration.store.race_worker"
ROOT = Path(__file__).resolve().parents[3]
RACERS = 3
_START_S = 120.0


def _race(tmp_path: Path, action: str, url: str, args: Sequence[dict[str, Any]]) -> list[Any]:
    """Run one racer per entry of ``args``, release them together, return their results."""
    folder = tmp_path / f"race-{action}"
    folder.mkdir()
    names = [f"racer{i}" for i in range(len(args))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", WORKER, action, url, str(folder), name, json.dumps(arg)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, arg in zip(names, args, strict=True)
    ]
    try:
        deadline = time.monotonic() + _START_S
        while not all((folder / f"ready-{n}").exists() for n in names):
            crashed = [p for p in procs if p.poll() not in (None, 0)]
            assert not crashed, crashed[0].communicate()[1]
            assert time.monotonic() < deadline, "the racers did not get ready in time"
            time.sleep(0.01)
        (folder / "go").touch()
        outputs = [p.communicate(timeout=_START_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, f"a racer failed:\n{err[-3000:]}"
        assert out.strip(), f"a racer printed nothing:\n{err}"
    return [json.loads(out) for out, _ in outputs]


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.dispose()


def test_processes_opening_a_fresh_database_together_migrate_it_once(
    store_url: str, tmp_path: Path
) -> None:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert _race(tmp_path, "open", store_url, [{}] * RACERS) == [head] * RACERS
    with open_store(store_url) as store, store.engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        tables = set(inspect(connection).get_table_names())
    assert versions == [(head,)]
    assert {"project", "task", "scorerecord", "batchitem", "lease"} <= tables


def _project(store: Store) -> int:
    with store.session() as session:
        return int(ensure_project(session, ls_project_id=11).id or 0)


def _rows(store: Store, version: str) -> int:
    with store.session() as session:
        query = select(func.count()).select_from(ScoreRecord)
        return int(session.execute(query.where(ScoreRecord.model_version == version)).scalar_one())


def test_a_chunk_delivered_to_several_workers_at_once_is_stored_once(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    pid = _project(store)
    ids = list(range(1, 3001))
    args = [
        {"ids": ids, "value": (i + 1) / 8, "version": "m1", "project_id": pid}
        for i in range(RACERS)
    ]
    inserted = _race(tmp_path, "scores", store_url, args)
    assert sum(inserted) == len(ids)
    assert _rows(store, "m1") == len(ids)
    with store.session() as session:
        scores = load_scores(session, project_id=pid, model_version="m1")
    assert scores.task_ids.tolist() == ids
    # each row is one racer's, whole: no task mixes two racers' numbers
    values = scores.probs[:, :1] / PATTERN[0]
    np.testing.assert_allclose(scores.probs, values * PATTERN)
    assert set(np.round(values.ravel(), 3)) <= {a["value"] for a in args}


def test_overlapping_chunks_in_any_order_do_not_fail(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """Two workers whose chunks overlap, listed in opposite orders (a deadlock risk)."""
    pid = _project(store)
    ids = list(range(1, 20001))  # long enough that the two writers meet half way
    args = [
        {"ids": ids, "value": 0.25, "version": "m2", "project_id": pid},
        {"ids": ids[::-1], "value": 0.75, "version": "m2", "project_id": pid},
    ]
    inserted = _race(tmp_path, "scores", store_url, args)
    assert sum(inserted) == len(ids)
    assert _rows(store, "m2") == len(ids)


def test_workers_that_check_then_write_in_one_session_do_not_fail(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """``unscored`` then ``write_scores`` in one session, the way a scoring worker runs."""
    pid = _project(store)
    ids = list(range(1, 2001))
    args = [
        {"ids": ids, "value": (i + 1) / 8, "version": "m3", "project_id": pid, "check_first": True}
        for i in range(RACERS)
    ]
    inserted = _race(tmp_path, "scores", store_url, args)
    assert sum(inserted) == len(ids)
    assert _rows(store, "m3") == len(ids)
