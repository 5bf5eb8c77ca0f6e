"""The executor's one-hop SQLite outbox writer writes the rows SQLAlchemy reads back."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, select

from services.executor.models import OUTBOX, Base
from services.executor.outbox_writer import SqliteOutboxWriter
from shared.db import sqlite_file
from shared.outbox import OutboxMessage


def test_sqlite_file_only_for_a_sqlite_file() -> None:
    assert sqlite_file("sqlite+aiosqlite:///var/executor.db") == "var/executor.db"
    assert sqlite_file("sqlite+aiosqlite://") is None
    assert sqlite_file("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_file("postgresql+asyncpg://postgres@127.0.0.1/x") is None


async def test_rows_read_back_by_sqlalchemy_and_looked_up(tmp_path: Path) -> None:
    path = tmp_path / "executor.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    writer = SqliteOutboxWriter(str(path), "FULL")
    before = datetime.now(UTC)
    try:
        await writer.insert(
            [
                OutboxMessage("runbox.events.run.r1", "r1:executor:1:1", b"\x00one", {"a": "b"}),
                OutboxMessage("runbox.events.run.r1", "r1:executor:1:2", b"two"),
            ]
        )
        staged = await writer.created_at("r1:executor:1:1")
        assert staged is not None and before - timedelta(seconds=1) <= staged <= datetime.now(UTC)
        assert await writer.created_at("r2:executor:1:1") is None
    finally:
        await writer.close()
    with engine.connect() as conn:
        rows = conn.execute(select(OUTBOX).order_by(OUTBOX.c.id)).all()
    engine.dispose()
    assert [(r.msg_id, r.payload, r.headers, r.published_at) for r in rows] == [
        ("r1:executor:1:1", b"\x00one", '{"a": "b"}', None),
        ("r1:executor:1:2", b"two", "{}", None),
    ]
    assert rows[0].created_at.replace(tzinfo=UTC) == staged


async def test_a_failed_transaction_stages_nothing(tmp_path: Path) -> None:
    path = tmp_path / "executor.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    writer = SqliteOutboxWriter(str(path))
    try:
        await writer.insert([OutboxMessage("s", "dup", b"1")])
        try:
            await writer.insert([OutboxMessage("s", "new", b"2"), OutboxMessage("s", "dup", b"3")])
        except sqlite3.IntegrityError:
            pass
        else:
            raise AssertionError("a duplicate msg_id must fail the transaction")
        assert await writer.created_at("new") is None  # rolled back with its batch
        await writer.insert([OutboxMessage("s", "after", b"4")])  # the connection still works
        assert await writer.created_at("after") is not None
    finally:
        await writer.close()


async def test_mark_sets_published_at_on_those_rows_only(tmp_path: Path) -> None:
    """The relay's marks through the writer: published_at as SQLAlchemy reads it, on the
    named rows only (more ids than SQLite binds in one statement)."""
    path = tmp_path / "executor.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    writer = SqliteOutboxWriter(str(path))
    ids = [f"r{i}:executor:1:1" for i in range(1200)]
    before = datetime.now(UTC)
    try:
        await writer.insert([OutboxMessage("s", i, b"x") for i in [*ids, "left"]])
        await writer.mark([*ids, "unknown"])
    finally:
        await writer.close()
    with engine.connect() as conn:
        rows = {r.msg_id: r.published_at for r in conn.execute(select(OUTBOX))}
    engine.dispose()
    assert rows.pop("left") is None
    assert len(rows) == 1200
    assert all(before - timedelta(seconds=1) <= at.replace(tzinfo=UTC) for at in rows.values())


async def test_lookup_waits_on_the_writer_thread_when_the_file_is_busy(tmp_path: Path) -> None:
    """A lookup SQLite answers busy on the loop (here: a rollback-journal file under an
    exclusive lock) is read again on the writer's thread, which waits for the lock."""
    path = tmp_path / "executor.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    writer = SqliteOutboxWriter(str(path))
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        await writer.insert([OutboxMessage("s", "r1:executor:1:1", b"x")])
        locker.execute("PRAGMA journal_mode=DELETE")
        locker.execute("BEGIN EXCLUSIVE")
        lookup = asyncio.ensure_future(writer.created_at("r1:executor:1:1"))
        await asyncio.sleep(0.2)
        assert not lookup.done()  # waiting on the thread, not failed
        locker.execute("COMMIT")
        assert await lookup is not None
        assert await writer.created_at("r2:executor:1:1") is None
    finally:
        locker.close()
        await writer.close()


