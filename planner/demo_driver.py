"""Driving the daemon's cycles outside ``planner run``, for the live demo and the end-to-end
test: the leader lease kept in the background, and the simulated annotator who labels through
the Label Studio API with the true digit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from integrations.label_studio.workbench import LabelStudioWorkbench
from planner.daemon.leader import LeaderLease
from planner.daemon.run import HEARTBEAT_S
from planner.errors import PlannerError
from planner.examples.digits import choice_result

log = logging.getLogger("planner.demo")


@contextmanager
def keep_lease(lease: LeaderLease) -> Iterator[None]:
    """Renew the leader lease in the background, as ``planner run``'s main thread does: a
    cycle that scores for longer than the lease lasts would otherwise lose it before pushing.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                _ = lease.renew() if lease.held() else lease.acquire()
            except PlannerError as exc:  # the cycle checks the lease itself before it pushes
                log.warning("leader lease %s: %s", lease.name, exc)

    thread = threading.Thread(target=beat, name="planner-demo-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        lease.release()


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
