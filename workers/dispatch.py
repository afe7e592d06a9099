"""Scoring a pool: split into chunks, run them in-process or as a Celery group.

The pool is scored by one model: the watched folder's choice is made once, before the chunks
go out. The bootstrap network can still change between chunks (enough labels arrived while
the pool was scored); the chunks that used another version are then run again, skipping what
the newest version already has, until every chunk agrees on the version it names.

A chunk that fails for a reason of its own (an image that crashes the model, a worker process
that died on it too often) does not sink the pool: the other chunks' scores are pushed, the
failure is a warning of the ``PoolResult``, and the failed chunk's items, which have no score
row, are scored again next cycle. What no chunk could get past (a missing model, a rejected
token, the store or the GPU gone) still fails the whole pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from celery import Celery, group
from celery.result import GroupResult
from kombu import pools
from sqlalchemy.exc import OperationalError

from planner.core.backoff import backoff_s
from planner.errors import ConfigError, PlannerError, TransientError
from workers.batches import chunked
from workers.celery_app import SCORE_TASK, config_to_dict, make_app
from workers.config import BrokerConfig, WorkerConfig
from workers.crashes import Crashes, prepare_chunk, with_given_up
from workers.scoring import (
    ChunkDeferredError,
    ChunkResult,
    Resources,
    halved,
    out_of_memory,
    pin_model,
    score_chunk,
)

log = logging.getLogger("planner.workers")
ROUNDS = 3
"""Passes over the pool until all chunks name one model version (see the module)."""
POLL_S = 0.5
"""How often the sender looks at a Celery pool's progress."""
PING_EVERY_S = 10.0
NO_WORKER_S = 60.0
"""A Celery pool is given up when no worker has answered a ping for this long."""
POOL_WIDE = (
    ConfigError,
    TransientError,
    OperationalError,
    ConnectionError,
    TimeoutError,
    MemoryError,
    torch.OutOfMemoryError,
)
"""Errors that would fail every chunk alike (a setting, a service down for longer than the
retries, memory): embedded, the pool stops at the first. Any other error is the chunk's own."""
SHOWN_ERRORS = 3
"""Distinct errors of failed chunks a pool's warning quotes."""


@dataclass(frozen=True, slots=True)
class PoolResult:
    """``model_version``: the version every item of the pool now has a score for (empty for
    an empty pool); ``model_versions``: every version a chunk used, in the order met."""

    chunks: int
    scored: int
    unscorable: int
    skipped: int
    model_version: str
    model_versions: tuple[str, ...] = ()
    deferred: int = 0
    written: int = 0
    redelivered: int = 0
    retries: int = 0
    warnings: tuple[str, ...] = ()
    failed: int = 0


@dataclass(frozen=True, slots=True)
class Pass:
    """One pass over the pool's chunks: what the chunks that finished did, and the errors of
    those that failed for good (their items stay unscored)."""

    results: list[ChunkResult]
    errors: list[BaseException]


