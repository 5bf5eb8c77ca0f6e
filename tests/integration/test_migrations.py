"""Every service's Alembic migrations on a fresh SQLite file: upgrade head,
models agree (alembic check), downgrade base. (The catalogue has its own.)"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from shared.db import alembic_config

SERVICES = {
    "scheduler": {"runs", "outbox"},
    "executor": {"outbox"},
    "alerting": {"processed_events"},
}


def _tables(db_file: Path) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{db_file}")
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_upgrade_check_downgrade_round_trips(tmp_path: Path, service: str) -> None:
    """upgrade head builds what the models describe; downgrade base removes it."""
    migrations = importlib.import_module(f"services.{service}.server").MIGRATIONS
    db_file = tmp_path / f"{service}.db"
    cfg = alembic_config(migrations, f"sqlite+aiosqlite:///{db_file}")
    command.upgrade(cfg, "head")
    assert SERVICES[service] <= _tables(db_file)
    command.check(cfg)
    command.downgrade(cfg, "base")
    assert _tables(db_file) <= {"alembic_version"}