def _wal_file(path: Path) -> None:
    """An outbox table in a WAL file, as the executor's migration leaves it."""
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def _rows(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return [
            (r[0], r[1]) for r in conn.execute("SELECT msg_id, created_at FROM outbox ORDER BY id")
        ]
    finally:
        conn.close()


async def test_commit_on_the_loop_only_when_the_lock_is_free_at_once(tmp_path: Path) -> None:
    """insert_now commits on the caller's thread when SQLite gives the write lock at once;
    while another connection writes it writes nothing and says so (insert then waits on the
    writer's thread); FULL and a file not in WAL mode never commit on the loop."""
    path = tmp_path / "executor.db"
    _wal_file(path)
    writer = SqliteOutboxWriter(str(path), busy_timeout_s=10)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        assert writer.insert_now([OutboxMessage("s", "a", b"1")])
        other.execute("BEGIN IMMEDIATE")
        assert not writer.insert_now([OutboxMessage("s", "b", b"2")])
        assert not writer.mark_now(["a"])
        waiting = asyncio.ensure_future(writer.insert([OutboxMessage("s", "b", b"2")]))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # waits for the lock on the writer's thread
        other.execute("COMMIT")
        await waiting
        assert writer.mark_now(["a"])
    finally:
        other.close()
        await writer.close()
    assert [msg_id for msg_id, _ in _rows(path)] == ["a", "b"]
    full = SqliteOutboxWriter(str(path), "FULL")
    try:
        assert not full.insert_now([OutboxMessage("s", "c", b"3")])
    finally:
        await full.close()
    rollback_journal = tmp_path / "delete.db"
    engine = create_engine(f"sqlite:///{rollback_journal}")
    Base.metadata.create_all(engine)
    engine.dispose()
    plain = SqliteOutboxWriter(str(rollback_journal))
    try:
        assert not plain.insert_now([OutboxMessage("s", "d", b"4")])
    finally:
        await plain.close()


async def test_a_failed_commit_on_the_loop_stages_nothing(tmp_path: Path) -> None:
    path = tmp_path / "executor.db"
    _wal_file(path)
    writer = SqliteOutboxWriter(str(path))
    try:
        assert writer.insert_now([OutboxMessage("s", "dup", b"1")])
        try:
            writer.insert_now([OutboxMessage("s", "new", b"2"), OutboxMessage("s", "dup", b"3")])
        except sqlite3.IntegrityError:
            pass
        else:
            raise AssertionError("a duplicate msg_id must fail the transaction")
        assert writer.insert_now([OutboxMessage("s", "after", b"4")])  # still usable
    finally:
        await writer.close()
    assert [msg_id for msg_id, _ in _rows(path)] == ["dup", "after"]


async def test_publisher_keeps_staging_order_across_loop_and_thread_commits(
    tmp_path: Path,
) -> None:
    """Events staged while the database is busy wait for it (on the writer's thread) and
    events staged meanwhile follow them, in order; a deferred event (a run's STARTED) waits
    for the next commit any other event asks for, and goes with it."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from runbox.events.v1 import events_pb2
    from services.executor.events import EventPublisher, RunContext, build_event
    from shared.outbox import Outbox

    path = tmp_path / "executor.db"
    _wal_file(path)
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    outbox = Outbox(OUTBOX, async_sessionmaker(engine))
    writer = SqliteOutboxWriter(str(path), busy_timeout_s=10)
    publisher = EventPublisher(async_sessionmaker(engine), outbox, "runbox.events", writer, 5.0)
    runs = {name: RunContext(name, 1, "s", "1", 1, "x") for name in ("a", "b")}

    def stage(run: str, kind: int, defer: bool = False) -> asyncio.Future[None]:
        return publisher.stage([build_event(runs[run], kind, 3)], defer=defer)

    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        first = stage("a", events_pb2.RUN_EVENT_TYPE_QUEUED)
        await asyncio.sleep(0.2)
        assert not first.done()
        started = stage("a", events_pb2.RUN_EVENT_TYPE_STARTED, defer=True)
        queued_b = stage("b", events_pb2.RUN_EVENT_TYPE_QUEUED)
        other.execute("COMMIT")
        await asyncio.gather(first, started, queued_b)
        started_b = stage("b", events_pb2.RUN_EVENT_TYPE_STARTED, defer=True)
        await asyncio.sleep(0.2)
        assert not started_b.done()  # deferred: nothing asked for a commit yet
        finished_b = stage("b", events_pb2.RUN_EVENT_TYPE_FINISHED)
        await asyncio.gather(started_b, finished_b)
    finally:
        other.close()
        await writer.close()
        await engine.dispose()
    rows = _rows(path)
    assert [msg_id for msg_id, _ in rows] == [
        "a:executor:1:1",
        "a:executor:1:2",
        "b:executor:1:1",
        "b:executor:1:2",
        "b:executor:1:3",
    ]
    assert rows[3][1] == rows[4][1]  # b's STARTED and FINISHED: one transaction
    assert [m.msg_id for m in outbox._ready] == [msg_id for msg_id, _ in rows]
