"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import planner.store.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ls_project_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("label_config_hash", sa.String(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("created_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_project_ls_project_id"), "project", ["ls_project_id"], unique=True)
    op.create_table(
        "artifactrecord",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("created_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_artifactrecord_project_id"), "artifactrecord", ["project_id"], unique=False
    )
    op.create_table(
        "batch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("view_id", sa.Integer(), nullable=True),
        sa.Column("created_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("pushed_at", planner.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("closed_at", planner.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "number"),
        sa.UniqueConstraint("tag"),
    )
    op.create_index(op.f("ix_batch_project_id"), "batch", ["project_id"], unique=False)
    op.create_table(
        "countsnapshot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("taken_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_countsnapshot_project_id"), "countsnapshot", ["project_id"], unique=False
    )
    op.create_table(
        "scorerecord",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("n_classes", sa.Integer(), nullable=False),
        sa.Column("probs", sa.LargeBinary(), nullable=True),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("unscorable", sa.String(), nullable=True),
        sa.Column("created_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "ls_task_id", "model_version"),
    )
    op.create_index(op.f("ix_scorerecord_ls_task_id"), "scorerecord", ["ls_task_id"], unique=False)
    op.create_index(
        op.f("ix_scorerecord_model_version"), "scorerecord", ["model_version"], unique=False
    )
    op.create_index(op.f("ix_scorerecord_project_id"), "scorerecord", ["project_id"], unique=False)
    op.create_table(
        "stopeventrecord",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("fired", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
        sa.Column("at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_stopeventrecord_project_id"), "stopeventrecord", ["project_id"], unique=False
    )
    op.create_table(
        "syncstate",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("watermark", planner.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("last_sync_at", planner.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column(
            "last_full_sync_at", planner.store.models.UtcDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "last_reconcile_at", planner.store.models.UtcDateTime(timezone=True), nullable=True
        ),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("project_id"),
    )
    op.create_table(
        "task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=False),
        sa.Column("image", sa.String(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("split", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("instances", sa.JSON(), nullable=False),
        sa.Column("pixels", sa.JSON(), nullable=False),
        sa.Column("annotation_ids", sa.JSON(), nullable=False),
        sa.Column("annotation_stamp", sa.String(), nullable=False),
        sa.Column("problem", sa.String(), nullable=True),
        sa.Column("ls_updated_at", planner.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("labelled_at", planner.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("synced_at", planner.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "ls_task_id"),
    )
    op.create_index(op.f("ix_task_ls_task_id"), "task", ["ls_task_id"], unique=False)
    op.create_index(op.f("ix_task_project_id"), "task", ["project_id"], unique=False)
    op.create_index(op.f("ix_task_state"), "task", ["state"], unique=False)
    op.create_table(
        "batchitem",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("reason_class", sa.String(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("found", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batch.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "ls_task_id"),
    )
    op.create_index(op.f("ix_batchitem_batch_id"), "batchitem", ["batch_id"], unique=False)
    op.create_index(op.f("ix_batchitem_ls_task_id"), "batchitem", ["ls_task_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_batchitem_ls_task_id"), table_name="batchitem")
    op.drop_index(op.f("ix_batchitem_batch_id"), table_name="batchitem")
    op.drop_table("batchitem")
    op.drop_index(op.f("ix_task_state"), table_name="task")
    op.drop_index(op.f("ix_task_project_id"), table_name="task")
    op.drop_index(op.f("ix_task_ls_task_id"), table_name="task")
    op.drop_table("task")
    op.drop_table("syncstate")
    op.drop_index(op.f("ix_stopeventrecord_project_id"), table_name="stopeventrecord")
    op.drop_table("stopeventrecord")
    op.drop_index(op.f("ix_scorerecord_project_id"), table_name="scorerecord")
    op.drop_index(op.f("ix_scorerecord_model_version"), table_name="scorerecord")
    op.drop_index(op.f("ix_scorerecord_ls_task_id"), table_name="scorerecord")
    op.drop_table("scorerecord")
    op.drop_index(op.f("ix_countsnapshot_project_id"), table_name="countsnapshot")
    op.drop_table("countsnapshot")
    op.drop_index(op.f("ix_batch_project_id"), table_name="batch")
    op.drop_table("batch")
    op.drop_index(op.f("ix_artifactrecord_project_id"), table_name="artifactrecord")
    op.drop_table("artifactrecord")
    op.drop_index(op.f("ix_project_ls_project_id"), table_name="project")
    op.drop_table("project")
