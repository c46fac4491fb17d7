"""The control plane's tables: users, their quotas and tokens; and what it keeps in the
workspace records (``workspaces``, made by the workspaces revision): an idle timeout and
free-form metadata.

``workspaces.owner`` stays the owner's user *name*, not a reference to ``users.id``:
user names are unique and never change (the API has no rename), a node reads records
without the users table, the ``(owner, name)`` unique key and every lookup stay as they
are, and SQLite could only add a foreign key by rebuilding ``workspaces``, whose rebuild
would cascade-delete the rows that reference it. The control plane refuses to delete a
user who owns workspaces. Every owner already in ``workspaces`` (``root``, before users
existed) gets a user row here, so every workspace has an owner the API knows; the
control plane makes ``root`` its first admin at its first start.

Revision ID: 0006
Revises: 0005
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    users = op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(32), nullable=False, unique=True),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "quotas",
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("workspaces", sa.Integer, nullable=False),
        sa.Column("memory", sa.BigInteger, nullable=False),
        sa.Column("cpus", sa.Float, nullable=False),
        sa.Column("disk", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(64), nullable=False, server_default=""),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float, nullable=True),
    )
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])
    op.add_column(
        "workspaces",
        sa.Column("idle_timeout", sa.Float, nullable=False, server_default="900"),
    )
    op.add_column("workspaces", sa.Column("metadata", sa.Text, nullable=False, server_default="{}"))
    conn = op.get_bind()
    owners = conn.execute(sa.text("SELECT DISTINCT owner FROM workspaces")).scalars().all()
    if owners:
        now = time.time()
        op.bulk_insert(users, [{"name": o, "admin": False, "created_at": now} for o in owners])


def downgrade() -> None:
    # Plain ALTER TABLE (SQLite 3.35+ has DROP COLUMN): a batch rebuild of workspaces
    # would cascade-delete its runtime and snapshot rows.
    op.execute("ALTER TABLE workspaces DROP COLUMN metadata")
    op.execute("ALTER TABLE workspaces DROP COLUMN idle_timeout")
    op.drop_index("ix_tokens_user_id", "tokens")
    op.drop_table("tokens")
    op.drop_table("quotas")
    op.drop_table("users")