def score_pool(
    cfg: WorkerConfig,
    project_id: int,
    items: Sequence[tuple[int, str]],
    *,
    timeout_s: float | None = None,
    resources: Resources | None = None,
    sleep: Callable[[float], None] = time.sleep,
    now_s: float | None = None,
    crashes: Crashes | None = None,
) -> PoolResult:
    """Score ``items``; with no broker configured, in this process (the embedded default).

    Only items without a score for the current model version are scored. A chunk that fails
    for good is left unscored, counted in ``failed`` and described in a warning; the pool
    fails only when no chunk finished, or embedded at an error of ``POOL_WIDE``. Embedded, a
    chunk failing with a ``TransientError`` is retried ``cfg.max_retries`` times with backoff,
    and one running out of GPU memory once with half the batch, as the Celery task is; pass
    ``resources`` to keep loaded models between calls. ``now_s``: the clock for the model
    folder's settle time (``time.time()`` when None). ``crashes``: embedded, the tasks earlier
    scoring processes died on (``workers.crashes``).

    Through Celery the wait has no fixed end while chunks keep finishing: it gives up
    (``TransientError``) when none has finished for ``timeout_s`` (``cfg.stall_s`` when
    None), or sooner when no worker answers a ping for ``NO_WORKER_S``.
    """
    pinned, notes = pin_model(cfg, now_s=now_s)
    chunks = chunked(items, cfg.chunk_size)
    own = resources or Resources()
    rounds: list[list[ChunkResult]] = []
    errors: list[BaseException] = []
    try:
        todo = chunks
        while todo:
            if pinned.broker_url is None:
                done = _embedded_pass(
                    pinned, project_id, todo, own, sleep, crashes=crashes or Crashes()
                )
            else:
                stall = pinned.stall_s if timeout_s is None else timeout_s
                done = _through_celery(pinned, project_id, todo, stall, sleep)
            if done.errors and not done.results:
                raise done.errors[0]  # nothing to push: the cycle fails with the first reason
            results, errors = done.results, done.errors
            rounds.append(results)
            versions = [r.model_version for r in results]
            if len(set(versions)) <= 1:
                break
            if len(rounds) == ROUNDS:
                raise TransientError(
                    f"the model changed under every one of {ROUNDS} passes over the pool "
                    f"({', '.join(sorted(set(versions)))}); scoring is tried again next cycle"
                )
            log.info("chunks used %s; scoring the pool again with one", sorted(set(versions)))
            todo = chunks
    finally:
        if resources is None:
            own.close()
    result = settle(len(chunks), rounds)
    failures = (failed_warning(len(chunks), errors),) if errors else ()
    warnings = tuple(dict.fromkeys((*notes, *result.warnings, *failures)))
    return replace(result, warnings=warnings, failed=len(errors))


def failed_warning(chunks: int, errors: Sequence[BaseException]) -> str:
    """The warning of a pool some of whose chunks failed, quoting their first few reasons."""
    reasons = list(dict.fromkeys(f"{type(e).__name__}: {e}" for e in errors))
    more = len(reasons) - SHOWN_ERRORS
    return (
        f"{len(errors)} of {chunks} chunk(s) failed and were left unscored, scored again next "
        f"cycle: {'; '.join(reasons[:SHOWN_ERRORS])}"
        + (f" (and {more} other errors)" if more > 0 else "")
    )


def settle(chunks: int, rounds: Sequence[Sequence[ChunkResult]]) -> PoolResult:
    """The pool's totals under the last pass's version (all earlier passes' work under that
    version counted as scored, not skipped)."""
    if not rounds or not rounds[-1]:
        return PoolResult(chunks, 0, 0, 0, "")
    last = rounds[-1]
    version = last[0].model_version
    every = [r for results in rounds for r in results]
    mine = [r for r in every if r.model_version == version]
    earlier = [r for results in rounds[:-1] for r in results if r.model_version == version]
    done_before = sum(r.scored + r.unscorable for r in earlier)
    return PoolResult(
        chunks=chunks,
        scored=sum(r.scored for r in mine),
        unscorable=sum(r.unscorable for r in mine),
        skipped=sum(r.skipped for r in last) - done_before,
        model_version=version,
        model_versions=tuple(dict.fromkeys(r.model_version for r in every)),
        deferred=sum(r.deferred for r in last),
        written=sum(r.written for r in mine),
        redelivered=sum(r.redelivered for r in every),
        retries=sum(r.retries for r in every),
        warnings=tuple(dict.fromkeys(w for r in every for w in r.warnings)),
    )


def _embedded_pass(
    cfg: WorkerConfig,
    project_id: int,
    chunks: list[list[tuple[int, str]]],
    resources: Resources,
    sleep: Callable[[float], None],
    *,
    crashes: Crashes,
) -> Pass:
    done = Pass([], [])
    for chunk in chunks:
        try:
            job, given_up = prepare_chunk(cfg, project_id, chunk, crashes, resources)
            result = _embedded(job, project_id, chunk, resources, sleep)
        except POOL_WIDE:
            raise
        except Exception as exc:
            log.exception("a chunk of %d items failed; going on with the next", len(chunk))
            done.errors.append(exc)
            continue
        done.results.append(with_given_up(result, given_up, crashes.deaths))
    if crashes.on_chunk is not None:
        crashes.on_chunk([])  # no chunk in progress: a death now is no chunk's doing
    return done


