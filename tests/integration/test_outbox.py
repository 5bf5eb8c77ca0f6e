"""The transactional outbox against real SQLite and a real JetStream stream."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy import MetaData, func, select

from shared import db
from shared.outbox import Outbox, outbox_table
from shared.settings import DatabaseSettings


@pytest.fixture
async def setup(tmp_path: Path, nats_server) -> Any:  # type: ignore[no-untyped-def]
    metadata = MetaData()
    table = outbox_table(metadata)
    engine = db.create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'o.db'}"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"OUTBOX_{uuid.uuid4().hex[:8].upper()}"
    subject = f"test.{stream.lower()}"
    await js.add_stream(name=stream, subjects=[f"{subject}.>"], duplicate_window=60)
    yield table, db.sessionmaker(engine), js, stream, subject
    await js.delete_stream(stream)
    await nc.close()
    await engine.dispose()


async def _add(outbox: Outbox, sessions: Any, subject: str, ids: list[str]) -> None:
    async with sessions() as session, session.begin():
        for msg_id in ids:
            await outbox.add(
                session, subject=f"{subject}.x", msg_id=msg_id, payload=msg_id.encode()
            )


async def _unsent(table: Any, sessions: Any) -> int:
    async with sessions() as session:
        query = select(func.count()).select_from(table).where(table.c.published_at.is_(None))
        return int(await session.scalar(query) or 0)


async def test_relay_publishes_in_order_and_marks_the_batch(setup: Any) -> None:
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions)
    ids = [f"e{i}" for i in range(5)]
    await _add(outbox, sessions, subject, ids)
    assert await outbox.flush(js) == 5
    assert await _unsent(table, sessions) == 0
    sub = await js.pull_subscribe(f"{subject}.>", durable=None, stream=stream)
    messages = await sub.fetch(5, timeout=5)
    assert [m.data.decode() for m in messages] == ids
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ids  # type: ignore[index]


class FailingAfter:
    """A JetStream context whose publish fails after n successes (a NATS outage mid-batch)."""

    def __init__(self, js: Any, n: int) -> None:
        self._js, self._left = js, n

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        if self._left == 0:
            raise TimeoutError("nats unavailable")
        self._left -= 1
        return await self._js.publish(*args, **kwargs)


async def test_a_failure_mid_batch_keeps_the_rest_and_never_duplicates(setup: Any) -> None:
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions)
    await _add(outbox, sessions, subject, [f"m{i}" for i in range(4)])
    with pytest.raises(TimeoutError):
        await outbox.flush(FailingAfter(js, 2))  # type: ignore[arg-type]
    assert await _unsent(table, sessions) == 2  # the two published ones are marked
    assert await outbox.flush(js) == 2
    info = await js.stream_info(stream)
    assert info.state.messages == 4
    # A crash after publishing but before marking re-publishes: the stream drops duplicates.
    async with sessions() as session, session.begin():
        await session.execute(table.update().values(published_at=None))
    assert await outbox.flush(js) == 4
    info = await js.stream_info(stream)
    assert info.state.messages == 4


async def test_an_event_too_large_for_nats_is_dropped_not_retried_forever(setup: Any) -> None:
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions)
    limit = js._nc.max_payload  # what this server accepts
    async with sessions() as session, session.begin():
        await outbox.add(session, subject=f"{subject}.x", msg_id="small-1", payload=b"a")
        await outbox.add(session, subject=f"{subject}.x", msg_id="huge", payload=b"x" * (limit + 1))
        await outbox.add(session, subject=f"{subject}.x", msg_id="small-2", payload=b"b")
    assert await outbox.flush(js) == 3
    assert await _unsent(table, sessions) == 0
    info = await js.stream_info(stream)
    assert info.state.messages == 2  # the events after the oversized one still went out
