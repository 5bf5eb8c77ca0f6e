"""Every service's Alembic migrations on a fresh database of every dialect:
upgrade head, models agree (alembic check), downgrade base, upgrade again.
(The catalogue has its own, in tests/integration/catalogue.)"""

from __future__ import annotations

import importlib

import pytest

from shared.db import alembic_config
from tests.integration.dialects import alembic, tables

SERVICES = {
    "scheduler": {"runs", "outbox"},
    "executor": {"outbox"},
    "alerting": {
        "processed_events",
        "rules",
        "channels",
        "silences",
        "alerts",
        "deliveries",
        "run_history",
        "watches",
    },
}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_upgrade_check_downgrade_round_trips(database_url: str, service: str) -> None:
    """upgrade head builds what the models describe; downgrade base removes it; upgrade again works."""
    migrations = importlib.import_module(f"services.{service}.server").MIGRATIONS
    cfg = alembic_config(migrations, database_url)
    await alembic(cfg, "upgrade", "head")
    assert await tables(database_url) >= SERVICES[service]
    await alembic(cfg, "check")
    await alembic(cfg, "downgrade", "base")
    assert await tables(database_url) <= {"alembic_version"}
    await alembic(cfg, "upgrade", "head")
    await alembic(cfg, "check")
