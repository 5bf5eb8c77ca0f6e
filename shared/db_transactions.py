"""Whole transactions in one call: a hot path's statements as one synchronous SQLAlchemy Core
function, `fn(conn: sqlalchemy.engine.Connection) -> T`, the same function on every dialect.

Through an AsyncSession on aiosqlite every statement is a hop to aiosqlite's thread and back
(begin, execute, fetch, close, commit), with the ORM's unit of work and greenlet switches on
top; a submit or an applied event costs several. Here:

- on a SQLite file, a transaction runs on the event loop's own thread, on a connection of
  its own without a busy timeout, when it can start at once: a write's BEGIN IMMEDIATE got
  the write lock (in the process, writes take the same turn as the service's sessions,
  shared.db._TakingTurns, so only another process's writer can hold it), a read's SELECTs
  met no lock (WAL: readers do not wait for writers but in rare recovery moments). A commit
  of a small row in WAL with synchronous=NORMAL is a write to the WAL file without fsync
  (~0.05 ms), cheaper than the hop to a thread and back (~0.1 ms of CPU: submit, wake, and
  call_soon_threadsafe's self-pipe write); this connection never checkpoints (no fsync on
  the loop): every `CHECKPOINT_EVERY` commits a PASSIVE checkpoint runs in the thread.
  Otherwise (the lock is held: "database is locked" at once, before anything ran), the
  transaction goes to one connection of a sync pysqlite engine living in one thread of its
  own, with the busy timeout (the executor's outbox writer does the same). Writes start
  with BEGIN IMMEDIATE, so the write lock is taken first and the busy timeout applies to it
  (a deferred BEGIN that upgrades to a write can fail at once with "database is locked").
  The file is WAL since migration (shared.db.ensure_wal), so reads do not wait for writers.
- on PostgreSQL and MariaDB (and in-memory SQLite, which only the async engine's connection
  sees), the function runs through `AsyncConnection.run_sync` on the service's async engine:
  one greenlet, the driver's own async I/O.

Each write is a "db.transaction <service>" span inside a traced operation, as a session's
`begin()` transactions are (shared.db_tracing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
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

log = logging.getLogger(__name__)
P = ParamSpec("P")
# Commits on the loop's connection between two PASSIVE checkpoints in the thread.
CHECKPOINT_EVERY = 500
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
        on_loop: bool = True,
    ) -> None:
        self._engine = engine
        self._turn = turn
        self._span = span
        self._metrics = metrics
        self._counters: dict[str, Any] = {}  # path -> its child of metrics.transactions
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._conn: Connection | None = None
        self._immediate = False  # the next BEGIN's kind; read in the thread only
        self._loop_sync: Engine | None = None
        self._loop_conn: Connection | None = None
        self._loop_driver: Any = None  # its sqlite3 connection
        self._loop_immediate = False  # the next BEGIN's kind on the loop's connection
        self._loop_commits = 0
        self._checkpoint: asyncio.Future[Any] | None = None
        path = sqlite_file(engine.url)
        if path is not None and on_loop:
            self._loop_sync = sqlalchemy.create_engine(
                f"sqlite:///{path}", poolclass=StaticPool, connect_args={"timeout": 0}
            )
            event.listen(self._loop_sync, "connect", _loop_connect)
            event.listen(self._loop_sync, "begin", self._begin_on_loop)
            if metrics is not None:
                metrics.instrument_statements(self._loop_sync)
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
        with transaction_scope(self._span):
            if self._thread is None:
                self._count("engine")
                async with self._engine.begin() as conn:
                    return await conn.run_sync(fn, *args, **kwargs)
            held = await self._turn.acquire() if self._turn is not None else False
            try:
                return await self._loop_or_thread(True, fn, *args, **kwargs)
            finally:
                if held and self._turn is not None:
                    self._turn.release()

    async def read(self, fn: Work[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(conn, *args)` in a transaction that is rolled back (it must not write); not
        traced, as a session's reads outside `begin()` are not."""
        if self._thread is None:
            self._count("engine")
            async with self._engine.connect() as conn:
                return await conn.run_sync(fn, *args, **kwargs)
        return await self._loop_or_thread(False, fn, *args, **kwargs)

    async def _loop_or_thread(
        self, immediate: bool, fn: Work[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """On the loop's connection when SQLite allows it at once, else in the thread."""
        done, result = self._on_loop(immediate, fn, *args, **kwargs)
        if done:
            self._count("loop")
            return result  # type: ignore[return-value]
        self._count("thread")
        return await self._in_thread(immediate, fn, *args, **kwargs)

    def _count(self, path: str) -> None:
        if self._metrics is None:
            return
        counter = self._counters.get(path)
        if counter is None:  # looked up once a path (labels() costs more than inc())
            counter = self._counters[path] = self._metrics.transactions.labels(
                self._metrics.service, path
            )
        counter.inc()

    def _on_loop(
        self, immediate: bool, fn: Work[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> tuple[bool, T | None]:
        """(True, result) when the transaction ran on the loop's connection; (False, None)
        when the database was locked before anything ran (the caller goes to the thread).

        BEGIN, COMMIT and ROLLBACK go to the driver itself: SQLAlchemy's Connection.begin()
        and its Transaction cost more than the statements (~5 µs a transaction, 2-4 a run).
        A function that runs a Core statement makes the Connection begin on its own (the
        "begin" listener then sees the driver's transaction and adds no BEGIN); that one is
        ended through the Connection, so it never holds a transaction between calls."""
        if self._loop_sync is None:
            return False, None
        if self._loop_conn is None:
            self._loop_conn = self._loop_sync.connect()
            self._loop_driver = self._loop_conn.connection.driver_connection
        conn, driver = self._loop_conn, self._loop_driver
        self._loop_immediate = immediate
        try:
            driver.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                return False, None
            raise _wrapped(exc) from exc
        try:
            result = _driver_errors(fn, conn, *args, **kwargs)
        except BaseException as exc:
            _end(conn, driver, commit=False)
            errors = (sqlalchemy.exc.OperationalError, sqlite3.OperationalError)
            locked = isinstance(exc, errors) and _locked(exc)
            if not immediate and locked:  # a read met a lock (WAL recovery): read in the thread
                return False, None
            raise
        _end(conn, driver, commit=immediate)  # a read is rolled back
        if immediate:
            self._committed_on_loop()
        return True, result

    def _committed_on_loop(self) -> None:
        """Every CHECKPOINT_EVERY commits, a PASSIVE checkpoint in the thread (the loop's
        connection never checkpoints: that may fsync)."""
        self._loop_commits += 1
        if self._loop_commits % CHECKPOINT_EVERY or self._thread is None:
            return
        if self._checkpoint is not None and not self._checkpoint.done():
            return

        def checkpoint() -> None:
            if self._conn is None:
                assert self._sync is not None
                self._conn = self._sync.connect()
            driver: Any = self._conn.connection.driver_connection
            driver.execute("PRAGMA wal_checkpoint(PASSIVE)")

        future = asyncio.get_running_loop().run_in_executor(self._thread, checkpoint)
        future.add_done_callback(_log_failure)
        self._checkpoint = future

    def _begin_on_loop(self, conn: Connection) -> None:
        # The Connection began on its own (a Core statement): inside `_on_loop`'s BEGIN.
        driver: Any = conn.connection.driver_connection
        if not driver.in_transaction:
            driver.execute("BEGIN IMMEDIATE" if self._loop_immediate else "BEGIN")

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
                    return _driver_errors(fn, self._conn, *args, **kwargs)
            transaction = self._conn.begin()
            try:
                return _driver_errors(fn, self._conn, *args, **kwargs)
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
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = self._loop_driver = None
        if self._loop_sync is not None:
            self._loop_sync.dispose()
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


def _end(conn: Connection, driver: sqlite3.Connection, *, commit: bool) -> None:
    """Commit (or roll back) the loop's transaction: through the Connection when it began
    on its own, else on the driver; a failed COMMIT is rolled back and raised as SQLAlchemy
    raises it."""
    if conn.in_transaction():
        if commit:
            conn.commit()
        else:
            conn.rollback()
        return
    if not commit:
        driver.rollback()
        return
    try:
        driver.commit()
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            driver.rollback()
        raise _wrapped(exc) from exc


def _wrapped(exc: sqlite3.Error) -> sqlalchemy.exc.StatementError:
    """The driver's error as SQLAlchemy raises it (OperationalError, IntegrityError...)."""
    return sqlalchemy.exc.DBAPIError.instance(None, None, exc, sqlite3.Error)


def _driver_errors(fn: Work[P, T], conn: Connection, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(conn, ...)`, with the errors of statements it ran on the sqlite3 driver itself
    (shared/sqlite_rows.py) raised as SQLAlchemy raises the driver's errors (IntegrityError
    for a unique key, OperationalError...), so callers catch one kind whatever the path."""
    try:
        return fn(conn, *args, **kwargs)
    except sqlite3.Error as exc:
        raise _wrapped(exc) from exc


def _pysqlite_connect(dbapi_connection: Any, record: Any) -> None:
    # Transactions are begun explicitly (the "begin" event), not by the driver.
    dbapi_connection.isolation_level = None
    _sqlite_pragmas(dbapi_connection, record)


def _loop_connect(dbapi_connection: Any, record: Any) -> None:
    """The loop's connection: never waits for a lock (it answers "database is locked" at
    once and the transaction goes to the thread) and never checkpoints."""
    _pysqlite_connect(dbapi_connection, record)
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


def _locked(exc: Exception) -> bool:
    """Whether SQLite answered "database is locked" (SQLITE_BUSY), as raised by the driver
    or wrapped by SQLAlchemy."""
    orig = exc.orig if isinstance(exc, sqlalchemy.exc.OperationalError) else exc
    return isinstance(orig, sqlite3.OperationalError) and (
        "locked" in str(orig) or "busy" in str(orig)
    )


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("SQLite checkpoint failed: %s", future.exception())
