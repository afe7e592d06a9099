"""Fixtures of the fault suite: the real Label Studio behind a ``FaultProxy``, a digits project
on it, an in-process daemon over them, and what to compare after a fault.

The ``tally`` fixture and ``--fault-report`` are in ``tests/faults/tally.py`` (registered for
the whole test tree). The Label Studio fixtures are the integration suite's, shared here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from integrations.label_studio.client import LabelStudioBackend
from integrations.label_studio.launcher import ServerState
from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.core.plan import PlanOptions
from planner.core.quotas import Quota
from planner.daemon.service import ProjectDaemon
from planner.store import DatabaseLease, Store, open_store
from planner.store.models import Project, Task
from planner.sync import SyncOptions
from tests.faults.proxy import FaultProxy
from tests.integration.daemon.processes import LiveProject, digits_project, planner_predictions
from tests.integration.label_studio.conftest import backend, images, label_studio
from tests.unit.daemon.helpers import TableScorer, by_task_id, choice
from tests.unit.workers.conftest import digit_files, project

__all__ = ["backend", "digit_files", "images", "label_studio", "project"]


@pytest.fixture
def ls_proxy(label_studio: ServerState) -> Iterator[FaultProxy]:
    """The shared Label Studio as the daemon sees it: through a proxy that injects faults."""
    host, port = label_studio.url.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port.rstrip("/")))
    yield proxy
    proxy.close()


@pytest.fixture
def live(
    backend: LabelStudioWorkbench, label_studio: ServerState, images: Path, tmp_path: Path
) -> LiveProject:
    """30 digit tasks on the real Label Studio, the first 20 annotated."""
    return digits_project(backend, label_studio, images, tmp_path, tasks=30, labelled=20)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'faults.db'}") as opened:
        yield opened


@pytest.fixture
def daemon_backend(ls_proxy: FaultProxy, label_studio: ServerState) -> Iterator[LabelStudioBackend]:
    """The daemon's adapter, through the proxy, with a short timeout and no retries of its
    own (the daemon's backoff is what is tested)."""
    with LabelStudioBackend(ls_proxy.url, label_studio.token, timeout_s=2, attempts=1) as made:
        yield made


def make_daemon(
    live: LiveProject, store: Store, backend: LabelStudioBackend, **extra: Any
) -> ProjectDaemon:
    """The project daemon of ``planner run``, in this process, on a table scorer."""
    return ProjectDaemon(
        backend=backend,
        store=store,
        ls_project_id=live.pid,
        quotas=[Quota("7", target=60, criticality=3.0)],
        scorer=TableScorer(store, by_task_id),
        lease=DatabaseLease(store.engine, f"project-{live.pid}", holder="fault-suite"),
        plan_options=PlanOptions(batch_size=8),
        sync_options=SyncOptions(page_size=5),
        retry_backoff_base_s=0.3,
        retry_backoff_max_s=1.0,
        **extra,
    )


@dataclass(frozen=True, slots=True)
class Rig:
    """One test's project on the real Label Studio, its store, and the daemon's way in."""

    live: LiveProject
    store: Store
    backend: LabelStudioWorkbench
    """Straight to the server: the annotators' and the checks' view."""
    daemon_backend: LabelStudioBackend
    """Through the proxy: the daemon's view."""
    proxy: FaultProxy
    tmp_path: Path

    def daemon(self, **extra: Any) -> ProjectDaemon:
        return make_daemon(self.live, self.store, self.daemon_backend, **extra)

    def annotate(self, task: int) -> None:
        """The simulated annotator labels ``task`` with its true digit."""
        self.backend.annotate(task, choice(str(self.live.truth[task])))


@pytest.fixture
def rig(  # noqa: PLR0917 - fixtures are positional
    live: LiveProject,
    store: Store,
    backend: LabelStudioWorkbench,
    daemon_backend: LabelStudioBackend,
    ls_proxy: FaultProxy,
    tmp_path: Path,
) -> Rig:
    return Rig(live, store, backend, daemon_backend, ls_proxy, tmp_path)


@dataclass(frozen=True, slots=True)
class Comparison:
    """What Label Studio holds against what the planner's store holds."""

    lost: int
    """Annotations in Label Studio that the store does not know."""
    duplicates: int
    """Planner predictions beyond one per task (a batch pushed twice)."""


def compare(backend: LabelStudioWorkbench, store: Store, pid: int) -> Comparison:
    remote = {
        (task.id, int(a["id"]))
        for task in backend.iter_tasks(pid)
        for a in task.annotations
        if not a.get("was_cancelled")
    }
    with store.session() as session:
        project = session.exec(select(Project).where(Project.ls_project_id == pid)).first()
        rows = (
            []
            if project is None
            else session.exec(select(Task).where(Task.project_id == project.id)).all()
        )
        stored = {(t.ls_task_id, int(a)) for t in rows for a in t.annotation_ids}
    predictions = planner_predictions(backend, pid)
    return Comparison(
        lost=len(remote - stored), duplicates=len(predictions) - len(set(predictions))
    )
