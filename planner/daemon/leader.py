"""Leadership: only one daemon per project pushes batches; a standby takes over when it dies.

The leader holds a lease with a time to live and renews it well before it runs out. A daemon
that cannot renew (it was paused, the network split) loses leadership and must stop pushing; a
standby acquires the lease once it expires. With Redis configured the lease is a redis-py
``Lock`` (a key with an owner token and a TTL, released and extended atomically by Lua);
without it the database lease of ``planner.store`` does the same.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import redis
from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.lock import Lock

from planner.errors import ConfigError, TransientError

DEFAULT_TTL_S = 30.0


def holder_name() -> str:
    """A name for this process in lease records: host, process id, a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@runtime_checkable
class LeaderLease(Protocol):
    """A renewable, expiring lease on one name."""

    @property
    def name(self) -> str: ...

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process now leads."""

    def renew(self) -> bool:
        """Extend the lease; False when it was lost (expired and maybe taken by another)."""

    def release(self) -> None:
        """Give the lease up (a no-op when not held)."""

    def held(self) -> bool:
        """Whether this process holds the lease now."""


@dataclass
class RedisLease:
    """A ``LeaderLease`` on a Redis key ``planner:leader:<name>``."""

    client: redis.Redis
    name: str
    ttl_s: float = DEFAULT_TTL_S
    holder: str = field(default_factory=holder_name)
    """The key's value while this process leads (who leads, for an operator)."""
    _lock: Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ConfigError(f"leader lease ttl must be positive, got {self.ttl_s}")
        self._lock = self.client.lock(
            f"planner:leader:{self.name}", timeout=self.ttl_s, blocking=False, thread_local=False
        )

    @classmethod
    def from_url(
        cls, url: str, name: str, *, ttl_s: float = DEFAULT_TTL_S, holder: str | None = None
    ) -> RedisLease:
        client = redis.Redis.from_url(url, socket_timeout=5.0)
        return cls(client, name, ttl_s, holder or holder_name())

    def acquire(self) -> bool:
        try:
            return bool(self._lock.acquire(blocking=False, token=self.holder))
        except RedisError as exc:
            raise TransientError(f"Redis leader lease {self.name!r}: {exc}") from exc

    def renew(self) -> bool:
        try:
            self._lock.extend(self.ttl_s, replace_ttl=True)
        except (LockNotOwnedError, LockError):
            return False
        except RedisError as exc:
            raise TransientError(f"Redis leader lease {self.name!r}: {exc}") from exc
        return True

    def release(self) -> None:
        try:
            self._lock.release()
        except (LockNotOwnedError, LockError):
            return
        except RedisError as exc:
            raise TransientError(f"Redis leader lease {self.name!r}: {exc}") from exc

    def held(self) -> bool:
        try:
            return bool(self._lock.owned())
        except RedisError as exc:
            raise TransientError(f"Redis leader lease {self.name!r}: {exc}") from exc
