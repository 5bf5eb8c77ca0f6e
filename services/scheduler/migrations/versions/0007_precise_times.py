"""Run, schedule, fire and quarantine times to the microsecond on MariaDB/MySQL: DATETIME(6).

MariaDB's DATETIME keeps whole seconds (the fraction is rounded off on insert), so a run's
queue, start and finish times, and so its duration, were stored to the second, and runs
created within one second lost their order. PostgreSQL (TIMESTAMPTZ) and SQLite (ISO text)
already kept microseconds: nothing changes there. Values stored before this migration keep
their whole seconds (nothing to recover). Downgrade goes back to DATETIME (rounding again).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (table, column, nullable), as services/scheduler/models.py declares them.
COLUMNS = (
    ("runs", "created_at", False),
    ("runs", "queued_at", True),
    ("runs", "started_at", True),
    ("runs", "finished_at", True),
    ("runs", "updated_at", False),
    ("runs", "next_dispatch_at", True),
    ("runs", "dispatch_attempted_at", True),
    ("runs", "lease_expires_at", True),
    ("runs", "dead_lettered_at", True),
    ("schedules", "next_fire_at", True),
    ("schedules", "last_fire_at", True),
    ("schedules", "created_at", False),
    ("schedules", "updated_at", False),
    ("fires", "nominal_at", False),
    ("fires", "recorded_at", False),
    ("quarantines", "since", False),
    ("quarantines", "released_at", True),
)


def _alter(to: sa.types.TypeEngine[object], from_: sa.types.TypeEngine[object]) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table in dict.fromkeys(t for t, _, _ in COLUMNS):
        with op.batch_alter_table(table) as batch_op:
            for _, column, nullable in (c for c in COLUMNS if c[0] == table):
                batch_op.alter_column(
                    column, type_=to, existing_type=from_, existing_nullable=nullable
                )


def upgrade() -> None:
    _alter(mysql.DATETIME(timezone=True, fsp=6), mysql.DATETIME(timezone=True))


def downgrade() -> None:
    _alter(mysql.DATETIME(timezone=True), mysql.DATETIME(timezone=True, fsp=6))
