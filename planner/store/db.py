"""Opening the store: an engine for SQLite or PostgreSQL, migrated to the newest revision
(``open_store``), or for commands that only read, as the daemon left it (``open_existing_store``:
nothing created, nothing migrated)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, create_engine, event, make_url, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, SQLModel, select

from planner.errors import ConfigError, StoreError, StoreSchemaError, TransientError
from planner.store.models import Project

MIGRATIONS = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock held while migrating, so concurrent ``open_store`` calls queue up.
_LOCK_KEY = 0x706C616E6E6572  # "planner"
JOB_TABLE_PREFIX = "planner_jobs"
"""Tables in the planner's database that other code owns: APScheduler's job stores, one a
daemon (``planner_jobs_project_3``, named by ``planner.daemon.schedule.job_table``), and
``planner_jobs`` from before."""
_WAL_TRIES = 40  # about 40 s of tries to switch a new SQLite file to WAL
# PostgreSQL's undefined_table and undefined_column: a database the daemon has not created or
# migrated yet (a reader that opened it without open_existing_store's revision check: the
# dashboard). SQLite says so with an OperationalError, a StoreError.
_SCHEMA_MISSING = frozenset({"42P01", "42703"})


class Store:
    """An engine and sessions that commit on success and roll back on error; a database that
    is locked or unreachable raises ``StoreError`` (a ``TransientError``), a PostgreSQL one
    without the planner's tables or columns ``StoreSchemaError``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except OperationalError as exc:  # locked, or the server went away: nothing written
                with contextlib.suppress(SQLAlchemyError):
                    session.rollback()
                raise StoreError(
                    f"the planner database {self.engine.url.render_as_string(hide_password=True)}"
                    f" is unavailable ({exc.orig}); the job is retried on its next run"
                ) from exc
            except ProgrammingError as exc:
                with contextlib.suppress(SQLAlchemyError):
                    session.rollback()
                if getattr(exc.orig, "sqlstate", None) not in _SCHEMA_MISSING:
                    raise
                raise _not_migrated(self.engine, exc) from exc
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.dispose()


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's filter: autogenerate leaves tables the planner does not own alone."""
    return not (type_ == "table" and str(name).startswith(JOB_TABLE_PREFIX))


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


SQLITE_CACHED_STATEMENTS = 16
"""Prepared statements each SQLite connection keeps (Python's default is 128). The planner's
statements that vary most, multi-row INSERTs and ``IN`` lists of up to 2,000 ids, are a new SQL
text for every row count, and each prepared one holds about half a megabyte: at 128 per pooled
connection the daemon's memory grew by that much a cycle until the caches filled (the soak,
docs/reliability.md)."""


