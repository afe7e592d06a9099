"""sync state: the last scoring run's outcome (when, model version, warnings, failed chunks)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Rows from before have no run recorded (``scored_at`` null) until the daemon next scores.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import planner.store.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("syncstate") as batch:
        batch.add_column(
            sa.Column("scored_at", planner.store.models.UtcDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("scoring_model_version", sa.String(), nullable=True))
        batch.add_column(
            sa.Column("scoring_warnings", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch.add_column(
            sa.Column("scoring_failed_chunks", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("syncstate") as batch:
        batch.drop_column("scoring_failed_chunks")
        batch.drop_column("scoring_warnings")
        batch.drop_column("scoring_model_version")
        batch.drop_column("scored_at")
