"""Tasks the embedded scoring process died on: scored one image a batch, then given up.

In-process scoring runs in a child of the daemon (``planner.daemon.embedded``). One image that
kills that process (a crash in a native decoder, the OOM killer at a large batch) would kill
it at the same chunk every cycle, and no batch would be pushed again. The child says which
chunk it is scoring (``Crashes.on_chunk``); when it died, the daemon hands those tasks to the
next child as suspects. A chunk holding one is then scored one image a batch, in its order (no
decode processes reading ahead, no pixel cache reordering it), so what precedes the culprit is
stored and the culprit is the first suspect left unscored. Once a child has died on them
``GIVE_UP_AFTER`` times in a row, that one task is recorded unscorable for the model version,
with the reason, and the rest of the chunk is scored (a task after it that kills the process
too is given up at the next death; a new model version tries them again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from planner.store.scores import unscored, write_scores
from workers.config import WorkerConfig
from workers.scoring import ChunkResult, Resources, current_model

log = logging.getLogger("planner.workers")
GIVE_UP_AFTER = 3
"""Deaths of the scoring process on the same tasks before they are recorded unscorable."""


@dataclass(frozen=True, slots=True)
class Crashes:
    """What earlier scoring processes died on: ``suspects`` (task ids) and how many times in a
    row (``deaths``); ``on_chunk`` hears each chunk's task ids before it is scored."""

    suspects: frozenset[int] = frozenset()
    deaths: int = 0
    on_chunk: Callable[[list[int]], None] | None = None


def prepare_chunk(
    cfg: WorkerConfig,
    project_id: int,
    chunk: Sequence[tuple[int, str]],
    crashes: Crashes,
    resources: Resources,
) -> tuple[WorkerConfig, list[int]]:
    """The config to score ``chunk`` with (one image a batch where it holds a suspect), and the
    suspects given up instead: recorded unscorable, so the chunk skips them."""
    if crashes.on_chunk is not None:
        crashes.on_chunk([task_id for task_id, _ in chunk])
    suspects = [item for item in chunk if item[0] in crashes.suspects]
    if not suspects:
        return cfg, []
    one_by_one = replace(cfg, batch_size=1, num_workers=0, pixel_cache_mb=0, write_rows=1)
    if crashes.deaths < GIVE_UP_AFTER:
        log.warning(
            "the scoring process died %d time(s) on a chunk of these tasks; scoring it one "
            "image a batch",
            crashes.deaths,
        )
        return one_by_one, []
    return one_by_one, record_crashed(cfg, project_id, suspects, resources, crashes.deaths)


def with_given_up(result: ChunkResult, given_up: list[int], deaths: int) -> ChunkResult:
    """``result`` counting the tasks given up before it ran as unscorable, not skipped, with
    a warning naming them."""
    if not given_up:
        return result
    warning = (
        f"{len(given_up)} task(s) recorded unscorable: the scoring process died on them "
        f"{deaths} times (tasks {given_up[:10]})"
    )
    return replace(
        result,
        unscorable=result.unscorable + len(given_up),
        skipped=result.skipped - len(given_up),
        warnings=(*result.warnings, warning),
    )


def record_crashed(
    cfg: WorkerConfig,
    project_id: int,
    items: Sequence[tuple[int, str]],
    resources: Resources,
    deaths: int,
) -> list[int]:
    """Record the first task of ``items`` (in their order) not yet scored by the current
    model as unscorable, for killing the scoring process: its id, or none."""
    model = current_model(cfg, project_id, resources)
    wanted = dict(items)
    reason = f"the scoring process died on it {deaths} times; the next model version retries it"
    with resources.store(cfg).session() as session:
        left = set(
            unscored(
                session, project_id=project_id, model_version=model.version, task_ids=list(wanted)
            )
        )
        todo = [task_id for task_id in wanted if task_id in left][:1]
        write_scores(
            session,
            project_id=project_id,
            model_version=model.version,
            task_ids=[],
            probs=None,
            unscorable=dict.fromkeys(todo, reason),
            images=wanted,
        )
    return todo
