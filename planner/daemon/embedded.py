"""Heavy work of the daemon in a child process: scoring (torch) and the daily report (charts).

The daemon process must stay light: it never imports torch, and it never keeps matplotlib
loaded. Both jobs run in a fresh ``spawn`` child that imports what it needs, gets plain values
(a frozen config of strings, paths and numbers; task ids and image references) and returns
plain values; the child exits afterwards, so its memory goes back to the system. Errors come
back as the planner's own: a child that dies (killed, out of memory) is a ``TransientError``.
A scoring child that dies names the chunk it was on; ``ChunkDeaths`` remembers it, so a task
that kills every child is bounded (``workers.crashes``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from planner.errors import (
    AnnotationError,
    AuthError,
    ConfigError,
    InputError,
    LabelConfigError,
    PlannerError,
    TransientError,
)
from planner.outputs import ReportOptions, write_daily_report
from planner.store import open_store

if TYPE_CHECKING:
    from workers.config import WorkerConfig

log = logging.getLogger(__name__)
Outcome = tuple[str, Any]
"""What a child function returns: ``("ok", value)`` or ``("error", (class name, message))``."""
_ERRORS: dict[str, type[PlannerError]] = {
    cls.__name__: cls
    for cls in (
        PlannerError,
        ConfigError,
        AuthError,  # a revoked token: the daemon re-reads its token file and scores again
        InputError,
        LabelConfigError,
        AnnotationError,
        TransientError,
    )
}


class CancelledError(TransientError):
    """The daemon is shutting down: the child was stopped before it returned; nothing of its
    work was kept (scores and reports are written by the parent or atomically)."""


class ChildDiedError(TransientError):
    """The child died before it answered: killed (the OOM killer), or a crash in native code."""


@dataclass
class ChunkDeaths:
    """The tasks of the chunk each scoring child died on, cycle after cycle: ``suspects`` are
    those every one of the last ``deaths`` children died scoring."""

    suspects: frozenset[int] = frozenset()
    deaths: int = 0

    def died_on(self, task_ids: Iterable[int]) -> None:
        ids = frozenset(task_ids)
        if not ids:
            return  # it died between chunks: no chunk's doing
        common = self.suspects & ids
        self.suspects, self.deaths = (common, self.deaths + 1) if common else (ids, 1)

    def clear(self) -> None:
        self.suspects, self.deaths = frozenset(), 0


class ChildGroup:
    """The children one daemon runs; ``cancel`` stops them all, so a shutdown need not wait
    for a long scoring run (nothing is pushed from a scoring that did not finish)."""

    def __init__(self) -> None:
        self._live: set[BaseProcess] = set()
        self._lock = threading.Lock()
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def start(self, process: BaseProcess, name: str) -> None:
        with self._lock:
            if self._cancelled:
                raise CancelledError(f"the daemon is stopping: {name} not started")
            process.start()
            self._live.add(process)

    def done(self, process: BaseProcess) -> None:
        with self._lock:
            self._live.discard(process)

    def cancel(self) -> int:
        """Stop every running child (SIGTERM, then SIGKILL) and refuse new ones; how many."""
        with self._lock:
            self._cancelled = True
            live = list(self._live)
        for process in live:
            process.terminate()
        for process in live:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        return len(live)


def run_in_child(
    function: Callable[..., Outcome], *args: Any, group: ChildGroup | None = None
) -> Any:
    """``function(*args)`` in a fresh spawned process; ``function`` is module-level, takes
    picklable plain values and returns an ``Outcome`` (see ``_guarded``). With ``group``, the
    group's ``cancel`` stops it (``CancelledError``)."""
    name = getattr(function, "__name__", "worker")
    group = group or ChildGroup()
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, function, args), daemon=True)
    try:
        group.start(process, name)
    finally:
        sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:  # the child died before it answered: killed, out of memory, cancelled
        process.join()
        if group.cancelled:
            raise CancelledError(f"the daemon is stopping: {name} stopped") from None
        code = process.exitcode
        raise ChildDiedError(f"the {name} child process died (exit code {code})") from None
    finally:
        receiver.close()
        group.done(process)
    process.join()
    if status == "ok":
        return payload
    kind, message = payload
    raise _ERRORS.get(kind, PlannerError)(message)


