"""The executor's outbox writes on SQLite in one thread hop each.

Through SQLAlchemy and aiosqlite a transaction is several hops to aiosqlite's thread (begin,
cursor, execute, commit, close) plus the ORM session's bookkeeping; the executor stages every
run event (QUEUED, STARTED, FINISHED, heartbeats) and answers Execute after its QUEUED commit,
so that cost is on every run's path. Here one `sqlite3` connection lives in one thread of its
own, and a group commit (BEGIN IMMEDIATE, one executemany, COMMIT) or a lookup is one call
into it. Rows are the ones `shared.outbox.Outbox.add_many` writes (same columns, same stored
time format), so the relay, its marks and the backlog gauge read them as before."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from shared.db_tracing import TransactionSpan, transaction_scope
from shared.outbox import SQLITE_INSERT, OutboxMessage, mark_sqlite

# SQLAlchemy's SQLite DATETIME storage format (what the ORM path wrote and reads back).
_STORED = "%Y-%m-%d %H:%M:%S.%f"
_CREATED_AT = "SELECT created_at FROM outbox WHERE msg_id = ?"
# Commits made on the loop between two passive checkpoints on the writer's thread (each
# commit of a run's events adds a few WAL pages; SQLite's own default is 1000 pages).
CHECKPOINT_EVERY = 200
log = logging.getLogger(__name__)


def _busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteOutboxWriter:
    """Inserts outbox rows and looks them up, on a connection owned by one thread.

    `synchronous` is SQLite's: NORMAL (in WAL mode a commit survives a crash of the process,
    not a power loss or an OS crash: the last commits may be lost then) or FULL (each commit
    is synced to disk too, at the cost of an fsync per group commit)."""

    def __init__(
        self,
        path: str,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 30,
        span: TransactionSpan | None = None,
    ) -> None:
        self._path = path
        self._span = span  # each insert is a "db.transaction <service>" span, as sessions' are
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="outbox-writer")
        self._conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None  # the loop's, for lookups
        # The loop's own write connection (commit_now), None until first used; False when
        # commits may not be made on the loop (FULL syncs each one; not a WAL file).
        self._loop_conn: sqlite3.Connection | bool | None = (
            None if synchronous == "NORMAL" else False
        )
        self._loop_commits = 0
        self._checkpointing: Future[None] | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout_s,
                isolation_level=None,  # transactions are explicit
                check_same_thread=False,  # created and used in the writer thread only
            )
            # The file is WAL since the service's migration (shared.db.ensure_wal, stored in
            # the file). Not switched here: switching while the relay reads or writes fails
            # at once with "database is locked" (seen in CI), whatever the busy timeout.
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._conn = conn
        return self._conn

    def insert_now(self, messages: Sequence[OutboxMessage]) -> bool:
        """Stage messages in one transaction on the caller's thread (the event loop), if
        SQLite gives the write lock at once: True once committed; False, with nothing
        written, when it does not (another connection writes: the caller uses `insert`,
        which waits for it on the writer's thread) or when commits may not be made here.

        In WAL mode with synchronous=NORMAL a commit is a write into the WAL, no fsync
        (~0.05 ms): less than the hop to the writer's thread and back (~0.1 ms, and a GIL
        hand-over each way). What could block is kept off the loop: the connection waits for
        no lock (busy timeout 0), does no automatic checkpoint (a checkpoint syncs the file;
        the writer's thread runs one every CHECKPOINT_EVERY commits made here), and FULL
        (an fsync per commit) or a file not in WAL mode always goes through the thread."""
        conn = self._loop_connection()
        if conn is None:
            return False
        now = datetime.now(UTC).strftime(_STORED)
        rows = [(m.msg_id, m.subject, m.payload, json.dumps(m.headers), now) for m in messages]
        with transaction_scope(self._span):
            return self._now(conn, lambda: conn.executemany(SQLITE_INSERT, rows))

    def mark_now(self, msg_ids: Sequence[str]) -> bool:
        """`mark` on the loop's connection when SQLite gives the write lock at once; False
        (nothing written) otherwise, as `insert_now`."""
        conn = self._loop_connection()
        if conn is None:
            return False
        now = datetime.now(UTC).strftime(_STORED)
        return self._now(conn, lambda: mark_sqlite(conn, now, list(msg_ids)))

    def _now(self, conn: sqlite3.Connection, write: Callable[[], object]) -> bool:
        """`write` in one transaction on the loop's connection if the write lock is free at
        once; False (nothing written) if it is not."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                return False
            raise
        try:
            write()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._committed_on_loop()
        return True

    def _loop_connection(self) -> sqlite3.Connection | None:
        if self._loop_conn is None:
            conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
            try:
                wal = conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                if wal:
                    conn.execute(f"PRAGMA synchronous={self._synchronous}")
                    conn.execute("PRAGMA wal_autocheckpoint=0")
            except sqlite3.OperationalError:  # busy: the next commit tries again
                conn.close()
                return None
            if not wal:
                conn.close()
                self._loop_conn = False
                return None
            self._loop_conn = conn
        return self._loop_conn if isinstance(self._loop_conn, sqlite3.Connection) else None

    def _committed_on_loop(self) -> None:
        """Every CHECKPOINT_EVERY commits made on the loop, a passive checkpoint on the
        writer's thread (the loop's connection makes none), so the WAL stays small."""
        self._loop_commits += 1
        if self._loop_commits % CHECKPOINT_EVERY or (
            self._checkpointing is not None and not self._checkpointing.done()
        ):
            return
        self._checkpointing = self._thread.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one (or a commit's own) catches up
            log.warning("outbox: WAL checkpoint failed: %s", exc)

    async def insert(self, messages: Sequence[OutboxMessage]) -> None:
        """Stage messages in one transaction, committed when this returns."""
        now = datetime.now(UTC).strftime(_STORED)
        rows = [(m.msg_id, m.subject, m.payload, json.dumps(m.headers), now) for m in messages]
        with transaction_scope(self._span):
            await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, rows)

    def _insert(self, rows: list[tuple[str, str, bytes, str, str]]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock now (the busy timeout applies)
        try:
            conn.executemany(SQLITE_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def mark(self, msg_ids: Sequence[str]) -> None:
        """Set published_at on these rows (the outbox relay's marks), in one transaction:
        on the loop when SQLite gives the lock at once (`mark_now`), else on the thread."""
        if self.mark_now(msg_ids):
            return
        now = datetime.now(UTC).strftime(_STORED)
        with transaction_scope(self._span):
            await asyncio.get_running_loop().run_in_executor(
                self._thread, self._mark, now, list(msg_ids)
            )

    def _mark(self, now: str, msg_ids: list[str]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            mark_sqlite(conn, now, msg_ids)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def created_at(self, msg_id: str) -> datetime | None:
        """When the row of `msg_id` was staged, or None.

        Read on the loop, on a connection of its own that never waits for a lock: in WAL mode
        an index lookup does not wait for writers, so a thread hop would cost more than the
        read. When SQLite does answer busy (a checkpoint or recovery holding it, or a file not
        in WAL mode), the writer's thread reads it instead, waiting as long as it must."""
        try:
            row = self._reader().execute(_CREATED_AT, (msg_id,)).fetchone()
            stored = None if row is None else str(row[0])
        except sqlite3.OperationalError:
            stored = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._created_at, msg_id
            )
        if stored is None:
            return None
        return datetime.fromisoformat(stored).replace(tzinfo=UTC)

    def _reader(self) -> sqlite3.Connection:
        if self._read_conn is None:
            # timeout 0: busy is answered at once, never waited for on the loop.
            self._read_conn = sqlite3.connect(
                Path(self._path).absolute().as_uri() + "?mode=ro",
                uri=True,
                timeout=0,
                isolation_level=None,
            )
        return self._read_conn

    def _created_at(self, msg_id: str) -> str | None:
        row = self._connection().execute(_CREATED_AT, (msg_id,)).fetchone()
        return None if row is None else str(row[0])

    async def close(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None
        if isinstance(self._loop_conn, sqlite3.Connection):
            self._loop_conn.close()
        self._loop_conn = False

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)
