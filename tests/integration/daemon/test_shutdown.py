"""``planner run`` stopping while Redis, which holds its leader lease, is down: the lease is
not released (it runs out by itself) and everything else is still closed, with no error."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import event
from sqlalchemy.engine import Engine

from integrations.label_studio.client import LabelStudioBackend
from planner.daemon import run
from planner.settings import Settings
from planner.store import Store
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.integration
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_proxy() -> Iterator[FaultProxy]:
    client = redis.Redis.from_url(REDIS_URL)
    address = client.connection_pool.connection_kwargs
    client.close()
    proxy = FaultProxy(str(address["host"]), int(address["port"]))
    yield proxy
    proxy.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_lease_redis_cannot_release_still_closes_everything_and_exits_cleanly(
    redis_proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_planner_env: None,
) -> None:
    monkeypatch.setattr(run, "HEARTBEAT_S", 0.05)
    project_id = 900_000 + uuid.uuid4().int % 100_000  # a lease name no other test uses
    metrics_port = _free_port()
    settings = Settings(
        label_studio={"url": "http://127.0.0.1:1", "project_id": project_id, "token": "t"},
        store={"url": f"sqlite:///{tmp_path / 'planner.db'}"},
        workers={"broker_url": f"redis://127.0.0.1:{redis_proxy.listen_port}/0"},
        dashboard={"metrics_port": metrics_port},
    )
    opened: dict[str, Any] = {}
    disposed: list[Engine] = []
    real_connect, real_open = run.connect, run.open_settings_store

    def connect(settings: Settings) -> LabelStudioBackend:
        opened["backend"] = backend = real_connect(settings)
        return backend

    def open_store(settings: Settings) -> Store:
        opened["store"] = store = real_open(settings)
        event.listen(store.engine, "engine_disposed", disposed.append)
        return store

    monkeypatch.setattr(run, "connect", connect)
    monkeypatch.setattr(run, "open_settings_store", open_store)
    stop = threading.Event()
    failed: list[BaseException] = []

    def daemon() -> None:
        try:
            run.run_daemon(settings, stop=stop)
        except BaseException as exc:  # handed to the test's thread
            failed.append(exc)

    thread = threading.Thread(target=daemon)
    thread.start()
    key = f"planner:leader:project-{project_id}"
    watcher = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 30
    while not watcher.exists(key) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watcher.exists(key), f"the daemon did not take the lease: {failed}"
    redis_proxy.down()  # Redis goes away; then SIGTERM
    stop.set()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert failed == [], "a lease Redis could not release turned the stop into an error"
    assert opened["backend"]._http.is_closed
    assert opened["store"].engine in disposed
    with socket.create_server(("127.0.0.1", metrics_port)):
        pass  # the metrics server was stopped: its port is free
    assert watcher.ttl(key) > 0, "not released: it runs out by itself"
    watcher.delete(key)
    watcher.close()