def _child_main(
    sender: Connection, function: Callable[..., Outcome], args: tuple[Any, ...]
) -> None:
    try:
        outcome = function(*args)
    except Exception as exc:
        log.exception("the %s child failed", getattr(function, "__name__", "worker"))
        outcome = ("error", ("PlannerError", f"{type(exc).__name__}: {exc}"))
    sender.send(outcome)
    sender.close()


def _guarded(work: Callable[[], object]) -> Outcome:
    """Run ``work`` in the child; planner errors travel back by class name and message."""
    try:
        return ("ok", work())
    except PlannerError as exc:
        known = next(c.__name__ for c in type(exc).__mro__ if c.__name__ in _ERRORS)
        return ("error", (known, str(exc)))


# -- scoring --------------------------------------------------------------------------------
def score_pool_in_child(
    cfg: WorkerConfig,
    project_id: int,
    items: Sequence[tuple[int, str | None]],
    *,
    group: ChildGroup | None = None,
    deaths: ChunkDeaths | None = None,
) -> SimpleNamespace:
    """``workers.dispatch.score_pool`` in a child process; its ``PoolResult`` as attributes.
    A task without an image (None) is recorded as having no image reference. ``deaths``: the
    chunks earlier children died on (keep one per project between cycles); updated here."""
    from workers.config import chunk_items  # noqa: PLC0415 - the workers' package, lazily

    pairs = chunk_items(items)
    deaths = ChunkDeaths() if deaths is None else deaths
    with tempfile.TemporaryDirectory(prefix="planner-scoring-") as folder:
        progress = Path(folder) / "chunk.json"  # the child writes the chunk it is on
        try:
            fields: dict[str, Any] = run_in_child(
                _score_pool, cfg, int(project_id), pairs, progress, deaths, group=group
            )
        except ChildDiedError:
            if progress.is_file():
                deaths.died_on(json.loads(progress.read_text(encoding="utf-8")))
            raise
    deaths.clear()
    return SimpleNamespace(**fields)


def _score_pool(
    cfg: WorkerConfig,
    project_id: int,
    items: list[tuple[int, str]],
    progress: Path,
    deaths: ChunkDeaths,
) -> Outcome:
    def work() -> dict[str, Any]:
        from workers.crashes import Crashes  # noqa: PLC0415
        from workers.devices import allow_decode_processes  # noqa: PLC0415
        from workers.dispatch import score_pool  # noqa: PLC0415 - torch, in the child only

        def on_chunk(task_ids: list[int]) -> None:
            progress.write_text(json.dumps(task_ids), encoding="utf-8")

        allow_decode_processes()  # this child is a daemon: it goes when the daemon goes
        crashes = Crashes(deaths.suspects, deaths.deaths, on_chunk)
        return dataclasses.asdict(score_pool(cfg, project_id, items, crashes=crashes))

    return _guarded(work)


# -- the daily report -----------------------------------------------------------------------
def report_in_child(
    store_url: str,
    password: str | None,
    ls_project_id: int,
    options: ReportOptions,
    now: datetime,
    *,
    group: ChildGroup | None = None,
) -> Path:
    """``planner.outputs.write_daily_report`` in a child process (charts load matplotlib)."""
    folder: str = run_in_child(
        _report, store_url, password, int(ls_project_id), options, now, group=group
    )
    return Path(folder)


def _report(
    store_url: str, password: str | None, ls_project_id: int, options: ReportOptions, now: datetime
) -> Outcome:
    def work() -> str:
        with open_store(store_url, password=password) as store:
            return str(write_daily_report(store, ls_project_id, options, now=now))

    return _guarded(work)