POSTGRES_CONNECT_ARGS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""libpq's settings for every PostgreSQL connection unless ``store.url`` names them: a server
that accepts the connection and never answers (a hung host, a firewall dropping packets) fails
the connect in 10 s instead of hanging ``open_store`` and the job for good, and a connection
whose server vanished mid-query is found dead within about a minute."""


def make_engine(url: str, *, password: str | None = None, create: bool = True) -> Engine:
    """An engine for ``url``; PostgreSQL gets ``password``. A SQLite file's folder is created
    (and the file at the first connection); without ``create`` a missing file is not: a
    connection to it fails."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"store.url {url!r} is not a database URL: {exc}") from None
    if parsed.drivername.startswith("sqlite"):
        path = sqlite_file(parsed)
        if path is not None and create:
            path.expanduser().parent.mkdir(parents=True, exist_ok=True)
        args = {"timeout": 30, "cached_statements": SQLITE_CACHED_STATEMENTS}
        engine = create_engine(parsed, connect_args=args)
        event.listen(engine, "connect", _sqlite_pragmas)
        if path is not None and not create:
            event.listen(engine, "do_connect", partial(_existing_file_only, path))
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if password:
        parsed = parsed.set(password=password)
    args = {k: v for k, v in POSTGRES_CONNECT_ARGS.items() if k not in parsed.query}
    engine = create_engine(parsed, pool_pre_ping=True, connect_args=args)
    event.listen(engine, "handle_error", _failed_ping_is_disconnect)
    return engine


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or another backend."""
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _existing_file_only(
    path: Path, _dialect: object, _record: object, cargs: list[Any], cparams: dict[str, Any]
) -> None:
    """Open the file read-write but never create it (SQLite's ``mode=rw``)."""
    cargs[:] = [f"file:{quote(str(path))}?mode=rw"]
    cparams["uri"] = True


def _failed_ping_is_disconnect(context: ExceptionContext) -> None:
    """A connection whose ping fails is not usable, whatever the error: a server that cut it
    mid-statement leaves psycopg's connection broken, and the ping then fails with "can't change
    'autocommit' now", which SQLAlchemy does not take for a disconnect. Taken as one, the pool
    drops the connection and reconnects, and a server still away gives an ``OperationalError``
    (a ``StoreError``: the job is retried)."""
    if context.is_pre_ping:
        context.is_disconnect = True


def _sqlite_pragmas(connection: object, _record: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL (readers such as the dashboard never block the daemon) is kept in the file: set
        # it once. Changing the mode needs the write lock and does not wait for it, so a
        # second process opening the file while the first migrates it tries again.
        for attempt in range(_WAL_TRIES):
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                break
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                if attempt == _WAL_TRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
    finally:
        cursor.close()


def open_store(url: str, *, password: str | None = None) -> Store:
    """Connect and bring the schema to the newest migration (safe to call from two processes)."""
    engine = make_engine(url, password=password)
    try:
        _upgrade(engine)
    except OperationalError as exc:
        engine.dispose()
        raise _cannot_open(engine, exc) from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ConfigError(f"cannot migrate the planner database: {exc}") from None
    except BaseException:
        engine.dispose()
        raise
    return Store(engine)


def open_existing_store(url: str, *, password: str | None = None) -> Store:
    """Connect to the store ``planner run`` created, to read it: no SQLite file or folder is
    created and nothing migrated (a daemon of another version may be using it). A missing
    file or a schema at another revision raises ``StoreSchemaError``, saying what to do."""
    engine = make_engine(url, password=password, create=False)
    shown = engine.url.render_as_string(hide_password=True)
    path = sqlite_file(engine.url)
    if path is not None and not path.is_file():
        raise StoreSchemaError(
            f"the planner database {path} does not exist: `planner run` creates it when it "
            "first starts; check store.url"
        )
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        engine.dispose()
        raise _cannot_open(engine, exc) from None
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if current != head:
        engine.dispose()
        found = "has no planner tables" if current is None else f"is at revision {current}"
        raise StoreSchemaError(
            f"the planner database {shown} {found}, this planner reads revision {head}: "
            "`planner run` of this version creates or migrates it when it starts; check store.url"
        )
    return Store(engine)


def _not_migrated(engine: Engine, exc: ProgrammingError) -> StoreSchemaError:
    first = (str(exc.orig).splitlines() or [""])[0]  # not the SQL and the caret under it
    return StoreSchemaError(
        f"the planner database {engine.url.render_as_string(hide_password=True)} lacks the "
        f"planner's tables ({first}): `planner run` of this version creates or migrates it "
        "when it starts; check store.url"
    )


def _cannot_open(engine: Engine, exc: OperationalError) -> TransientError:
    return TransientError(
        f"cannot open the planner database {engine.url.render_as_string(hide_password=True)}: "
        f"{' '.join(str(exc.orig).split())}; check store.url and that the database is running"
    )


def _upgrade(engine: Engine) -> None:
    """``alembic upgrade head`` in one transaction that a second process waits for."""
    with migrating(engine) as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        _refuse_newer(connection, ScriptDirectory.from_config(config))
        command.upgrade(config, "head")


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """A connection to ``engine``'s database in one transaction to migrate in (``env.py``
    takes one for an ``alembic_config`` without a connection); a second process migrating
    waits for it.

    PostgreSQL: an advisory lock. A SQLite file: pysqlite runs DDL outside any transaction, so
    a separate engine that opens ``BEGIN IMMEDIATE`` itself makes the migration atomic and
    takes the write lock first (a second process waits and then finds the schema current);
    its connections leave foreign keys off, as SQLite's table copies (Alembic's batch mode)
    need: with them on, dropping the old copy of a table other rows point at fails halfway."""
    target = engine
    if sqlite_file(engine.url) is not None:
        target = create_engine(engine.url, connect_args={"timeout": 30}, poolclass=NullPool)
        event.listen(target, "connect", _sqlite_autocommit_driver)
        event.listen(target, "begin", _sqlite_begin_immediate)
    try:
        with target.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            yield connection
    finally:
        if target is not engine:
            target.dispose()


def _refuse_newer(connection: Connection, scripts: ScriptDirectory) -> None:
    """A database a newer planner migrated is at a revision this one does not know."""
    known = {script.revision for script in scripts.walk_revisions()}
    for revision in MigrationContext.configure(connection).get_current_heads():
        if revision not in known:
            raise ConfigError(
                f"the planner database is at revision {revision}, newer than this planner "
                f"(latest {scripts.get_current_head()}); upgrade the planner"
            )


def _sqlite_autocommit_driver(connection: object, _record: object) -> None:
    connection.isolation_level = None  # type: ignore[attr-defined]
    connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[attr-defined]


def _sqlite_begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def ensure_project(session: Session, *, ls_project_id: int, title: str = "") -> Project:
    """The project row for a Label Studio project, created on first use (by whichever of two
    processes starting together gets there first)."""
    query = select(Project).where(Project.ls_project_id == ls_project_id)
    found = session.exec(query).first()
    if found is None:
        insert_missing(session, Project(ls_project_id=ls_project_id, title=title), "ls_project_id")
        found = session.exec(query).one()
    return found


def is_postgres(session: Session) -> bool:
    """Whether the session's database is PostgreSQL (else SQLite)."""
    return bool(session.get_bind().dialect.name == "postgresql")


def dialect_insert(session: Session) -> Any:
    """The INSERT construct of the session's database, which has ``on_conflict_do_*``."""
    return pg_insert if is_postgres(session) else sqlite_insert


def insert_missing(session: Session, row: SQLModel, *keys: str) -> None:
    """Insert ``row`` unless a row with the same ``keys`` (a unique index) is there, one that
    another transaction is inserting included: PostgreSQL waits for it, then inserts nothing.
    Reading first and inserting after raised IntegrityError when two writers raced."""
    values = {k: v for k, v in row.model_dump().items() if v is not None}
    insert = dialect_insert(session)(type(row)).values(**values)
    session.execute(insert.on_conflict_do_nothing(index_elements=list(keys)))
