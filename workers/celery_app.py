"""The Celery application: a ``score`` queue for GPU work, the default queue for light work.

Tasks are thin (STYLE 7): a config dict, a project id and ``(task_id, image)`` pairs in, the
plain ``score_chunk`` called, a small summary out. Scores go to the store, never through the
result backend. ``acks_late``: a chunk whose worker process died (the OOM killer, a native
decoder crash) is sent again as a retry (``retry_on_worker_lost``), so ``max_retries`` bounds
a chunk that kills every process it runs in; one whose whole worker died is delivered again
after the broker's visibility timeout (see ``planner.settings.worker_time_limits`` for why it
must exceed twice the hard limit plus the longest retry wait). The
store's idempotent writes make a second run harmless.

Failures: a ``TransientError`` (a Label Studio timeout, a database gone for a moment) is
retried with exponential backoff up to ``max_retries`` times; a chunk running out of GPU
memory or past its soft time limit is retried once at half the batch size (what it already
wrote stays written, so the retry scores only the rest).

Secrets never travel in a task message (it sits in Redis): the worker takes the store
password and the Label Studio token from its own settings (``planner worker -c planner.toml``)
or environment (``celery -A workers.celery_app worker -Q score``, which reads the file named
by ``PLANNER_CONFIG`` and the ``PLANNER_*`` variables).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import fields, replace
from functools import cache
from pathlib import Path
from typing import Any

import torch
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from planner.errors import TransientError
from workers.config import OWN_FIELDS, BrokerConfig, WorkerConfig, WorkerOwn, chunk_items
from workers.devices import allow_decode_processes
from workers.scoring import Resources, halved, out_of_memory, score_chunk

SCORE_TASK = "workers.score_chunk"
SCORE_QUEUE = "score"
DEFAULT_QUEUE = "default"
_PATHS = ("weights", "model_dir", "image_root", "upload_root")
_TUPLES = ("classes", "allowed_hosts")
log = logging.getLogger("planner.workers")


def make_app(config: BrokerConfig, *, own: WorkerOwn | None = None) -> Celery:
    """A Celery app on ``config.broker_url`` with the scoring task registered; ``own``: the
    worker's secrets and pixel cache (the sending side needs neither)."""
    celery = Celery("planner-workers", broker=config.broker_url, backend=config.broker_url)
    transport = {"visibility_timeout": config.visibility_s}
    celery.conf.update(
        task_acks_late=True,
        # a lost child's chunk is retried under max_retries (Celery >= 5.7); the message is
        # put back as it is only should sending the retry fail (reject alone redelivered a
        # chunk that kills its process forever)
        task_retry_on_worker_lost=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        task_routes={SCORE_TASK: {"queue": SCORE_QUEUE}},
        task_time_limit=config.time_limit_s,
        task_soft_time_limit=config.soft_limit_s,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        # a chunk running when the broker connection is lost is stopped: its message goes
        # back to the queue (unacknowledged), and a second worker would run it alongside
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
    )
    resources = Resources()  # one per app: the worker process keeps its models between chunks
    own = own or WorkerOwn()

    def score(
        task: Task,
        cfg: dict[str, Any],
        project_id: int,
        items: list[list[Any]],
        batch_size: int | None = None,
    ) -> object:
        pairs = chunk_items(items)
        job = config_from_dict(cfg).with_own(own)
        if batch_size is not None:
            job = replace(job, batch_size=batch_size)
        retries = int(task.request.retries or 0)
        final = retries >= config.max_retries
        allow_decode_processes()  # a prefork child is a daemon
        try:
            result = score_chunk(job, project_id, pairs, resources=resources, final_attempt=final)
        except (SoftTimeLimitExceeded, torch.OutOfMemoryError) as exc:
            smaller = halved(job.batch_size)
            if batch_size is not None or smaller is None or final:
                raise  # already retried smaller once: the chunk fails with the reason
            what = "out of memory" if out_of_memory(exc) else "past its soft time limit"
            log.warning(
                "chunk %s %s at batch %d; retrying at %d",
                task.request.id,
                what,
                job.batch_size,
                smaller,
            )
            if out_of_memory(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise task.retry(
                args=(cfg, project_id, items), kwargs={"batch_size": smaller}, exc=exc, countdown=0
            ) from None
        delivery = task.request.delivery_info or {}
        done = replace(result, retries=retries, redelivered=bool(delivery.get("redelivered")))
        return done.as_dict()

    celery.task(
        name=SCORE_TASK,
        bind=True,
        shared=False,  # a shared task would be added to every app made later in this process
        autoretry_for=(TransientError, OperationalError, ConnectionError, TimeoutError),
        retry_backoff=config.retry_backoff_s,
        retry_backoff_max=config.retry_backoff_max_s,
        retry_jitter=True,
        max_retries=config.max_retries,
        # the wait before a lost chunk's retry (within the visibility rule's longest wait)
        default_retry_delay=min(config.retry_backoff_s, config.retry_backoff_max_s),
    )(score)
    return celery


def run_worker(
    config: BrokerConfig, queues: Sequence[str], *, own: WorkerOwn | None = None
) -> None:
    """Consume ``queues`` in this process until stopped (``planner worker --queues score``)."""
    names = ",".join(q.strip() for q in queues if q.strip()) or SCORE_QUEUE
    make_app(config, own=own).worker_main(
        [
            "worker",
            "-Q",
            names,
            "-c",
            str(config.concurrency),
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ]
    )


def config_to_dict(cfg: WorkerConfig) -> dict[str, Any]:
    """``cfg`` as JSON-able primitives, the form a task message carries: no secrets."""
    data = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in OWN_FIELDS}
    for key in _PATHS:
        if data[key] is not None:
            data[key] = str(data[key])
    for key in _TUPLES:
        data[key] = list(data[key])
    return data


def config_from_dict(data: dict[str, Any]) -> WorkerConfig:
    values = {key: value for key, value in data.items() if key not in OWN_FIELDS}
    for key in _PATHS:
        if values.get(key) is not None:
            values[key] = Path(values[key])
    for key in _TUPLES:
        values[key] = tuple(values.get(key, ()))
    return WorkerConfig(**values)


@cache
def _app_from_env() -> Celery:
    # imported here: building the app for the sending side needs no settings
    from planner.connect import broker_config, worker_own  # noqa: PLC0415
    from planner.settings import CONFIG_ENV, load_settings  # noqa: PLC0415

    path = os.environ.get(CONFIG_ENV)
    settings = load_settings(Path(path) if path else None)
    config = broker_config(settings, default_url=os.environ.get("REDIS_URL"))
    return make_app(config, own=worker_own(settings))


def __getattr__(name: str) -> Celery:
    # ``celery -A workers.celery_app`` and ``from workers.celery_app import app`` want a module
    # attribute; it is built on first use from the environment, not at import
    if name == "app":
        return _app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
