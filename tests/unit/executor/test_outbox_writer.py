"""The executor's one-hop SQLite outbox writer writes the rows SQLAlchemy reads back."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, select

from services.executor.models import OUTBOX, Base
from services.executor.outbox_writer import SqliteOutboxWriter, sqlite_file
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
