"""The simulated annotator of the live demo and the end-to-end test: it labels through the
Label Studio API with the true digit (the lease those cycles need is ``planner.daemon.run.
keep_lease``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.examples.digits import choice_result

log = logging.getLogger("planner.demo")


def label_tasks(bench: LabelStudioWorkbench, tasks: Sequence[int], truth: Mapping[int, int]) -> int:
    """The simulated annotator labels ``tasks`` with their true digit; how many."""
    for task in tasks:
        bench.annotate(task, choice_result(truth[task]))
    return len(tasks)


def label_stream(
    bench: LabelStudioWorkbench, pid: int, truth: Mapping[int, int], count: int
) -> list[int]:
    """The simulated annotator: opens the labelling stream ``count`` times and labels each
    task it is served with its true digit; the tasks labelled, in order."""
    done: list[int] = []
    for _ in range(count):
        task = bench.next_task(pid)
        if task is None:
            break
        bench.annotate(task, choice_result(truth[task]))
        done.append(task)
    return done
