"""sync state: the daemon's view of Label Studio (state, since, failures in a row, next try)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import planner.store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("syncstate") as batch:
        batch.add_column(sa.Column("ls_state", sa.String(), nullable=True))
        batch.add_column(
            sa.Column(
                "ls_state_since", planner.store.models.UtcDateTime(timezone=True), nullable=True
            )
        )
        batch.add_column(sa.Column("ls_failures", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("ls_retry_at", planner.store.models.UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("syncstate") as batch:
        batch.drop_column("ls_retry_at")
        batch.drop_column("ls_failures")
        batch.drop_column("ls_state_since")
        batch.drop_column("ls_state")
