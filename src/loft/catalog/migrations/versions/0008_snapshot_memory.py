"""Workspace snapshots may hold a VM's memory image record.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspace_snapshots", sa.Column("memory", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE workspace_snapshots DROP COLUMN memory")
