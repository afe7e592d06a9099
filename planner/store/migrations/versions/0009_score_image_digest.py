"""scores: the digest of the image reference a row was scored from

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Rows from before stay null (not known): they count as scores of the image their task shows.
The sync forgot the scores of every task whose image it saw change, so only a chunk in flight
at that moment can have left one of an old image; scoring every pool again to rule that out
would cost more than it finds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scorerecord") as batch:
        batch.add_column(sa.Column("image_digest", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scorerecord") as batch:
        batch.drop_column("image_digest")
