"""Opening the store on SQLite and the real PostgreSQL: migrations, parity, time zones, errors."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import socket
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Float, LargeBinary, MetaData, String, Table, inspect, text
from sqlalchemy.exc import IntegrityError, ProgrammingError, StatementError
from sqlmodel import SQLModel, select

from planner.errors import ConfigError, StoreError, StoreSchemaError, TransientError
from planner.health import ScoringRun
from planner.store import Store, ensure_project, open_existing_store, open_store
from planner.store.batches import PlannedItem, create_batch, move_batch
from planner.store.db import (
    POSTGRES_CONNECT_ARGS,
    SQLITE_CACHED_STATEMENTS,
    alembic_config,
    include_object,
    make_engine,
)
from planner.store.events import record_model_version, record_stop_event
from planner.store.models import Project, QuarantineEntry, StopEventRecord, SyncState, Task
from planner.store.scores import write_scores
from planner.store.stop_set import ensure_stop_set
from planner.store.sync_state import last_scoring, record_scoring, set_watermark

_T = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


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


def _fill(store: Store) -> None:
    """A row in every table, those other rows point at included."""
    with store.session() as session:
        project_id = int(ensure_project(session, ls_project_id=3).id or 0)
        session.add(Task(project_id=project_id, ls_task_id=1, image="/img/1.png"))
        batch = create_batch(session, project_id, [PlannedItem(1, 1, "uncertain")], {}, at=_T)
        move_batch(batch, "pushed", at=_T)
        write_scores(
            session, project_id=project_id, model_version="m", task_ids=[1], probs=[[0.5, 0.5]]
        )
        record_model_version(session, project_id=project_id, version="m", source="t", at=_T)
        record_stop_event(
            session, project_id=project_id, rule="r", fired=False, reason="", numbers={}, at=_T
        )
        set_watermark(session, project_id, _T, at=_T)
        ensure_stop_set(session, project_id, [1], size=1, rng=np.random.default_rng(0), at=_T)
        session.add(
            QuarantineEntry(project_id=project_id, ls_task_id=1, kind="data", problem="", fix="")
        )


def test_migrations_go_down_and_up_again_keeping_the_rows(store: Store) -> None:
    """Each step down on a database with rows, to the first revision and to none: on SQLite the
    table copies failed with foreign keys on (a copy of ``modelversionrecord`` was left)."""
    _fill(store)
    config = alembic_config(store.engine)
    revisions = [s.revision for s in ScriptDirectory.from_config(config).walk_revisions()]
    for revision in [*revisions[1:], "base"]:
        command.downgrade(config, revision)
        tables = set(inspect(store.engine).get_table_names())
        assert not {t for t in tables if t.startswith("_alembic_tmp")}, revision
        if revision != "base":
            with store.engine.connect() as connection:
                assert connection.execute(text("SELECT count(*) FROM task")).scalar_one() == 1
    assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert {"task", "scorerecord", "lease", "modelversionrecord"} <= set(
        inspect(store.engine).get_table_names()
    )
    assert _diff(store) == []
    _fill(store)
    # the foreign keys hold again afterwards (the store's pooled connections)
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(Task(project_id=999, ls_task_id=2))


def test_a_database_of_a_newer_planner_is_refused_and_left_alone(store: Store) -> None:
    """Alembic's "Can't locate revision identified by '9999'" said nothing of what to do."""
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    head = ScriptDirectory.from_config(alembic_config(store.engine)).get_current_head()
    why = f"at revision 9999, newer than this planner \\(latest {head}\\); upgrade the planner"
    with pytest.raises(ConfigError, match=why):
        open_store(store.engine.url.render_as_string(hide_password=False))
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("9999",)
        ]


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


def test_the_scoring_columns_are_added_to_a_store_with_data_and_removed_again(
    store: Store,
) -> None:
    config = alembic_config(store.engine)
    command.downgrade(config, "0009")
    with store.session() as session:
        pid = int(ensure_project(session, ls_project_id=3).id or 0)
    with store.engine.begin() as connection:
        row = "(project_id, config_warning, ls_failures) VALUES (:p, 'w', 1)"
        connection.execute(text(f"INSERT INTO syncstate {row}"), {"p": pid})
    command.upgrade(config, "head")
    with store.session() as session:
        (state,) = session.exec(select(SyncState)).all()
        assert (state.config_warning, state.ls_failures) == ("w", 1), "kept"
        assert (state.scoring_warnings, state.scoring_failed_chunks) == ([], 0)
        assert last_scoring(state) is None, "no run recorded before the daemon scores again"
        run = ScoringRun(_T, "m-1", ("1 of 3 chunk(s) failed", "no BALD"), failed_chunks=1)
        record_scoring(session, pid, run)
    with store.session() as session:
        assert last_scoring(session.get(SyncState, pid)) == run
    command.downgrade(config, "0009")
    columns = {c["name"] for c in inspect(store.engine).get_columns("syncstate")}
    assert "config_warning" in columns
    assert not {"scored_at", "scoring_model_version", "scoring_warnings"} & columns
    assert "scoring_failed_chunks" not in columns


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


@pytest.mark.integration
def test_a_postgres_database_not_yet_created_or_migrated_is_a_schema_error(
    postgres_url: str,
) -> None:
    """PostgreSQL says so with a ProgrammingError (UndefinedTable, UndefinedColumn), which
    left the dashboard's page a 500; SQLite's OperationalError was a StoreError already."""
    empty = Store(make_engine(postgres_url, create=False))
    try:
        missing = r'relation "project" does not exist.*planner run'
        with pytest.raises(StoreSchemaError, match=missing), empty.session() as session:
            session.exec(select(Project)).all()
        with pytest.raises(ProgrammingError, match="syntax"), empty.session() as session:
            session.execute(text("SELEC 1"))  # any other mistake stays what it is
    finally:
        empty.dispose()
    with open_store(postgres_url) as store:
        command.downgrade(alembic_config(store.engine), "0006")  # syncstate without config_warning
        with pytest.raises(StoreSchemaError, match="config_warning"), store.session() as session:
            session.exec(select(SyncState)).all()


def test_an_unreachable_database_is_a_transient_error() -> None:
    with pytest.raises(TransientError, match=r"check store\.url"):
        open_store("postgresql+psycopg://postgres@127.0.0.1:1/none")


def test_a_server_that_never_answers_is_a_transient_error_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener that accepts connections and says nothing (a hung host) hung open_store,
    and the daemon's job with it, for good."""
    monkeypatch.setitem(POSTGRES_CONNECT_ARGS, "connect_timeout", 2)  # libpq's least
    failed: list[BaseException] = []

    def connect(port: int) -> None:
        try:
            open_store(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none")
        except BaseException as exc:
            failed.append(exc)

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        opening = threading.Thread(target=connect, args=(silent.getsockname()[1],), daemon=True)
        opening.start()
        opening.join(10)
        assert not opening.is_alive(), "open_store still waits for a server that never answers"
    assert len(failed) == 1
    assert isinstance(failed[0], TransientError)
    assert re.search(r"timeout.*check store\.url", str(failed[0]))


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
