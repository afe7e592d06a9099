"""Opening the store on SQLite and the real PostgreSQL: migrations, parity, time zones, errors."""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Float, LargeBinary, MetaData, String, Table, inspect, text
from sqlalchemy.exc import StatementError
from sqlmodel import SQLModel, select

from planner.errors import ConfigError, StoreError, StoreSchemaError, TransientError
from planner.store import Store, ensure_project, open_existing_store, open_store
from planner.store.db import (
    SQLITE_CACHED_STATEMENTS,
    alembic_config,
    include_object,
    make_engine,
)
from planner.store.models import Project, StopEventRecord, SyncState


def _diff(store: Store) -> list[object]:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": include_object}
        )
        return list(compare_metadata(context, SQLModel.metadata))


def test_migrations_match_the_models(store: Store) -> None:
    # APScheduler keeps its jobs in the same database; that table is not ours to compare.
    jobs = Table(
        "planner_jobs",
        MetaData(),
        Column("id", String(191), primary_key=True),
        Column("next_run_time", Float, index=True),
        Column("job_state", LargeBinary, nullable=False),
    )
    jobs.create(store.engine)
    assert _diff(store) == [], "the models changed without an Alembic revision"
    # The comparison is live: a column the models lack is reported.
    with store.engine.begin() as connection:
        connection.execute(text("ALTER TABLE task ADD COLUMN stray INTEGER"))
    diff = _diff(store)
    assert [d[0] for d in diff if isinstance(d, tuple)] == ["remove_column"]


def test_open_is_idempotent_and_keeps_data(store_url: str) -> None:
    with open_store(store_url) as first, first.session() as session:
        ensure_project(session, ls_project_id=11, title="a")
    with open_store(store_url) as second, second.session() as session:
        again = ensure_project(session, ls_project_id=11, title="ignored")
        assert again.title == "a"
        assert len(session.exec(select(Project)).all()) == 1
        revision = session.connection().execute(text("SELECT version_num FROM alembic_version"))
        heads = ScriptDirectory.from_config(alembic_config(second.engine)).get_heads()
        assert [revision.scalar_one()] == heads


def test_migrations_go_down_and_up_again(store: Store) -> None:
    config = alembic_config(store.engine)
    command.downgrade(config, "base")
    assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert {"task", "scorerecord", "lease", "modelversionrecord"} <= set(
        inspect(store.engine).get_table_names()
    )
    assert _diff(store) == []


def test_the_config_warning_column_is_added_to_a_store_with_data(store: Store) -> None:
    config = alembic_config(store.engine)
    command.downgrade(config, "0006")
    with store.session() as session:  # the project table is as it was at 0006
        pid = ensure_project(session, ls_project_id=3).id
    with store.engine.begin() as connection:
        row = {"pid": pid, "e": "Label Studio unreachable"}
        connection.execute(
            text(
                "INSERT INTO syncstate (project_id, last_error, ls_failures) VALUES (:pid, :e, 2)"
            ),
            row,
        )
    command.upgrade(config, "head")
    with store.session() as session:
        (state,) = session.exec(select(SyncState)).all()
    assert (state.last_error, state.ls_failures) == ("Label Studio unreachable", 2), "kept"
    assert state.config_warning is None
    command.downgrade(config, "0006")
    assert "config_warning" not in {
        c["name"] for c in inspect(store.engine).get_columns("syncstate")
    }


def test_times_come_back_aware_and_in_utc(store: Store) -> None:
    when = datetime(2026, 3, 29, 3, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    with store.session() as session:
        project = ensure_project(session, ls_project_id=2)
        session.add(
            StopEventRecord(
                project_id=int(project.id or 0), rule="quota", fired=True, reason="met", at=when
            )
        )
    with store.session() as session:
        event = session.exec(select(StopEventRecord)).one()
        before = session.exec(
            select(StopEventRecord).where(StopEventRecord.at < when + timedelta(microseconds=1))
        ).all()
    assert event.at == when
    assert event.at.tzinfo is UTC
    assert event.at.hour == 1  # 03:30 at +02:00 is 01:30 UTC
    assert len(before) == 1  # comparisons in SQL see the same instant
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the check
    record = StopEventRecord(project_id=1, rule="x", fired=False, reason="", at=naive)
    with pytest.raises(StatementError, match="timezone-aware"), store.session() as session:
        session.add(record)


def test_a_sqlite_file_gets_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "planner.db"
    with open_store(f"sqlite:///{path}"):
        pass
    assert path.is_file()


def test_an_engine_to_read_creates_no_sqlite_file_or_folder(tmp_path: Path) -> None:
    # the dashboard's engine: a page asking before the daemon made the store creates nothing
    for path in (tmp_path / "deep" / "planner.db", tmp_path / "a b.db"):
        store = Store(make_engine(f"sqlite:///{path}", create=False))
        with pytest.raises(StoreError, match="unable to open"), store.session() as session:
            session.exec(select(Project)).all()
        store.dispose()
        assert list(tmp_path.iterdir()) == []
    sqlite3.connect(path).close()  # made, not yet migrated: as a daemon starts
    with pytest.raises(StoreSchemaError, match="has no planner tables"):
        open_existing_store(f"sqlite:///{path}")
    open_store(f"sqlite:///{path}").dispose()
    with open_existing_store(f"sqlite:///{path}") as read, read.session() as session:
        assert session.exec(select(Project)).all() == []
    assert [p.name for p in tmp_path.iterdir()] == ["a b.db"]


def test_an_unreachable_database_is_a_transient_error() -> None:
    with pytest.raises(TransientError, match=r"check store\.url"):
        open_store("postgresql+psycopg://postgres@127.0.0.1:1/none")


def test_a_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        open_store("not a url")


def _sqlite_heap_growth(connection: sqlite3.Connection) -> float:
    """MB of SQLite's heap (``sqlite3_memory_used``) that 64 multi-row INSERTs of distinct row
    counts leave behind on ``connection``: what its prepared-statement cache holds."""
    library = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    library.sqlite3_memory_used.restype = ctypes.c_int64
    connection.execute("CREATE TEMP TABLE wide (a INTEGER, b INTEGER, c BLOB, d TEXT, e REAL)")
    before = library.sqlite3_memory_used()
    for rows in range(900, 964):
        values = ",".join(["(?, ?, ?, ?, ?)"] * rows)
        connection.execute(
            f"INSERT INTO wide VALUES {values}",  # noqa: S608 (placeholders only)
            [v for i in range(rows) for v in (i, i, b"x", "y", 0.5)],
        )
        connection.execute("DELETE FROM wide")
    return float(library.sqlite3_memory_used() - before) / 2**20


def test_sqlite_connections_keep_few_prepared_statements(tmp_path: Path) -> None:
    """Each prepared multi-row INSERT holds about half a megabyte; Python's default cache of
    128 per connection made the daemon grow by that much a cycle (the soak found it)."""
    with open_store(f"sqlite:///{tmp_path / 'planner.db'}") as store:
        raw = store.engine.raw_connection()
        try:
            connection = raw.driver_connection
            assert isinstance(connection, sqlite3.Connection)
            ours = _sqlite_heap_growth(connection)
        finally:
            raw.close()
    default = _sqlite_heap_growth(sqlite3.connect(tmp_path / "default.db"))
    assert default > 25, "the measure sees what Python's default cache keeps"
    assert ours < 15, f"{ours:.1f} MB held by {SQLITE_CACHED_STATEMENTS} cached statements"
    assert ours < default / 2
