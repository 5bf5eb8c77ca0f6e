"""shared.db_transactions on every dialect: a Core function as one transaction, on the
loop's own connection on a SQLite file (in the dedicated thread when the database is
locked) and through run_sync on the async engine elsewhere;
rolled back when it raises; waiting for a lock another connection holds instead of failing;
taking turns with the service's sessions on SQLite."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from shared import db
from shared.db_transactions import Transactions, transactions
from shared.settings import DatabaseSettings
from shared.sqlite_rows import driver_of

METADATA = sa.MetaData()
COUNTERS = sa.Table(
    "counters",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("doc", sa.JSON, nullable=False),
    sa.Column("at", db.UTCDateTime(), nullable=True),
)


@dataclass
class Db:
    engine: AsyncEngine
    sessions: async_sessionmaker[sa.ext.asyncio.AsyncSession]
    tx: Transactions
    registry: CollectorRegistry


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Db]:
    engine = db.create_engine(DatabaseSettings(url=database_url))
    async with engine.begin() as conn:
        await conn.run_sync(METADATA.create_all)
        await conn.execute(sa.insert(COUNTERS).values(id=1, n=1, doc={}))
    if engine.dialect.name == "sqlite":  # what migration does (shared.db.upgrade)
        assert engine.url.database is not None
        db.ensure_wal(engine.url.database)
    sessions = db.sessionmaker(engine)
    registry = CollectorRegistry()
    tx = transactions(engine, sessions, metrics=db.DatabaseMetrics(registry, "svc"))
    try:
        yield Db(engine, sessions, tx, registry)
    finally:
        await tx.close()
        await engine.dispose()


def _n(conn: Connection) -> int:
    return int(conn.scalar(sa.select(COUNTERS.c.n).where(COUNTERS.c.id == 1)) or 0)


def _add(conn: Connection, by: int) -> int:
    """Read the counter (locking its row where the database can), then write it: a read
    before a write in one transaction."""
    n = conn.scalar(sa.select(COUNTERS.c.n).where(COUNTERS.c.id == 1).with_for_update())
    conn.execute(sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(n=int(n or 0) + by))
    return int(n or 0) + by


async def test_write_commits_and_read_sees_it_with_the_column_types(store: Db) -> None:
    """A write's rows are committed, typed columns round-trip, SQLite files use the thread."""
    at = datetime(2026, 12, 5, 7, 0, 1, 123456, tzinfo=timezone(timedelta(hours=2)))
    threads: list[str] = []

    def write(conn: Connection) -> None:
        threads.append(threading.current_thread().name)
        conn.execute(sa.insert(COUNTERS).values(id=2, n=7, doc={"a": [1, "x"]}, at=at))

    def read(conn: Connection) -> tuple[int, dict[str, object], datetime]:
        row = conn.execute(sa.select(COUNTERS).where(COUNTERS.c.id == 2)).one()
        return row.n, row.doc, row.at

    await store.tx.write(write)
    n, doc, stored_at = await store.tx.read(read)

    assert (n, doc, stored_at) == (7, {"a": [1, "x"]}, at.astimezone(UTC))
    assert stored_at.tzinfo is UTC
    async with store.sessions() as session:  # the service's sessions see it too
        assert await session.scalar(sa.select(COUNTERS.c.n).where(COUNTERS.c.id == 2)) == 7
    on_sqlite = store.engine.dialect.name == "sqlite"
    # On a SQLite file a transaction that meets no lock runs on the loop's own connection.
    assert paths(store) == ({"loop": 2} if on_sqlite else {"engine": 2})
    assert threads == [threading.current_thread().name]
    if on_sqlite:  # metered as the engine's statements are
        count = store.registry.get_sample_value(
            "runbox_db_query_duration_seconds_count", {"service": "svc", "statement": "INSERT"}
        )
        assert count == 1


def paths(store: Db) -> dict[str, int]:
    """Transactions counted by where they ran."""
    out: dict[str, int] = {}
    for path in ("loop", "thread", "engine"):
        n = store.registry.get_sample_value(
            "runbox_db_core_transactions_total", {"service": "svc", "path": path}
        )
        if n:
            out[path] = int(n)
    return out


