"""volumes.raw_written: the volume holds bytes written raw (an imported image, a direct
NBD write outside a workspace's own attachment), which the host must never mount.

Existing volumes are marked raw-written: nothing recorded how they were written, and
the host mounting a filesystem a tenant forged is what the flag exists to prevent.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("volumes") as batch:
        batch.add_column(
            sa.Column("raw_written", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.execute(sa.text("UPDATE volumes SET raw_written = :yes").bindparams(yes=True))


def downgrade() -> None:
    with op.batch_alter_table("volumes") as batch:
        batch.drop_column("raw_written")
