"""runs.sandbox: what isolated a run (ResourceUsage.sandbox), in a column of its own so
the usage JSON keeps the fields release 0.1.0 parses (a 0.1.0 scheduler replica reading
a run this release finished must not meet a key it does not know)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sandbox", sa.String(length=16), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("sandbox")
