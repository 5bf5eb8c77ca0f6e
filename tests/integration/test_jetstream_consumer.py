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


async def test_read_through_counts_messages_delivered_but_not_handled(js: Any) -> None:
    """Messages published while a batch is being handled reach this process at once (the
    pull request is open), so the stream reports nothing pending: the consumer must still
    say it has read only up to the handled message (the lease sweeper's cutoff), until the
    buffered ones are handled too."""
    context, stream, subject = js
    entered, release, four = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[tuple[str, object, object]] = []

    async def handler(msg: Msg) -> None:
        seen.append((msg.data.decode(), consumer.read_through, msg.metadata.timestamp))
        if len(seen) == 4:
            four.set()
        if msg.data == b"first":
            entered.set()
            await release.wait()

    consumer = DurableConsumer(
        context,
        stream=stream,
        durable="test",
        filter_subject=f"{subject}.>",
        handler=handler,
        batch=16,
    )
    await consumer.start()
    try:
        await context.publish(f"{subject}.x", b"first")
        await asyncio.wait_for(entered.wait(), 10)
        for body in (b"second", b"third"):
            await context.publish(f"{subject}.x", body)
        puller = consumer._puller
        assert puller is not None
        for _ in range(1000):  # both delivered to this process, not handled
            if puller.buffered() >= 2:
                break
            await asyncio.sleep(0.01)
        assert puller.buffered() == 2
        release.set()
        assert await _settled(context, stream)
        await context.publish(f"{subject}.x", b"last")
        await asyncio.wait_for(four.wait(), 10)
    finally:
        await consumer.stop()
    assert [body for body, _, _ in seen] == ["first", "second", "third", "last"]
    assert seen[0][1] is None
    # After "first" two more were here, unhandled: read only up to first's stream time.
    assert seen[1][1] == seen[0][2] is not None, seen
    assert seen[3][1] is None, seen  # caught up again


async def test_existing_durable_gets_the_new_filters_and_only_their_messages(js: Any) -> None:
    """A durable created with one filter (an earlier release's) is updated at start to the
    consumer's filter subjects: messages on the subjects left out are never delivered, and
    its position in the stream is kept."""
    context, stream, subject = js
    await context.add_consumer(
        stream,
        durable_name="test",
        filter_subject=f"{subject}.>",
        ack_policy="explicit",
        deliver_policy="all",
    )
    for body, token in (("old", "r1"), ("skip", "r1.queued"), ("keep", "r1.started")):
        await context.publish(f"{subject}.{token}", body.encode())
    recorder = Recorder(3)
    consumer = DurableConsumer(
        context,
        stream=stream,
        durable="test",
        filter_subject=[f"{subject}.*", f"{subject}.*.started", f"{subject}.*.finished"],
        handler=recorder.one,
        batch_handler=recorder.many,
        batch=16,
    )
    await consumer.start()
    try:
        info = await context.consumer_info(stream, "test")
        assert not info.config.filter_subject
        assert info.config.filter_subjects == [
            f"{subject}.*",
            f"{subject}.*.started",
            f"{subject}.*.finished",
        ]
        await context.publish(f"{subject}.r2.log", b"skip too")
        await context.publish(f"{subject}.r2.finished", b"end")
        await asyncio.wait_for(recorder.done.wait(), 30)
        assert await _settled(context, stream)
    finally:
        await consumer.stop()
    assert [body for batch in recorder.batches for body in batch] == ["old", "keep", "end"]
    # Started again with the same filters: an update that changes nothing, and no redelivery.
    again = Recorder(1)
    consumer = DurableConsumer(
        context,
        stream=stream,
        durable="test",
        filter_subject=[f"{subject}.*", f"{subject}.*.started", f"{subject}.*.finished"],
        handler=again.one,
        batch=16,
    )
    await consumer.start()
    try:
        await context.publish(f"{subject}.r3", b"after")
        await asyncio.wait_for(again.done.wait(), 30)
    finally:
        await consumer.stop()
    assert again.batches == [["after"]]
