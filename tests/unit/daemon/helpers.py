"""A digits project in the in-memory Label Studio, a SQLite store, and a daemon over them.

``TableScorer`` is the scorer port's in-memory stand-in for the rule tests: it writes the
probabilities a test chooses under a new model version per call, as the workers would.
The cycle tests use the real embedded scorer (``workers.dispatch.score_pool``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlmodel import select

from integrations.label_studio.fake import FakeLabelStudio
from planner.core.plan import PlanOptions
from planner.core.quotas import Quota
from planner.daemon.service import ProjectDaemon, Scorer
from planner.store import DatabaseLease, Store, write_scores
from planner.store.batches import current_batch, items_of
from planner.store.models import Project

DIGITS = "".join(f'<Choice value="{d}"/>' for d in range(10))
CONFIG = f"""<View><Image name="image" value="$image"/>
<Choices name="digit" toName="image">{DIGITS}</Choices></View>"""
CLASSES = tuple(str(d) for d in range(10))


def choice(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


@dataclass
class Project150:
    """150 digit tasks, the first ``labelled`` annotated with their true digit."""

    fake: FakeLabelStudio
    pid: int
    ids: list[int]
    targets: list[int]


def digits_project(targets: Sequence[int], *, labelled: int = 100, tasks: int = 150) -> Project150:
    fake = FakeLabelStudio()
    pid = fake.create_project("digits", CONFIG)
    data = [
        {
            "data": {
                "image": f"/data/local-files/?d=digits/{i:04d}.png",
                "time": "night" if i % 4 == 0 else "day",
            }
        }
        for i in range(tasks)
    ]
    ids = fake.import_tasks(pid, data)
    for k in range(labelled):
        fake.annotate(ids[k], choice(str(targets[k])))
    return Project150(fake, pid, ids, list(targets[:tasks]))


@dataclass
class TableScorer:
    """Writes ``probs(task_ids, call)`` under version ``m<call>``; ``calls`` counts them."""

    store: Store
    probs: Callable[[npt.NDArray[np.int64], int], npt.NDArray[np.float64]]
    calls: int = 0
    seen: list[list[int]] = field(default_factory=list)

    def __call__(self, project_id: int, items: Sequence[tuple[int, str]]) -> str:
        self.calls += 1
        ids = np.array([i for i, _ in items], dtype=np.int64)
        self.seen.append(ids.tolist())
        version = f"m{self.calls}"
        with self.store.session() as session:
            write_scores(
                session,
                project_id=project_id,
                model_version=version,
                task_ids=ids.tolist(),
                probs=self.probs(ids, self.calls),
            )
        return version


def by_task_id(ids: npt.NDArray[np.int64], _call: int) -> npt.NDArray[np.float64]:
    """The same confident prediction every call: class ``id % 10``."""
    probs = np.full((ids.size, len(CLASSES)), 0.02)
    probs[np.arange(ids.size), ids % len(CLASSES)] = 0.82
    return probs


def make_daemon(
    project: Project150,
    store: Store,
    quotas: Sequence[Quota],
    scorer: Scorer,
    *,
    holder: str = "first",
    **extra: Any,
) -> ProjectDaemon:
    extra.setdefault("backend", project.fake)
    return ProjectDaemon(
        store=store,
        ls_project_id=project.pid,
        quotas=quotas,
        scorer=scorer,
        lease=DatabaseLease(store.engine, f"project-{project.pid}", holder=holder),
        plan_options=PlanOptions(batch_size=10),
        **extra,
    )


def label_current_batch(project: Project150, store: Store, label: str | None = None) -> list[int]:
    """The simulated annotator labels every item of the open batch (``label``, or the truth)."""
    with store.session() as session:
        row = session.exec(select(Project).where(Project.ls_project_id == project.pid)).one()
        batch = current_batch(session, int(row.id or 0))
        assert batch is not None, "no open batch to label"
        tasks = [i.ls_task_id for i in items_of(session, int(batch.id or 0))]
    for task in tasks:
        truth = str(project.targets[project.ids.index(task)])
        project.fake.annotate(task, choice(label or truth))
    return tasks
