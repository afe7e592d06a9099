"""quarantine: tasks held apart for bad data or a bad image, with what to do

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import planner.store.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantineentry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("problem", sa.String(), nullable=False),
        sa.Column("fix", sa.String(), nullable=False),
        sa.Column("image", sa.String(), nullable=False),
        sa.Column("opened_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("seen_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("released_at", planner.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("released_why", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_quarantineentry_project_id"), "quarantineentry", ["project_id"], unique=False
    )
    op.create_index(
        op.f("ix_quarantineentry_ls_task_id"), "quarantineentry", ["ls_task_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_quarantineentry_ls_task_id"), table_name="quarantineentry")
    op.drop_index(op.f("ix_quarantineentry_project_id"), table_name="quarantineentry")
    op.drop_table("quarantineentry")
