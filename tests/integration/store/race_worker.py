"""One racing process for the store's concurrency tests, run as ``python -m``.

It gets ready, touches ``<folder>/ready-<name>``, waits for ``<folder>/go`` so that all racers
make their store call at the same moment, and prints the call's result as JSON: ``open`` opens
(migrates) the store and gives the revision it found; ``scores`` writes scores and gives how
many rows it inserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sqlalchemy import text

from planner.store import open_store, unscored, write_scores

_WAIT_S = 60.0
PATTERN = np.array([1.0, 2.0, 3.0], dtype=np.float32)
"""Racer ``i`` writes ``value * PATTERN`` for each task, so a row shows whose it is."""


def _wait_for_go(folder: Path, name: str) -> None:
    (folder / f"ready-{name}").touch()
    deadline = time.monotonic() + _WAIT_S
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            sys.exit(f"racer {name}: no go signal within {_WAIT_S}s")
        time.sleep(0.001)


def open_race(url: str, folder: Path, name: str) -> str:
    """Open a store (the first opener migrates it) when told to go; its Alembic revision."""
    _wait_for_go(folder, name)
    with open_store(url) as store, store.engine.connect() as connection:
        return str(connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one())


def score_race(
    url: str,
    folder: Path,
    name: str,
    *,
    project_id: int,
    version: str,
    ids: list[int],
    value: float,
    check_first: bool = False,
) -> int:
    """Write ``ids`` (in the given order) when told to go; the rows inserted."""
    with open_store(url) as store:
        _wait_for_go(folder, name)
        with store.session() as session:
            todo = ids
            if check_first:
                # the scoring worker's pattern: skip what is scored, write the rest, one session
                left = set(
                    unscored(session, project_id=project_id, model_version=version, task_ids=ids)
                )
                todo = [i for i in ids if i in left]
            probs = np.tile(PATTERN * np.float32(value), (len(todo), 1))
            return write_scores(
                session, project_id=project_id, model_version=version, task_ids=todo, probs=probs
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["open", "scores"])
    parser.add_argument("url")
    parser.add_argument("folder", type=Path)
    parser.add_argument("name")
    parser.add_argument("args", nargs="?", default="{}", help="JSON keyword arguments")
    ns = parser.parse_args()
    kwargs = json.loads(ns.args)
    if ns.action == "open":
        result: object = open_race(ns.url, ns.folder, ns.name, **kwargs)
    else:
        result = score_race(ns.url, ns.folder, ns.name, **kwargs)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
