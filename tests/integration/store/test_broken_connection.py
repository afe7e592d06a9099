"""A pooled PostgreSQL connection that the server cut leaves the pool without a crash."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from planner.store.db import make_engine

pytestmark = pytest.mark.integration


def test_a_ping_that_fails_with_any_error_gets_a_fresh_connection(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg's connection, cut mid-statement, fails the pool's ping with "can't change
    'autocommit' now" (a ProgrammingError; seen in CI with the fault proxy). That fault cannot
    be timed for real here, so the ping raises it once; the pool must reconnect."""
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as connection:
            first = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        dialect = engine.dialect
        real_ping = dialect.do_ping
        failed: list[bool] = []

        def broken_once(dbapi_connection: object) -> bool:
            if not failed:
                failed.append(True)
                raise psycopg.ProgrammingError(
                    "can't change 'autocommit' now: connection in transaction status ACTIVE"
                )
            return real_ping(dbapi_connection)  # type: ignore[arg-type]

        monkeypatch.setattr(dialect, "do_ping", broken_once)
        with engine.connect() as connection:
            second = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert failed, "the pool pinged the pooled connection"
        assert second != first, "the connection whose ping failed was dropped, not reused"
    finally:
        engine.dispose()
