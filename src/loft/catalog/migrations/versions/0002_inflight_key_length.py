"""Widen inflight_chunks.key: chunk keys (``chunks/ab/<64 hex>``) are 74 characters, and
PostgreSQL enforces VARCHAR lengths (SQLite does not), so every commit failed there.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inflight_chunks") as batch:
        batch.alter_column(
            "key", existing_type=sa.String(64), type_=sa.String(255), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("inflight_chunks") as batch:
        batch.alter_column(
            "key", existing_type=sa.String(255), type_=sa.String(64), existing_nullable=False
        )