async def test_write_is_rolled_back_when_its_function_raises(store: Db) -> None:
    """Nothing of a write whose function raised is committed; the error reaches the caller."""

    def fail(conn: Connection) -> None:
        _add(conn, 5)
        raise LookupError("no")

    with pytest.raises(LookupError):
        await store.tx.write(fail)

    assert await store.tx.read(_n) == 1
    assert await store.tx.write(_add, 1) == 2  # the connection is usable afterwards


def _add_on_driver(conn: Connection, by: int, *, core_too: bool = False) -> int:
    """_add on the sqlite3 driver itself where there is one (the hot paths' way,
    shared/sqlite_rows.py), with a Core statement after it if `core_too`."""
    driver = driver_of(conn)
    if driver is None:
        n = _add(conn, by)
    else:
        driver.execute("UPDATE counters SET n = n + ? WHERE id = 1", (by,))
        n = driver.execute("SELECT n FROM counters WHERE id = 1").fetchone()[0]
    if core_too:
        conn.execute(sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(doc={"by": by}))
    return int(n)


async def test_write_on_the_driver_commits_or_rolls_back_with_core_statements_or_not(
    store: Db,
) -> None:
    """Statements run on the driver alone, or followed by a Core statement, are committed
    together, or rolled back together when the function raises; no transaction is left open
    between calls (another connection can write right after)."""

    def fail(conn: Connection) -> None:
        _add_on_driver(conn, 100, core_too=True)
        raise LookupError("no")

    assert await store.tx.write(_add_on_driver, 1) == 2
    assert await store.tx.write(_add_on_driver, 2, core_too=True) == 4
    with pytest.raises(LookupError):
        await store.tx.write(fail)
    with pytest.raises(LookupError):
        await store.tx.write(lambda conn: [_add_on_driver(conn, 100), fail(conn)])

    async with store.sessions() as session:
        row = (await session.execute(sa.select(COUNTERS).where(COUNTERS.c.id == 1))).one()
        assert (row.n, row.doc) == (4, {"by": 2})
    async with store.sessions() as session, session.begin():  # nothing holds the write lock
        await session.execute(
            sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(n=COUNTERS.c.n + 1)
        )
    assert await store.tx.read(_n) == 5
    if store.engine.dialect.name == "sqlite":
        assert paths(store) == {"loop": 3}  # failed writes are not counted


async def test_write_waits_for_a_lock_another_connection_holds(
    store: Db, database_url: str
) -> None:
    """A read-then-write transaction waits for another connection's write to commit and
    then builds on it (SQLite: BEGIN IMMEDIATE, a deferred one fails 'database is locked')."""
    other = db.create_engine(DatabaseSettings(url=database_url))
    try:
        async with other.connect() as holder:
            await holder.execute(
                sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(n=COUNTERS.c.n + 10)
            )
            write = asyncio.create_task(store.tx.write(_add, 1))
            await asyncio.sleep(0.3)  # the write is under way, blocked by the holder
            assert not write.done()
            await holder.commit()
            assert await write == 12
    finally:
        await other.dispose()
    assert await store.tx.read(_n) == 12
    if store.engine.dialect.name == "sqlite":
        # The locked write went to the thread (the loop never waits); the next ones do not.
        assert paths(store) == {"thread": 1, "loop": 1}
        assert await store.tx.write(_add, 1) == 13
        assert paths(store) == {"thread": 1, "loop": 2}


async def test_writes_take_turns_with_session_transactions(store: Db) -> None:
    """Writes through the thread and through the service's sessions, concurrently, all
    commit (on SQLite they take one turn instead of failing on each other's locks)."""

    async def by_session() -> None:
        async with store.sessions() as session, session.begin():
            n = await session.scalar(
                sa.select(COUNTERS.c.n).where(COUNTERS.c.id == 1).with_for_update()
            )
            await session.execute(
                sa.update(COUNTERS).where(COUNTERS.c.id == 1).values(n=int(n or 0) + 1)
            )

    async def by_transactions() -> None:
        await store.tx.write(_add, 1)

    await asyncio.gather(*(f() for _ in range(20) for f in (by_session, by_transactions)))

    assert await store.tx.read(_n) == 41
