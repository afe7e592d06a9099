"""The database leader lease: one row per name, taken and extended by single atomic statements.

Used when no Redis is configured; it satisfies ``planner.daemon.leader.LeaderLease``. Each call
is one statement in its own transaction, so SQLite's and PostgreSQL's row locking decide races:
an ``INSERT .. ON CONFLICT DO UPDATE .. WHERE expired`` takes the lease, an ``UPDATE .. WHERE
holder = me AND not expired`` renews it. Expiry is judged by the caller's clock (``clock``), so
hosts sharing a lease need clocks in step to well within ``ttl_s``.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

from planner.errors import ConfigError, TransientError
from planner.store import models  # noqa: F401 - defines the lease table

DEFAULT_TTL_S = 30.0
_TABLE = SQLModel.metadata.tables["lease"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _holder() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass
class DatabaseLease:
    """A ``LeaderLease`` on the row ``name`` of the ``lease`` table."""

    engine: Engine
    name: str
    ttl_s: float = DEFAULT_TTL_S
    holder: str = field(default_factory=_holder)
    clock: Callable[[], datetime] = _utc_now

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ConfigError(f"leader lease ttl must be positive, got {self.ttl_s}")
        if not self.name:
            raise ConfigError("leader lease needs a name (e.g. the project id)")

    def acquire(self) -> bool:
        """Take the lease when free, expired, or already ours (then it is extended)."""
        now = self._now()
        values = {"name": self.name, "holder": self.holder, "expires_at": self._until(now)}
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        statement = (
            insert(_TABLE)
            .values(values)
            .on_conflict_do_update(
                index_elements=["name"],
                set_={"holder": values["holder"], "expires_at": values["expires_at"]},
                where=(_TABLE.c.expires_at <= now) | (_TABLE.c.holder == self.holder),
            )
            .returning(_TABLE.c.holder)
        )
        with self._begin() as connection:
            return connection.execute(statement).first() is not None

    def renew(self) -> bool:
        """Extend the lease; False when it ran out (maybe taken by another) or was never ours."""
        now = self._now()
        statement = (
            update(_TABLE)
            .where(
                _TABLE.c.name == self.name,
                _TABLE.c.holder == self.holder,
                _TABLE.c.expires_at > now,
            )
            .values(expires_at=self._until(now))
        )
        with self._begin() as connection:
            return connection.execute(statement).rowcount == 1

    def release(self) -> None:
        """Give the lease up so a standby need not wait for expiry; a no-op when not ours."""
        statement = delete(_TABLE).where(_TABLE.c.name == self.name, _TABLE.c.holder == self.holder)
        with self._begin() as connection:
            connection.execute(statement)

    def held(self) -> bool:
        """Whether this holder has the lease and it has not run out."""
        statement = select(_TABLE.c.name).where(
            _TABLE.c.name == self.name,
            _TABLE.c.holder == self.holder,
            _TABLE.c.expires_at > self._now(),
        )
        with self._begin() as connection:
            return connection.execute(statement).first() is not None

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ConfigError("the lease clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def _until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.ttl_s)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One short transaction; a database that is down or locked is a transient error."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except OperationalError as exc:
            raise TransientError(f"database leader lease {self.name!r}: {exc.orig}") from exc
