"""Workspace records say whether their previews are public.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "workspaces",
        sa.Column("preview_public", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # Plain ALTER TABLE, as 0006 does: a batch rebuild of workspaces would cascade-delete
    # its runtime and snapshot rows.
    op.execute("ALTER TABLE workspaces DROP COLUMN preview_public")
