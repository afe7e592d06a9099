"""`planner cycle --once` against the real Label Studio: one cycle through the daemon's code
pushes a batch Label Studio serves; a second one while that batch is open pushes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from integrations.label_studio.launcher import ServerState
from integrations.label_studio.mapping import RANK_FIELD, rank_value
from integrations.label_studio.workbench import LabelStudioWorkbench
from tests.integration.daemon.processes import (
    PLANNER,
    LiveProject,
    batch_items,
    batches,
    digits_project,
    next_batch_view,
    planner_predictions,
    store_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cycle(project: LiveProject, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PLANNER, "cycle", "--once", "-c", str(project.config), *extra],
        env=project.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=400,
    )


def test_cycle_once_pushes_one_batch_and_not_again_while_it_is_open(
    label_studio: ServerState, backend: LabelStudioWorkbench, images: Path, tmp_path: Path
) -> None:
    project = digits_project(backend, label_studio, images, tmp_path)
    first = _cycle(project, "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    done = json.loads(first.stdout)
    tag = done["pushed"]
    assert tag, done
    assert done["why"] == "pushed"
    assert done["model_version"]
    assert done["sync"]["quarantined"] == []
    assert store_rows(project.db, "SELECT count(*) FROM task") == [(120,)], "synced first"
    assert done["stop"]["should_stop"] is False
    batch = done["batch"]
    assert (batch["tag"], batch["size"], batch["done"]) == (tag, 8, 0.0)
    assert "7" in [t["class"] for t in batch["targets"]], "the class short of its quota"
    assert sum(batch["reasons"].values()) == 8

    ranked = batch_items(project.db, tag)
    assert len(ranked) == 8
    assert set(ranked) <= set(project.ids[80:]), "only unlabelled tasks"
    assert sorted(planner_predictions(backend, project.pid)) == sorted((t, tag) for t in ranked)
    assert next_batch_view(backend, project.pid) == ranked
    ranks = [backend.sdk.tasks.get(id=task).data[RANK_FIELD] for task in ranked]
    assert ranks == [rank_value(k) for k in range(1, 9)]
    assert backend.next_task(project.pid) == ranked[0]

    second = _cycle(project)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "no batch pushed" in second.stdout
    assert f"batch {tag} is 0% labelled" in second.stdout
    assert "--force" in second.stdout
    assert [b[1] for b in batches(project.db)] == [tag], "one batch in the store"
    assert sorted(planner_predictions(backend, project.pid)) == sorted((t, tag) for t in ranked)
    assert label_studio.token not in first.stdout + first.stderr + second.stdout + second.stderr
