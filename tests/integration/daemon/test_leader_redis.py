"""The Redis leader lease against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import redis

from planner.daemon.leader import LeaderLease, RedisLease
from planner.errors import TransientError

pytestmark = pytest.mark.integration
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def name() -> str:
    return f"test-{uuid.uuid4().hex}"


def test_only_one_daemon_leads(name: str) -> None:
    first = RedisLease.from_url(REDIS_URL, name)
    second = RedisLease.from_url(REDIS_URL, name)
    assert isinstance(first, LeaderLease)
    assert first.acquire()
    assert not second.acquire()
    assert first.held()
    assert not second.held()
    assert first.renew()
    assert not second.renew()
    first.release()
    assert second.acquire()
    second.release()


def test_a_standby_takes_over_when_the_leader_stops_renewing(name: str) -> None:
    leader = RedisLease.from_url(REDIS_URL, name, ttl_s=0.3)
    standby = RedisLease.from_url(REDIS_URL, name, ttl_s=0.3)
    assert leader.acquire()
    time.sleep(0.5)  # the leader died: no renewal within the TTL
    assert standby.acquire()
    assert not leader.renew(), "a lapsed leader must learn it lost the lease"
    assert not leader.held()
    leader.release()  # releasing a lost lease must not free the new leader's
    assert standby.held()
    standby.release()


def test_an_unreachable_redis_is_a_transient_error(name: str) -> None:
    lease = RedisLease(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), name)
    with pytest.raises(TransientError, match=name):
        lease.acquire()
