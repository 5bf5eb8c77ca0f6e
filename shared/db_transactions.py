"""Whole transactions in one call: a hot path's statements as one synchronous SQLAlchemy Core
function, `fn(conn: sqlalchemy.engine.Connection) -> T`, the same function on every dialect.

Through an AsyncSession on aiosqlite every statement is a hop to aiosqlite's thread and back
(begin, execute, fetch, close, commit), with the ORM's unit of work and greenlet switches on
top; a submit or an applied event costs several. Here:

- on a SQLite file, one connection of a sync pysqlite engine lives in one thread of its own
  and a transaction is one call into that thread (the executor's outbox writer does the
  same). Writes start with BEGIN IMMEDIATE, so the write lock is taken first and the busy
  timeout applies to it (a deferred BEGIN that upgrades to a write can fail at once with
  "database is locked"); in the process, they take the same turn as the service's sessions
  (shared.db._TakingTurns) rather than meet them in SQLite's busy handler. The file is WAL
  since migration (shared.db.ensure_wal), so reads do not wait for writers.
- on PostgreSQL and MariaDB (and in-memory SQLite, which only the async engine's connection
  sees), the function runs through `AsyncConnection.run_sync` on the service's async engine:
  one greenlet, the driver's own async I/O.

Each write is a "db.transaction <service>" span inside a traced operation, as a session's
`begin()` transactions are (shared.db_tracing)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.pool import StaticPool

from shared.db import DatabaseMetrics, _sqlite_pragmas, _Turn, sqlite_file, transaction_span
from shared.db_tracing import TransactionSpan, transaction_scope

P = ParamSpec("P")
T = TypeVar("T")
Work = Callable[Concatenate[Connection, P], T]


class Transactions:
    """Runs Core functions as transactions: `write` commits what the function did (or rolls
    it back if it raised), `read` never writes. Build it with `transactions()`."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        turn: _Turn | None = None,
        span: TransactionSpan | None = None,
        metrics: DatabaseMetrics | None = None,
    ) -> None:
        self._engine = engine
        self._turn = turn
        self._span = span
        self._metrics = metrics
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._conn: Connection | None = None
        self._immediate = False  # the next BEGIN's kind; read in the thread only
        path = sqlite_file(engine.url)
        if path is not None:
            self._sync = sqlalchemy.create_engine(
                f"sqlite:///{path}", poolclass=StaticPool, connect_args={"timeout": 30}
            )
            event.listen(self._sync, "connect", _pysqlite_connect)
            event.listen(self._sync, "begin", self._begin)
            if metrics is not None:
                metrics.instrument_statements(self._sync)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="db-transactions")

    async def write(self, fn: Work[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(conn, *args)` in one transaction, committed when this returns."""
        self._count()
        with transaction_scope(self._span):
            if self._thread is None:
                async with self._engine.begin() as conn:
                    return await conn.run_sync(fn, *args, **kwargs)
            held = await self._turn.acquire() if self._turn is not None else False
            try:
                return await self._in_thread(True, fn, *args, **kwargs)
            finally:
                if held and self._turn is not None:
                    self._turn.release()

    async def read(self, fn: Work[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(conn, *args)` in a transaction that is rolled back (it must not write); not
        traced, as a session's reads outside `begin()` are not."""
        self._count()
        if self._thread is None:
            async with self._engine.connect() as conn:
                return await conn.run_sync(fn, *args, **kwargs)
        return await self._in_thread(False, fn, *args, **kwargs)

    def _count(self) -> None:
        if self._metrics is not None:
            path = "engine" if self._thread is None else "thread"
            self._metrics.transactions.labels(self._metrics.service, path).inc()

    async def _in_thread(
        self, immediate: bool, fn: Work[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        def run() -> T:
            if self._conn is None:
                assert self._sync is not None
                self._conn = self._sync.connect()
            self._immediate = immediate
            if immediate:
                with self._conn.begin():
                    return fn(self._conn, *args, **kwargs)
            transaction = self._conn.begin()
            try:
                return fn(self._conn, *args, **kwargs)
            finally:
                transaction.rollback()

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    def _begin(self, conn: Connection) -> None:
        # On the driver's connection: the engine's statement path (execution context,
        # events, metrics) costs more than the BEGIN itself.
        driver: Any = conn.connection.driver_connection
        driver.execute("BEGIN IMMEDIATE" if self._immediate else "BEGIN")

    async def close(self) -> None:
        """Close the thread's connection (a no-op on the async engine's path)."""
        if self._thread is None:
            return

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._sync is not None:
                self._sync.dispose()

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)


def transactions(
    engine: AsyncEngine,
    sessions: async_sessionmaker[Any],
    *,
    tracer: Any = None,
    service: str = "",
    metrics: DatabaseMetrics | None = None,
) -> Transactions:
    """Transactions on the engine of `sessions` (shared.db.sessionmaker), taking the same
    turn as its SQLite sessions, traced and metered as they are."""
    turn = getattr(sessions.class_, "_turn", None)
    return Transactions(
        engine,
        turn=turn,
        span=transaction_span(tracer, service, engine.dialect.name),
        metrics=metrics,
    )


def transactions_of(sessions: async_sessionmaker[Any]) -> Transactions:
    """Untraced, unmetered transactions on the engine `sessions` are bound to (for tests and
    callers built without a service's tracer)."""
    engine = sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    return transactions(engine, sessions)


def _pysqlite_connect(dbapi_connection: Any, record: Any) -> None:
    # Transactions are begun explicitly (the "begin" event), not by the driver.
    dbapi_connection.isolation_level = None
    _sqlite_pragmas(dbapi_connection, record)
