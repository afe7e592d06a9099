"""daemon state: stop set, stop policy, label kinds, validation macro-F1

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import planner.store.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stopsetitem",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=False),
        sa.Column("chosen_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "ls_task_id"),
    )
    op.create_index(op.f("ix_stopsetitem_project_id"), "stopsetitem", ["project_id"], unique=False)
    with op.batch_alter_table("project") as batch:
        batch.add_column(
            sa.Column("label_kinds", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    with op.batch_alter_table("stopeventrecord") as batch:
        batch.add_column(sa.Column("policy", sa.String(), nullable=False, server_default=""))
    with op.batch_alter_table("modelversionrecord") as batch:
        batch.add_column(sa.Column("macro_f1", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("modelversionrecord") as batch:
        batch.drop_column("macro_f1")
    with op.batch_alter_table("stopeventrecord") as batch:
        batch.drop_column("policy")
    with op.batch_alter_table("project") as batch:
        batch.drop_column("label_kinds")
    op.drop_index(op.f("ix_stopsetitem_project_id"), table_name="stopsetitem")
    op.drop_table("stopsetitem")
