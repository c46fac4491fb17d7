"""volumes.max_dirty: bytes of uncommitted writes past which a volume's writers wait for a
commit (existing volumes get the default, 1 GiB); gc_state.sweeps: the number of GC sweeps
ever started, which nodes' presence indexes of stored chunks are checked against.

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
    with op.batch_alter_table("volumes") as batch:
        batch.add_column(
            sa.Column("max_dirty", sa.BigInteger, nullable=False, server_default=str(1 << 30))
        )
    with op.batch_alter_table("gc_state") as batch:
        batch.add_column(sa.Column("sweeps", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("gc_state") as batch:
        batch.drop_column("sweeps")
    with op.batch_alter_table("volumes") as batch:
        batch.drop_column("max_dirty")