def _embedded(
    cfg: WorkerConfig,
    project_id: int,
    chunk: list[tuple[int, str]],
    resources: Resources,
    sleep: Callable[[float], None],
) -> ChunkResult:
    attempt, scored, unscorable, shrunk = 0, 0, 0, False
    while True:
        final = attempt >= cfg.max_retries
        try:
            result = score_chunk(cfg, project_id, chunk, resources=resources, final_attempt=final)
        except TransientError as exc:
            if final:
                raise
            if isinstance(exc, ChunkDeferredError):  # what the failed attempt wrote still counts
                scored, unscorable = scored + exc.scored, unscorable + exc.unscorable
            attempt += 1
            wait = backoff_s(attempt, cfg.retry_backoff_s, cfg.retry_backoff_max_s)
            log.warning(
                "chunk of %d items: %s; attempt %d in %.0f s", len(chunk), exc, attempt + 1, wait
            )
            sleep(wait)
            continue
        except Exception as exc:
            smaller = halved(cfg.batch_size)
            if not out_of_memory(exc) or shrunk or smaller is None:
                raise
            log.warning("out of memory at batch %d; retrying with %d", cfg.batch_size, smaller)
            cfg, shrunk, attempt = replace(cfg, batch_size=smaller), True, attempt + 1
            continue
        return replace(
            result,
            scored=result.scored + scored,
            unscorable=result.unscorable + unscorable,
            skipped=result.skipped - scored - unscorable,
            retries=attempt,
        )


def _through_celery(
    cfg: WorkerConfig,
    project_id: int,
    chunks: list[list[tuple[int, str]]],
    stall_s: float,
    sleep: Callable[[float], None],
) -> Pass:
    if cfg.broker_url is None:
        raise ConfigError("scoring through Celery needs workers.broker_url")
    # the sending side only names the task and the queue; the worker's own app holds the
    # limits, retries and secrets
    celery = make_app(BrokerConfig(broker_url=cfg.broker_url))
    task = celery.tasks[SCORE_TASK]
    payload = config_to_dict(cfg)
    # a message's own time limits override the worker's; send none, so the worker's
    # settings decide (the sending app's defaults would otherwise travel with every chunk)
    unlimited = {"time_limit": None, "soft_time_limit": None}
    job = group(
        task.s(payload, project_id, [list(i) for i in chunk]).set(**unlimited) for chunk in chunks
    )
    outcome = job.apply_async(queue=cfg.queue)
    try:
        _await(celery, outcome, len(chunks), stall_s, broker=cfg.broker_url, sleep=sleep)
        done = Pass([], [])
        # each chunk on its own: one that failed must not discard what the others scored
        for chunk in outcome.results:
            if chunk.successful():
                done.results.append(ChunkResult.from_dict(chunk.result))
            else:
                error = chunk.result
                if not isinstance(error, BaseException):
                    error = PlannerError(f"the chunk ended {chunk.state}")
                done.errors.append(error)
    finally:
        outcome.forget()
        celery.close()
        # kombu's process-wide pools outlive the app; a channel of one left waiting on a
        # reply would make every process forked later (decode processes) block for good on
        # the shared socket as kombu's after-fork hook closes it: closed here instead
        pools.reset()  # type: ignore[no-untyped-call]
    for error in done.errors:
        log.warning("a chunk failed on its worker: %s: %s", type(error).__name__, error)
    return done


def _await(
    celery: Celery,
    outcome: GroupResult,
    chunks: int,
    stall_s: float,
    *,
    broker: str,
    sleep: Callable[[float], None],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Until every chunk of ``outcome`` has finished; ``TransientError`` once none has for
    ``stall_s``, or no worker has answered a ping for ``NO_WORKER_S``."""
    progress_at = answered_at = pinged_at = clock()
    finished = 0
    while not outcome.ready():
        now = clock()
        done = outcome.completed_count()
        if done > finished:
            finished, progress_at = done, now
        if now - pinged_at >= PING_EVERY_S:
            pinged_at = now
            if celery.control.ping(timeout=1.0):
                answered_at = now
        if now - answered_at >= NO_WORKER_S:
            raise TransientError(
                f"no Celery worker answers on {broker} ({finished} of {chunks} chunk(s) "
                f"done); start one (`planner worker --queues score`), the rest is scored then"
            )
        if now - progress_at >= stall_s:
            raise TransientError(
                f"no chunk finished in {stall_s:.0f} s ({finished} of {chunks} done) though "
                "workers answer; see the workers' logs; the rest is scored next cycle"
            )
        sleep(POLL_S)
