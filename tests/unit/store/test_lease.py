"""The database leader lease on SQLite and PostgreSQL: one holder at a time, until expiry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from threading import Barrier

import pytest

from planner.daemon.leader import LeaderLease
from planner.errors import ConfigError
from planner.store import DatabaseLease, Store
from tests.unit.store.conftest import T0


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


def _lease(store: Store, clock: Clock, holder: str, name: str = "project-7") -> DatabaseLease:
    return DatabaseLease(store.engine, name, ttl_s=30, holder=holder, clock=clock)


def test_it_is_a_leader_lease(store: Store) -> None:
    assert isinstance(DatabaseLease(store.engine, "x"), LeaderLease)


def test_only_one_holder_wins_until_expiry(store: Store) -> None:
    clock = Clock()
    a, b = _lease(store, clock, "a"), _lease(store, clock, "b")
    assert a.acquire()
    assert not b.acquire()
    assert a.held()
    assert not b.held()
    assert a.acquire()  # the holder asking again keeps (and extends) it
    clock.now = T0 + timedelta(seconds=29)
    assert not b.acquire()
    assert a.renew()  # now runs to T0 + 59 s
    clock.now = T0 + timedelta(seconds=58)
    assert not b.acquire()
    clock.now = T0 + timedelta(seconds=60)
    assert not a.held()
    assert b.acquire()  # expired: the standby takes over
    assert not a.renew()  # and the old leader learns it lost
    assert not a.acquire()
    assert b.held()


def test_release_frees_it_at_once_and_only_for_the_holder(store: Store) -> None:
    clock = Clock()
    a, b = _lease(store, clock, "a"), _lease(store, clock, "b")
    assert a.acquire()
    b.release()  # not b's: nothing happens
    assert a.held()
    a.release()
    assert not a.held()
    assert not a.renew()
    assert b.acquire()
    a.release()  # a no-op when not held


def test_names_are_independent(store: Store) -> None:
    clock = Clock()
    assert _lease(store, clock, "a", "p1").acquire()
    assert _lease(store, clock, "b", "p2").acquire()
    assert not _lease(store, clock, "b", "p1").acquire()


def test_racing_holders_get_exactly_one_winner(store: Store) -> None:
    holders = 8
    start = Barrier(holders)
    leases = [DatabaseLease(store.engine, "race", ttl_s=30) for _ in range(holders)]

    def attempt(lease: DatabaseLease) -> bool:
        start.wait()
        return lease.acquire()

    with ThreadPoolExecutor(holders) as pool:
        won = list(pool.map(attempt, leases))
    assert sum(won) == 1
    assert [lease.held() for lease in leases] == won


def test_bad_settings_are_refused(store: Store) -> None:
    with pytest.raises(ConfigError, match="ttl must be positive"):
        DatabaseLease(store.engine, "x", ttl_s=0)
    naive = DatabaseLease(store.engine, "x", clock=lambda: datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ConfigError, match="timezone-aware"):
        naive.acquire()
