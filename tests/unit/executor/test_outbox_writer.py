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
