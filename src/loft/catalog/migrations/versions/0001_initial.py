"""Initial catalog: settings, volumes with their heads, snapshots, GC state, env profiles.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "volumes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(32), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("extent_size", sa.Integer, nullable=False),
        sa.Column("durability", sa.String(16), nullable=False),
        sa.Column("commit_interval", sa.Float, nullable=False),
        sa.Column("parent_uid", sa.String(32), nullable=True),
        sa.Column("parent_snapshot", sa.String(255), nullable=True),
        sa.Column("lineage", sa.Text, nullable=False, server_default="[]"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(255), nullable=True),
        sa.Column("lease_expires", sa.Float, nullable=True),
        sa.Column("control_socket", sa.Text, nullable=True),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "volume_id",
            sa.Integer,
            sa.ForeignKey("volumes.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("auto", sa.Boolean, nullable=False, server_default="0"),
        sa.UniqueConstraint("volume_id", "name", name="uq_snapshot_name"),
    )
    op.create_table(
        "commits_inflight",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("volume_id", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
    )
    op.create_table(
        "inflight_chunks",
        sa.Column(
            "commit_id",
            sa.Integer,
            sa.ForeignKey("commits_inflight.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("commit_id", "key"),
    )
    op.create_table(
        "gc_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sweeping_until", sa.Float, nullable=True),
        sa.Column("holder", sa.String(255), nullable=True),
    )
    op.execute("INSERT INTO gc_state (id) VALUES (1)")
    op.create_table(
        "env_profiles",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
    )
    op.create_table(
        "env_generations",
        sa.Column("profile", sa.String(255), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("env_path", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("profile", "number"),
    )


def downgrade() -> None:
    for table in (
        "env_generations",
        "env_profiles",
        "gc_state",
        "inflight_chunks",
        "commits_inflight",
        "snapshots",
        "volumes",
        "settings",
    ):
        op.drop_table(table)
