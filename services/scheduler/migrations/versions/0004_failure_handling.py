"""failure handling: run leases, dead letters, quarantines

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
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("dead_lettered_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("dead_letter_reason", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("replay_run_id", sa.String(length=32), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_runs_dead_lettered_at"), ["dead_lettered_at"], unique=False
        )
    op.create_table(
        "quarantines",
        sa.Column("script_name", sa.String(length=63), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("script_name", name=op.f("pk_quarantines")),
    )


def downgrade() -> None:
    op.drop_table("quarantines")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_dead_lettered_at"))
        batch_op.drop_column("replay_run_id")
        batch_op.drop_column("dead_letter_reason")
        batch_op.drop_column("dead_lettered_at")
        batch_op.drop_column("lease_expires_at")
