"""fires: one row per (schedule, nominal fire time), written before any run is dispatched

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
    op.create_table(
        "fires",
        sa.Column("schedule_id", sa.String(length=32), nullable=False),
        sa.Column("nominal_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", "nominal_at", name=op.f("pk_fires")),
    )
    with op.batch_alter_table("fires", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fires_recorded_at"), ["recorded_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fires", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fires_recorded_at"))
    op.drop_table("fires")
