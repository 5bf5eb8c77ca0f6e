"""DurableConsumer against a real JetStream: messages are pushed to it through one pull
request it keeps open (no fetch rounds), bursts are handled in batches, and an expired or
lost request is renewed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from shared import jetstream
from shared.jetstream import DurableConsumer


@pytest.fixture
async def js(nats_server) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_server.url)
    context = nc.jetstream()
    stream = f"CONSUME_{uuid.uuid4().hex[:8].upper()}"
    subject = f"test.{stream.lower()}"
    await context.add_stream(name=stream, subjects=[f"{subject}.>"])
    yield context, stream, subject
    await context.delete_stream(stream)
    await nc.close()


class Recorder:
    """Handlers that record what they were given, and say when `expected` arrived."""

    def __init__(self, expected: int) -> None:
        self.batches: list[list[str]] = []
        self.expected = expected
        self.done = asyncio.Event()

    async def one(self, msg: Msg) -> None:
        await self.many([msg])

    async def many(self, messages: list[Msg]) -> None:
        self.batches.append([m.data.decode() for m in messages])
        if sum(len(b) for b in self.batches) >= self.expected:
            self.done.set()


def _consumer(js: Any, stream: str, subject: str, recorder: Recorder) -> DurableConsumer:
    return DurableConsumer(
        js,
        stream=stream,
        durable="test",
        filter_subject=f"{subject}.>",
        handler=recorder.one,
        batch_handler=recorder.many,
        batch=16,
    )


async def _settled(js: Any, stream: str) -> bool:
    """True once the consumer has nothing pending and nothing unacknowledged."""
    for _ in range(250):
        info = await js.consumer_info(stream, "test")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_burst_is_handled_in_order_in_batches_and_acked(js: Any) -> None:
    """A backlog goes to the batch handler a batch at a time, in order, and is acked."""
    context, stream, subject = js
    sent = [f"m{i}" for i in range(40)]
    for body in sent:
        await context.publish(f"{subject}.x", body.encode())
    recorder = Recorder(len(sent))
    consumer = _consumer(context, stream, subject, recorder)
    await consumer.start()
    try:
        await asyncio.wait_for(recorder.done.wait(), 30)
        assert await _settled(context, stream)
    finally:
        await consumer.stop()
    assert [body for batch in recorder.batches for body in batch] == sent
    assert len(recorder.batches) < len(sent) and max(map(len, recorder.batches)) <= 16


async def test_message_after_the_pull_request_expired_is_handled(
    js: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle consumer renews its pull request, so a later message still arrives."""
    monkeypatch.setattr(jetstream, "PULL_EXPIRES_S", 0.1)
    context, stream, subject = js
    recorder = Recorder(2)
    consumer = _consumer(context, stream, subject, recorder)
    await consumer.start()
    try:
        await context.publish(f"{subject}.x", b"early")
        for _ in range(250):  # until the first is handled
            if recorder.batches:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # several request lifetimes
        await context.publish(f"{subject}.x", b"late")
        await asyncio.wait_for(recorder.done.wait(), 30)
        assert await _settled(context, stream)
    finally:
        await consumer.stop()
    assert [body for batch in recorder.batches for body in batch] == ["early", "late"]


async def test_failed_batch_is_retried_one_by_one(js: Any) -> None:
    """When the batch handler fails, each message goes to the single handler and is acked."""
    context, stream, subject = js
    for body in ("a", "b", "c"):
        await context.publish(f"{subject}.x", body.encode())
    recorder = Recorder(3)

    async def failing(messages: list[Msg]) -> None:
        raise RuntimeError("batch refused")

    consumer = DurableConsumer(
        context,
        stream=stream,
        durable="test",
        filter_subject=f"{subject}.>",
        handler=recorder.one,
        batch_handler=failing,
    )
    await consumer.start()
    try:
        await asyncio.wait_for(recorder.done.wait(), 30)
        assert await _settled(context, stream)
    finally:
        await consumer.stop()
    assert recorder.batches == [["a"], ["b"], ["c"]]
