"""The catalogue's Alembic migrations on a fresh SQLite file."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

from services.catalogue.server import MIGRATIONS
from shared.db import alembic_config


def _tables(db_file: Path) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{db_file}")
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_then_downgrade_leaves_an_empty_database(tmp_path: Path) -> None:
    """upgrade head creates the schema the models describe; downgrade base removes it."""
    db_file = tmp_path / "catalogue.db"
    cfg = alembic_config(MIGRATIONS, f"sqlite+aiosqlite:///{db_file}")
    command.upgrade(cfg, "head")
    assert {"scripts", "script_versions", "outbox"} <= _tables(db_file)
    command.check(cfg)  # the models and the migrations agree
    command.downgrade(cfg, "base")
    assert _tables(db_file) <= {"alembic_version"}
