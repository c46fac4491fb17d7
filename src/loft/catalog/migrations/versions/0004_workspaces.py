"""Workspaces: their records (workspaces), their runtime state on a node
(workspace_runtime) and the environment of each snapshot (workspace_snapshots), in
separate tables from the start: the control plane will write records, a node only its
runtime state.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("spec_source", sa.String(255), nullable=False),
        sa.Column("memory", sa.BigInteger, nullable=False),
        sa.Column("cpus", sa.Float, nullable=False),
        sa.Column("pids", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("network", sa.String(8), nullable=False),
        sa.Column("ids_base", sa.BigInteger, nullable=False, unique=True),
        sa.Column("runtime", sa.String(16), nullable=False),
        sa.Column("volume", sa.String(255), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("owner", "name", name="uq_workspace_owner_name"),
    )
    op.create_table(
        "workspace_runtime",
        sa.Column(
            "workspace_id",
            sa.String(16),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("node", sa.String(64), nullable=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("desired", sa.String(16), nullable=False),
        sa.Column("attachment", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "workspace_snapshots",
        sa.Column(
            "workspace_id",
            sa.String(16),
            sa.ForeignKey("workspaces.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("env_path", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("workspace_snapshots")
    op.drop_table("workspace_runtime")
    op.drop_table("workspaces")
