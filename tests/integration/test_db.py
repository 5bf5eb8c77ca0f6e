"""shared.db engines on every dialect: configured pools, and the Prometheus
metrics (pool gauges, checkouts, waits, timeouts, statement latency by kind)
moving as the engine is used."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.executor.outbox_writer import SqliteOutboxWriter
from services.executor.server import MIGRATIONS as EXECUTOR_MIGRATIONS
from shared.db import (
    DatabaseMetrics,
    UTCDateTime,
    create_engine,
    key_string,
    statement_kind,
    upgrade,
)
from shared.outbox import OutboxMessage
from shared.settings import DatabaseSettings

POOL = {"service": "svc", "pool": "main"}
TYPES = sa.MetaData()
STAMPS = sa.Table(
    "stamps",
    TYPES,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", key_string(20), unique=True),
    sa.Column("at", UTCDateTime()),
    mysql_charset="utf8mb4",
)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _queries(registry: CollectorRegistry, kind: str) -> float:
    return _value(registry, "runbox_db_query_duration_seconds_count", service="svc", statement=kind)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "SELECT"),
        ("  select * from t", "SELECT"),
        ("INSERT INTO t VALUES (1)", "INSERT"),
        ("update t set a = 1", "UPDATE"),
        ("DELETE FROM t", "DELETE"),
        ("CREATE TABLE t (a INT)", "OTHER"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "OTHER"),
        ("", "OTHER"),
    ],
)
def test_statement_kind_is_a_small_fixed_label(sql: str, kind: str) -> None:
    """Only the leading keyword picks the label; the SQL text never becomes one."""
    assert statement_kind(sql) == kind


async def test_queries_and_checkouts_move_the_metrics(database_url: str) -> None:
    """Each statement kind is counted, checkouts are counted and timed, and the
    checked-out gauge follows a held connection."""
    registry = CollectorRegistry()
    settings = DatabaseSettings(url=database_url, pool_size=3, max_overflow=2)
    engine = create_engine(settings, metrics=DatabaseMetrics(registry, "svc"))
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE metered (id INTEGER PRIMARY KEY, v INTEGER)"))
            assert _value(registry, "runbox_db_pool_checked_out_connections", **POOL) == 1
            await conn.execute(sa.text("INSERT INTO metered (id, v) VALUES (1, 1)"))
            await conn.execute(sa.text("UPDATE metered SET v = 2 WHERE id = 1"))
            assert (await conn.execute(sa.text("SELECT v FROM metered"))).scalar_one() == 2
            await conn.execute(sa.text("DELETE FROM metered"))
            await conn.execute(sa.text("DROP TABLE metered"))
        for kind in ("INSERT", "UPDATE", "SELECT", "DELETE", "OTHER"):
            assert _queries(registry, kind) >= 1, kind
        assert _value(registry, "runbox_db_pool_checked_out_connections", **POOL) == 0
        assert _value(registry, "runbox_db_pool_size_connections", **POOL) == 3
        assert _value(registry, "runbox_db_pool_overflow_connections", **POOL) == 0
        assert _value(registry, "runbox_db_pool_checkouts_total", **POOL) >= 1
        assert _value(registry, "runbox_db_pool_checkout_wait_seconds_count", **POOL) >= 1
        selects = _queries(registry, "SELECT")
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        assert _queries(registry, "SELECT") == selects + 1
    finally:
        await engine.dispose()


async def test_failed_statements_are_counted_by_kind(database_url: str) -> None:
    """A statement the database refuses counts as an error of its kind."""
    registry = CollectorRegistry()
    engine = create_engine(
        DatabaseSettings(url=database_url), metrics=DatabaseMetrics(registry, "svc")
    )
    try:
        with pytest.raises(DBAPIError):
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT * FROM no_such_table"))
        errors = _value(registry, "runbox_db_query_errors_total", service="svc", statement="SELECT")
        assert errors == 1
    finally:
        await engine.dispose()


async def test_an_exhausted_pool_times_out_and_counts_it(database_url: str) -> None:
    """With every connection held, a checkout gives up after pool_timeout_s and is counted;
    the overflow gauge shows the connection opened beyond pool_size."""
    registry = CollectorRegistry()
    settings = DatabaseSettings(url=database_url, pool_size=1, max_overflow=1, pool_timeout_s=0.2)
    engine = create_engine(settings, metrics=DatabaseMetrics(registry, "svc"))
    try:
        async with engine.connect() as first, engine.connect() as second:
            await first.execute(sa.text("SELECT 1"))
            await second.execute(sa.text("SELECT 1"))
            assert _value(registry, "runbox_db_pool_checked_out_connections", **POOL) == 2
            assert _value(registry, "runbox_db_pool_overflow_connections", **POOL) == 1
            with pytest.raises(PoolTimeout):
                async with engine.connect():
                    pass
        assert _value(registry, "runbox_db_pool_checkout_timeouts_total", **POOL) == 1
    finally:
        await engine.dispose()


def test_pool_settings_come_from_database_settings() -> None:
    """pool_size, max_overflow, pool_timeout_s and pool_recycle_s reach the pool."""
    settings = DatabaseSettings(
        url="sqlite+aiosqlite:///:memory:",
        pool_size=7,
        max_overflow=3,
        pool_timeout_s=4.5,
        pool_recycle_s=600,
        pool_pre_ping=False,
    )
    memory = create_engine(settings)
    assert memory.sync_engine.pool.__class__.__name__ == "NullPool"
    engine = create_engine(settings.model_copy(update={"url": "postgresql+asyncpg://h/db"}))
    pool = engine.sync_engine.pool
    assert (pool.size(), pool.timeout(), pool._recycle, pool._pre_ping) == (7, 4.5, 600, False)  # type: ignore[attr-defined]
    assert pool._max_overflow == 3  # type: ignore[attr-defined]


async def test_timestamps_and_keys_behave_alike_on_every_dialect(database_url: str) -> None:
    """UTCDateTime keeps the instant and its microseconds and reads back in UTC;
    key_string keeps values differing in case or trailing spaces apart."""
    engine = create_engine(DatabaseSettings(url=database_url))
    berlin = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(TYPES.create_all)
            await conn.execute(
                STAMPS.insert(),
                [
                    {"id": 1, "key": "name", "at": berlin},
                    {"id": 2, "key": "Name", "at": datetime(2026, 3, 1, 10, 30)},  # naive: UTC
                    {"id": 3, "key": "name ", "at": None},
                ],
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(STAMPS).order_by(STAMPS.c.id))).all()
            exact = (await conn.execute(sa.select(STAMPS.c.id).where(STAMPS.c.key == "name"))).all()
            ordered = (await conn.execute(sa.select(STAMPS.c.key).order_by(STAMPS.c.key))).all()
        assert rows[0].at == berlin and rows[0].at.tzinfo == UTC
        assert rows[0].at.microsecond == 123456
        assert rows[1].at == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
        assert rows[2].at is None
        assert exact == [(1,)]
        assert [k for (k,) in ordered] == ["Name", "name", "name "]
    finally:
        await engine.dispose()


async def test_migration_makes_a_sqlite_file_wal_before_the_service_opens_it(
    tmp_path: Path,
) -> None:
    """CI once failed an Execute with "database is locked": the migrated file was still in
    rollback-journal mode, so the executor's outbox writer switched it to WAL on its first
    use while the relay held a lock. The switch is made once, at migration, so no
    connection the service opens later has to."""
    path = tmp_path / "executor.db"
    await upgrade(EXECUTOR_MIGRATIONS, f"sqlite+aiosqlite:///{path}")
    fresh = sqlite3.connect(path)
    try:
        assert fresh.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        fresh.close()
    # The relay holds the write lock when the writer is first used: the writer waits for it.
    relay = sqlite3.connect(path, isolation_level=None)
    relay.execute("BEGIN IMMEDIATE")
    writer = SqliteOutboxWriter(str(path), busy_timeout_s=10)
    try:
        staged = asyncio.create_task(writer.insert([OutboxMessage("s", "m1", b"x")]))
        await asyncio.sleep(0.3)
        assert not staged.done()
        relay.execute("COMMIT")
        await staged
        assert await writer.created_at("m1") is not None
    finally:
        relay.close()
        await writer.close()
