"""Async SQLAlchemy engines, their Prometheus metrics, column types that behave
the same on SQLite, PostgreSQL and MariaDB, and Alembic migrations for a
service's own database."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import DateTime, Dialect, String, TypeDecorator, event
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, NullPool, QueuePool
from sqlalchemy.types import TypeEngine

from shared.db_tracing import TracedTransactions, TransactionSpan
from shared.migration_lock import migration_lock
from shared.settings import DatabaseSettings
from shared.telemetry import ContextTracer

log = logging.getLogger(__name__)

# Statement latencies: a primary-key read on loopback is ~0.2 ms, a slow scan seconds.
QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Checkout waits: zero while the pool has idle connections, up to pool_timeout_s when full.
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30)
STATEMENT_KINDS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})


def key_string(length: int) -> String:
    """VARCHAR for names, tags, versions, owners and keys, compared byte for byte
    on every dialect as SQLite's BINARY collation does. MariaDB's default
    collations fold case and pad spaces ('Foo ' = 'foo': lookups and unique
    indexes would merge distinct values); PostgreSQL's follow the server locale,
    whose order varies per deployment and whose btree indexes cannot serve
    LIKE 'prefix%'. utf8mb4_nopad_bin and "C" compare bytes."""
    return (
        String(length)
        .with_variant(
            mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_nopad_bin"),
            "mysql",
            "mariadb",
        )
        .with_variant(postgresql.VARCHAR(length, collation="C"), "postgresql")
    )


def precise_datetime() -> DateTime:
    """DateTime(timezone=True) kept to the microsecond on every dialect: MariaDB's DATETIME
    keeps whole seconds unless declared DATETIME(6) (a 12 ms run would read back as lasting
    0 s, runs created within one second would lose their order). Same Python values as
    DateTime(timezone=True) everywhere (no TypeDecorator on the hot path)."""
    return DateTime(timezone=True).with_variant(  # type: ignore[return-value]
        mysql.DATETIME(timezone=True, fsp=6), "mysql", "mariadb"
    )


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time stored as UTC and read back timezone-aware on every dialect.

    PostgreSQL keeps the zone (TIMESTAMPTZ). SQLite and MariaDB store naive
    values, so they are converted to UTC on the way in and marked UTC on the
    way out (a naive value passed in is taken as UTC). MariaDB's DATETIME keeps microseconds only with fsp=6, which page
    cursors over update times and the API's timestamps need."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # Naive values are taken as UTC (what SQLite and MariaDB hand back).
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc if dialect.name == "postgresql" else utc.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def statement_kind(statement: str) -> str:
    """SELECT/INSERT/UPDATE/DELETE or OTHER: a label, never the SQL text."""
    words = statement.lstrip(" \t\r\n(").split(None, 1)
    kind = words[0].upper() if words else ""
    return kind if kind in STATEMENT_KINDS else "OTHER"


class DatabaseMetrics:
    """Pool and statement metrics of one process's engines, on its explicit registry.

    Build one per registry and pass it to every create_engine call."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        pool_labels = ["service", "pool"]
        self.pool_size = Gauge(
            "runbox_db_pool_size_connections",
            "Connections the pool keeps open (pool_size).",
            pool_labels,
            registry=registry,
        )
        self.checked_out = Gauge(
            "runbox_db_pool_checked_out_connections",
            "Connections lent out of the pool right now.",
            pool_labels,
            registry=registry,
        )
        self.overflow = Gauge(
            "runbox_db_pool_overflow_connections",
            "Connections open beyond pool_size right now (at most max_overflow).",
            pool_labels,
            registry=registry,
        )
        self.checkouts = Counter(
            "runbox_db_pool_checkouts_total",
            "Connections taken from the pool.",
            pool_labels,
            registry=registry,
        )
        self.checkout_wait = Histogram(
            "runbox_db_pool_checkout_wait_seconds",
            "Time spent waiting for a pooled connection (opening one included).",
            pool_labels,
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.checkout_timeouts = Counter(
            "runbox_db_pool_checkout_timeouts_total",
            "Checkouts that gave up after pool_timeout_s: the pool was exhausted.",
            pool_labels,
            registry=registry,
        )
        self.query_duration = Histogram(
            "runbox_db_query_duration_seconds",
            "Statement execution time on the driver, by statement kind.",
            ["service", "statement"],
            buckets=QUERY_BUCKETS,
            registry=registry,
        )
        self.transactions = Counter(
            "runbox_db_core_transactions_total",
            "Transactions of the Core per-transaction path (shared.db_transactions), by where"
            " they ran: loop or thread (SQLite's own connections) or engine (the async engine).",
            ["service", "path"],
            registry=registry,
        )
        self.query_errors = Counter(
            "runbox_db_query_errors_total",
            "Statements the database or driver refused, by statement kind.",
            ["service", "statement"],
            registry=registry,
        )

    def pool_class(self, pool: str) -> type[AsyncAdaptedQueuePool]:
        """The async queue pool class for one engine, timing its checkouts."""
        labels = (self.service, pool)
        return _metered_pool(
            self.checkout_wait.labels(*labels).observe,
            self.checkout_timeouts.labels(*labels).inc,
        )

    def instrument(self, engine: AsyncEngine, pool: str) -> None:
        """Pool gauges read at scrape time, checkout and statement events."""
        sync_engine = engine.sync_engine
        self.instrument_statements(sync_engine)

        def state() -> tuple[int, int, int]:
            current = sync_engine.pool  # replaced by dispose(), so looked up each time
            if isinstance(current, QueuePool):
                return current.size(), current.checkedout(), max(current.overflow(), 0)
            return 0, 0, 0  # NullPool: no connection outlives its checkout

        labels = (self.service, pool)
        self.pool_size.labels(*labels).set_function(lambda: state()[0])
        self.checked_out.labels(*labels).set_function(lambda: state()[1])
        self.overflow.labels(*labels).set_function(lambda: state()[2])
        checkouts = self.checkouts.labels(*labels)
        event.listen(sync_engine.pool, "checkout", lambda *_: checkouts.inc())

    def instrument_statements(self, engine: Engine) -> None:
        """Statement durations and errors of a sync engine (an async engine's sync_engine)."""
        event.listen(engine, "before_cursor_execute", _start_clock)
        event.listen(engine, "after_cursor_execute", self._stop_clock)
        event.listen(engine, "handle_error", self._count_error)

    def _stop_clock(
        self, _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        started = getattr(context, "_runbox_started", None)
        if started is not None:
            kind = statement_kind(statement)
            self.query_duration.labels(self.service, kind).observe(time.perf_counter() - started)

    def _count_error(self, exception_context: Any) -> None:
        kind = statement_kind(exception_context.statement or "")
        self.query_errors.labels(self.service, kind).inc()


def _start_clock(
    _conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
) -> None:
    if context is not None:
        context._runbox_started = time.perf_counter()


def _metered_pool(
    observe: Callable[[float], None], timed_out: Callable[[], None]
) -> type[AsyncAdaptedQueuePool]:
    """The async queue pool, timing each checkout. SQLAlchemy has no event
    before a checkout, so the wait is measured around the pool's own get; a
    subclass (not a patched instance) survives the pool's recreate() on dispose."""

    class MeteredPool(AsyncAdaptedQueuePool):
        def _do_get(self) -> ConnectionPoolEntry:
            started = time.perf_counter()
            try:
                return super()._do_get()
            except PoolTimeout:
                timed_out()
                raise
            finally:
                observe(time.perf_counter() - started)

    return MeteredPool


def engine_url(url: str | URL) -> URL:
    """The URL with what every dialect needs: MariaDB/MySQL talk utf8mb4
    (drivers otherwise take the server's default, often latin1 or 3-byte utf8)."""
    parsed = make_url(url)
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def create_engine(
    settings: DatabaseSettings, *, metrics: DatabaseMetrics | None = None, pool: str = "main"
) -> AsyncEngine:
    """An engine for the URL with the configured pool, metered when metrics are
    given (`pool` labels this engine's pool metrics: one name per engine).

    SQLite gets WAL, foreign keys and a busy timeout, and its parent directory
    is created; an in-memory SQLite database has no pool."""
    url = engine_url(settings.url)
    kwargs: dict[str, Any] = {"echo": settings.echo}
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if url.get_backend_name() == "sqlite":
        if not in_memory and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    if in_memory:
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout_s,
            pool_recycle=settings.pool_recycle_s,
            # A SQLite file does not drop connections: no round trip to test one.
            pool_pre_ping=settings.pool_pre_ping and url.get_backend_name() != "sqlite",
        )
        if metrics is not None:
            kwargs["poolclass"] = metrics.pool_class(pool)
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    if metrics is not None:
        metrics.instrument(engine, pool)
    return engine


def sqlite_file(url: str | URL) -> str | None:
    """The database file of a SQLite URL; None for another dialect or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: the statements below may wait on a lock
    cursor.execute("PRAGMA journal_mode")
    if str(cursor.fetchone()[0]).lower() != "wal":  # an in-memory database, or not migrated
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def ensure_wal(database: str, busy_timeout_s: float = 30) -> None:
    """Make a SQLite file WAL (persistent: stored in the file). Done once, at migration,
    before the service opens other connections: switching the mode needs the file to
    itself, and a connection switching it while another one reads or writes can fail at
    once with "database is locked" (seen in CI), whatever its busy timeout."""
    conn = sqlite3.connect(database, timeout=busy_timeout_s, isolation_level=None)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def transaction_span(
    tracer: trace.Tracer | None, service: str, dialect: str
) -> TransactionSpan | None:
    """How a service's transactions are traced; None when spans are not recorded."""
    if tracer is None or isinstance(tracer, ContextTracer):
        return None
    return TransactionSpan(tracer, service, dialect)


def sessionmaker(
    engine: AsyncEngine, *, tracer: trace.Tracer | None = None, service: str = ""
) -> async_sessionmaker[Any]:
    """Sessions on the engine; on SQLite their transactions take turns (see _TakingTurns).
    With a tracer, each `session.begin()` transaction is one span, "db.transaction
    <service>" (not one per statement; no SQL text or values in it)."""
    base: type[AsyncSession] = AsyncSession
    attributes: dict[str, Any] = {}
    if engine.dialect.name == "sqlite":
        base, attributes["_turn"] = _TakingTurns, _Turn()
    span = transaction_span(tracer, service, engine.dialect.name)
    if span is not None:
        attributes["_span"] = span
        base = type("TracedSession", (TracedTransactions, base), attributes)
    elif attributes:
        base = type("SQLiteSession", (base,), attributes)
    if base is AsyncSession:
        return async_sessionmaker(engine, expire_on_commit=False)
    return async_sessionmaker(engine, class_=base, expire_on_commit=False)


class _Turn:
    """A task-reentrant asyncio lock that gives up waiting after `wait_s`."""

    wait_s = 5.0

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None

    async def acquire(self) -> bool:
        """True if this call took the lock (and must release it)."""
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            return False
        if not self._lock.locked() and not getattr(self._lock, "_waiters", None):
            # Free with no one waiting: taken at once, without suspending (asyncio.wait_for
            # would first wrap the acquire in a task).
            await self._lock.acquire()
            self._owner = task
            return True
        try:
            await asyncio.wait_for(self._lock.acquire(), self.wait_s)
        except TimeoutError:
            log.warning("SQLite transaction waited %.0f s for its turn; going ahead", self.wait_s)
            return False
        self._owner = task
        return True

    def release(self) -> None:
        self._owner = None
        self._lock.release()


class _TakingTurns(AsyncSession):
    """SQLite has one writer at a time: transactions opened with `begin()` in one process
    take turns on an asyncio lock rather than colliding in SQLite, whose busy handler
    sleeps (1 ms growing to 100 ms a try) while another connection writes. A transaction
    nested in another of the same task passes; one that waits too long (a transaction
    waiting on a task that waits on it) goes ahead and SQLite's busy timeout applies."""

    _turn: _Turn

    def begin(self) -> Any:
        return _InTurn(self._turn, super().begin())


class _InTurn:
    def __init__(self, turn: _Turn, transaction: Any) -> None:
        self._turn = turn
        self._transaction = transaction
        self._held = False

    async def __aenter__(self) -> Any:
        self._held = await self._turn.acquire()
        try:
            return await self._transaction.__aenter__()
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._transaction.__aexit__(*exc)
        finally:
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._turn.release()


def alembic_config(migrations_dir: Path, url: str) -> Config:
    """Alembic config for a service's migrations folder (env.py is async)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    rendered = engine_url(url).render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


# Alembic keeps its migration context in module globals: one upgrade at a time.
_ALEMBIC_LOCK = threading.Lock()


def _upgrade_locked(cfg: Config) -> None:
    with _ALEMBIC_LOCK:
        command.upgrade(cfg, "head")


async def upgrade(migrations_dir: Path, url: str) -> None:
    """`alembic upgrade head`, run in a thread because env.py drives its own loop, under
    the service's database-level migration lock (shared.migration_lock): a migration job,
    a service starting and a second replica take turns instead of racing on one schema.
    A SQLite file is made WAL here, before the service opens its connections."""
    database = sqlite_file(url)
    if database is not None:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    async with migration_lock(engine_url(url), migrations_dir.parent.name):
        await asyncio.to_thread(_upgrade_locked, alembic_config(migrations_dir, url))
        if database is not None:
            await asyncio.to_thread(ensure_wal, database)
