"""The catalogue's Alembic migrations on a fresh database of every dialect."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from services.catalogue.models import Base
from services.catalogue.server import MIGRATIONS
from shared.db import alembic_config, engine_url
from tests.integration.dialects import alembic, tables

TABLES = {"scripts", "script_versions", "script_tags", "audit_records", "outbox"}
# Column details alembic check does not compare (it ignores a collation or a
# precision that only one side states), read from information_schema.
_DETAILS = {
    "postgresql": "SELECT table_name, column_name, collation_name, datetime_precision "
    "FROM information_schema.columns WHERE table_schema = current_schema()",
    "mysql": "SELECT table_name, column_name, collation_name, datetime_precision "
    "FROM information_schema.columns WHERE table_schema = DATABASE()",
}


def _declared(dialect: sa.Dialect) -> dict[tuple[str, str], tuple[str | None, int | None]]:
    """(table, column) -> (collation, fractional digits) the models ask for on the dialect."""
    declared = {}
    for table in Base.metadata.tables.values():
        for column in table.columns:
            impl: Any = column.type.dialect_impl(dialect)
            impl = getattr(impl, "impl_instance", impl)  # a TypeDecorator's dialect type
            collation, fsp = getattr(impl, "collation", None), getattr(impl, "fsp", None)
            if collation or fsp:
                declared[(table.name, column.name)] = (collation, fsp)
    return declared


def _details(conn: Connection) -> dict[tuple[str, str], tuple[str | None, int | None]]:
    declared = _declared(conn.dialect)
    if not declared:
        return {}  # SQLite: BINARY comparison and full precision need no declaration
    rows = conn.execute(sa.text(_DETAILS[conn.dialect.name])).all()
    found = {(t, c): (coll, prec) for t, c, coll, prec in rows if (t, c) in declared}
    return {
        key: (coll if declared[key][0] else None, prec if declared[key][1] else None)
        for key, (coll, prec) in found.items()
    }


async def test_upgrade_downgrade_upgrade_round_trips(database_url: str) -> None:
    """upgrade head builds what the models describe (alembic check), downgrade
    base removes all of it, and upgrading again works."""
    cfg = alembic_config(MIGRATIONS, database_url)
    await alembic(cfg, "upgrade", "head")
    assert await tables(database_url) >= TABLES
    await alembic(cfg, "check")  # the models and the migrations agree
    await alembic(cfg, "downgrade", "base")
    assert await tables(database_url) <= {"alembic_version"}
    await alembic(cfg, "upgrade", "head")
    assert await tables(database_url) >= TABLES
    await alembic(cfg, "check")


async def test_migrated_columns_have_the_collations_and_precision_of_the_models(
    database_url: str,
) -> None:
    """Byte-wise collations on identifiers and microsecond timestamps, as declared."""
    cfg = alembic_config(MIGRATIONS, database_url)
    await alembic(cfg, "upgrade", "head")
    engine = create_async_engine(engine_url(database_url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            declared = _declared(conn.dialect)
            found = await conn.run_sync(_details)
    finally:
        await engine.dispose()
    assert found == declared
    if engine.dialect.name != "sqlite":
        assert ("scripts", "name") in declared and ("outbox", "msg_id") in declared
