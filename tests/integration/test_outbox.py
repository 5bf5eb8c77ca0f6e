"""The transactional outbox against real SQLite and a real JetStream stream."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy import MetaData, func, select

from shared import db
from shared.outbox import Outbox, OutboxMessage, outbox_table
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
    """A JetStream context whose publishing fails after n successes: the connection breaks
    (raise) or the server does not acknowledge one message (nack) mid-batch."""

    def __init__(self, js: Any, n: int, how: str = "raise") -> None:
        self._js, self._left, self._how = js, n, how

    async def publish_async(self, *args: Any, **kwargs: Any) -> Any:
        if self._left == 0:
            self._left = -1 if self._how == "nack" else 0
            if self._how == "raise":
                raise ConnectionError("nats unavailable")
            nack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            nack.set_exception(TimeoutError("no ack"))
            return nack
        self._left -= 1
        return await self._js.publish_async(*args, **kwargs)


@pytest.mark.parametrize("how", ["raise", "nack"])
async def test_a_failure_mid_batch_keeps_the_rest_and_never_duplicates(
    setup: Any, how: str
) -> None:
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions)
    ids = [f"m{i}" for i in range(4)]
    await _add(outbox, sessions, subject, ids)
    assert await outbox.flush(FailingAfter(js, 2, how)) == 2  # type: ignore[arg-type]
    # Only the two before the failure are marked; with a nack the one after it reached the
    # stream, but stays unsent so that it follows the failed one.
    assert await _unsent(table, sessions) == 2
    assert await outbox.flush(js) == 2
    info = await js.stream_info(stream)
    assert info.state.messages == 4
    sub = await js.pull_subscribe(f"{subject}.>", durable=None, stream=stream)
    received = [m.data.decode() for m in await sub.fetch(4, timeout=5)]
    assert received == (ids if how == "raise" else ["m0", "m1", "m3", "m2"])
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


async def test_committed_events_go_out_from_memory_in_order_and_are_marked(setup: Any) -> None:
    """The relay publishes what a commit handed over without reading it back, marks it
    within the mark interval, and publishes it exactly once."""
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions, poll_interval_s=30, mark_interval_s=0.05)
    outbox.start(js)
    try:
        await outbox.flush(js)  # nothing yet; the relay's start-up scan is done meanwhile
        ids = [f"c{i}" for i in range(250)]  # more than one batch
        messages = [OutboxMessage(f"{subject}.x", i, i.encode()) for i in ids]
        for chunk in (messages[:120], messages[120:]):
            async with sessions() as session, session.begin():
                await outbox.add_many(session, chunk)
            outbox.committed(chunk)
        for _ in range(200):
            if await _unsent(table, sessions) == 0:
                break
            await asyncio.sleep(0.02)
        assert await _unsent(table, sessions) == 0
    finally:
        await outbox.stop()
    sub = await js.pull_subscribe(f"{subject}.>", durable=None, stream=stream)
    received = [m.data.decode() for m in await sub.fetch(250, timeout=5)]
    assert received == ids
    assert (await js.stream_info(stream)).state.messages == 250


async def test_a_failure_in_the_memory_path_falls_back_to_the_table(setup: Any) -> None:
    """Handed-over events the relay could not publish go out from the table, in order."""
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions, poll_interval_s=0.05, mark_interval_s=0.05)
    outbox.start(FailingAfter(js, 3))  # type: ignore[arg-type]
    try:
        ids = [f"f{i}" for i in range(6)]
        messages = [OutboxMessage(f"{subject}.x", i, i.encode()) for i in ids]
        async with sessions() as session, session.begin():
            await outbox.add_many(session, messages)
        outbox.committed(messages)
        for _ in range(200):
            if await _unsent(table, sessions) == 3:
                break
            await asyncio.sleep(0.02)
        assert await _unsent(table, sessions) == 3  # f3.. wait for NATS to come back
    finally:
        await outbox.stop()
    assert await outbox.flush(js) == 3
    sub = await js.pull_subscribe(f"{subject}.>", durable=None, stream=stream)
    assert [m.data.decode() for m in await sub.fetch(6, timeout=5)] == ids


async def _start_idle(outbox: Outbox, js: Any, sessions: Any, table: Any, subject: str) -> None:
    """Start the relay and wait until its start-up scan is over (it published a probe row
    staged before the start), so what follows is not picked up by that scan."""
    await _add(outbox, sessions, subject, ["probe"])
    outbox.start(js)
    for _ in range(250):
        if await _unsent(table, sessions) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the relay's start-up scan did not publish the probe")


async def _received(js: Any, stream: str, subject: str, count: int) -> list[str]:
    """The first `count` messages of the stream, waiting for them to be published."""
    sub = await js.pull_subscribe(f"{subject}.>", durable=None, stream=stream)
    received: list[str] = []
    while len(received) < count:
        received += [m.data.decode() for m in await sub.fetch(count - len(received), timeout=30)]
    return received


async def test_notified_commit_goes_out_without_the_sweep(setup: Any) -> None:
    """A commit followed by notify() reaches NATS at once: the sweep (an hour) never runs."""
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions, poll_interval_s=3600, mark_interval_s=0.05)
    await _start_idle(outbox, js, sessions, table, subject)
    try:
        await _add(outbox, sessions, subject, ["w0", "w1"])
        outbox.notify()
        assert await _received(js, stream, subject, 3) == ["probe", "w0", "w1"]
    finally:
        await outbox.stop()


async def test_commit_whose_wake_was_lost_goes_out_with_the_sweep(setup: Any) -> None:
    """Rows committed without notify() or committed() (memory lost) are published by the
    periodic sweep, in order, and marked."""
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions, poll_interval_s=0.05, mark_interval_s=0.05)
    await _start_idle(outbox, js, sessions, table, subject)
    try:
        await _add(outbox, sessions, subject, ["s0", "s1"])  # no wake
        assert await _received(js, stream, subject, 3) == ["probe", "s0", "s1"]
        for _ in range(250):
            if await _unsent(table, sessions) == 0:
                break
            await asyncio.sleep(0.02)
        assert await _unsent(table, sessions) == 0
    finally:
        await outbox.stop()


async def test_sent_rows_are_marked_through_the_services_marker_when_given(setup: Any) -> None:
    """A service's own marker gets every sent id (and nothing goes through the default
    UPDATE): what it does with them is what the table shows."""
    table, sessions, js, _, subject = setup
    marked: list[str] = []

    async def marker(msg_ids: Any) -> None:
        marked.extend(msg_ids)

    outbox = Outbox(table, sessions, marker=marker)
    ids = [f"m{i}" for i in range(3)]
    await _add(outbox, sessions, subject, ids)
    assert await outbox.flush(js) == 3
    assert marked == ids
    assert await _unsent(table, sessions) == 3  # the marker chose not to write


async def test_held_events_wait_for_their_release_and_skip_the_table_scan(setup: Any) -> None:
    """Events committed held (the executor's run link) are not published, by memory nor by
    the table scan (polled every 50 ms), until released: on their subject plus the release's
    suffix, in release order; one never released goes out at stop on its own subject."""
    table, sessions, js, stream, subject = setup
    outbox = Outbox(table, sessions, poll_interval_s=0.05, mark_interval_s=0.05)
    await _start_idle(outbox, js, sessions, table, subject)
    try:
        ids = ["h0", "free", "h1", "kept"]
        messages = [OutboxMessage(f"{subject}.x", i, i.encode()) for i in ids]
        async with sessions() as session, session.begin():
            await outbox.add_many(session, messages)
        outbox.committed(messages, held={"h0", "h1", "kept"})
        assert await _received(js, stream, subject, 2) == ["probe", "free"]
        await asyncio.sleep(0.3)  # several table scans
        assert await _unsent(table, sessions) == 3
        outbox.release(["h1", "h0"], suffix=".applied")
        for _ in range(250):
            if await _unsent(table, sessions) == 1:
                break
            await asyncio.sleep(0.02)
        assert await _unsent(table, sessions) == 1
    finally:
        await outbox.stop()
    sub = await js.pull_subscribe(f"{subject}.>", durable=None, stream=stream)
    got = [(m.subject, m.data.decode()) for m in await sub.fetch(5, timeout=5)]
    assert got == [
        (f"{subject}.x", "probe"),
        (f"{subject}.x", "free"),
        (f"{subject}.x.applied", "h1"),
        (f"{subject}.x.applied", "h0"),
        (f"{subject}.x", "kept"),
    ]
