"""Fixtures shared by every test: the planner database on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import create_engine, make_url, text

# The same examples on every run, so a red CI run can be replayed here; explore new ones with
# HYPOTHESIS_PROFILE=explore (random seeds, more examples).
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (dropped afterwards), so -n 2 is safe."""
    admin_url = make_url(DATABASE_URL)
    if admin_url.drivername == "postgresql":
        admin_url = admin_url.set(drivername="postgresql+psycopg")
    name = f"planner_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'planner.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def no_planner_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``PLANNER_*`` variable of the calling shell leaks into a test's settings."""
    for name in list(os.environ):
        if name.startswith("PLANNER_"):
            monkeypatch.delenv(name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the shared Label Studio once, from the process that owns the session."""
    if hasattr(session.config, "workerinput"):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    from integrations.label_studio import launcher

    data = factory.getbasetemp() / "label-studio" / "data"
    if data.is_dir():
        launcher.stop(data)
