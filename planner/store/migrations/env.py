"""Alembic environment: runs on the connection ``open_store`` hands over."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlmodel import SQLModel

import planner.store.models  # noqa: F401 - registers the tables on SQLModel.metadata
from planner.store.db import include_object, migrating


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        include_object=include_object,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


config = context.config
given = config.attributes.get("connection")
if given is None:
    with migrating(config.attributes["engine"]) as connection:
        _run(connection)
else:
    _run(given)
