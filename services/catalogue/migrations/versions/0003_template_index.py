"""Index for template listings (is_template, name).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_scripts_is_template_name", "scripts", ["is_template", "name"])


def downgrade() -> None:
    op.drop_index("ix_scripts_is_template_name", table_name="scripts")
