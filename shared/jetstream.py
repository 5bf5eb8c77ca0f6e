"""NATS JetStream: connection, stream provisioning, and a durable consumer
loop that is bounded, acknowledges only after the handler succeeded, and
continues the producer's trace."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime

import nats
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry import context as otel_context
from opentelemetry import trace
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from runbox.events.v1 import events_pb2
from shared.settings import NatsSettings
from shared.tasks import being_cancelled, stop_gracefully
from shared.telemetry import (
    current_span,
    extract_context,
    has_context,
    run_event_span_attributes,
    tracer_records,
)

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
BatchHandler = Callable[[list[Msg]], Awaitable[None]]
# The consume span of each traced message being handled, by Nats-Msg-Id (a batch handler
# parents per-message work on its own message's span: see consume_context).
_consuming: contextvars.ContextVar[Mapping[str, otel_context.Context] | None] = (
    contextvars.ContextVar("runbox_consuming", default=None)
)


def consume_context(msg_id: str) -> otel_context.Context | None:
    """The context of the consume span of the message with this Nats-Msg-Id (an event id),
    while a DurableConsumer handler runs; None if it was not traced."""
    return (_consuming.get() or {}).get(msg_id)


def run_event_attributes(msg: Msg) -> dict[str, str | int]:
    """Span attributes of a RunEvent message: ids, script name, type and state (never its
    parameters or output); none for other events."""
    if ".run." not in msg.subject:
        return {}
    try:
        event = events_pb2.RunEvent.FromString(msg.data)
    except DecodeError:
        return {}
    return run_event_span_attributes(event)


async def connect(settings: NatsSettings, *, name: str) -> NATS:
    """Connect with retries (the server may be starting) and reconnect forever."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(max(settings.connect_timeout_s, 1.0) * 6),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        retry=retry_if_exception_type((OSError, nats.errors.NoServersError, TimeoutError)),
        reraise=True,
    ):
        with attempt:
            return await nats.connect(
                settings.url,
                name=name,
                connect_timeout=settings.connect_timeout_s,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
            )
    raise RuntimeError("unreachable")


async def ensure_stream(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create or update the one event stream (file storage, dedup window)."""
    config = StreamConfig(
        name=settings.stream,
        subjects=[f"{settings.subjects_prefix}.>"],
        storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window_s,
        num_replicas=settings.replicas,
    )
    try:
        await js.stream_info(settings.stream)
        await js.update_stream(config)
    except NotFoundError:
        await js.add_stream(config)


class DurableConsumer:
    """Pulls from a durable consumer and hands each message to a handler.

    A message is acked only after the handler returns; a failing handler gets
    the message again after a delay (nak), so nothing is lost while the
    service is down or a handler is broken. Handlers must be idempotent.
    With a `batch_handler`, each fetch of several messages goes to it at once
    (e.g. applied in one transaction) and is acked after it returns; if it
    fails, the messages go to `handler` one by one as above.

    `filter_subject` is one subject or several (a consumer taking only some subjects of the
    stream, nats-server 2.10+). The durable consumer is created, or updated to this
    configuration when it exists (a new filter takes effect on the next start).
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        filter_subject: str | Sequence[str],
        handler: Handler,
        batch: int = 64,
        ack_wait_s: float = 30.0,
        retry_delay_s: float = 1.0,
        batch_handler: BatchHandler | None = None,
        tracer: trace.Tracer | None = None,
        describe: Callable[[Msg], Mapping[str, str | int]] | None = None,
    ) -> None:
        self._js = js
        self._tracer = tracer
        self._describe = describe
        # Attributes only for spans that are recorded (describing costs a decode).
        self._recording = tracer_records(tracer)
        self._batch_handler = batch_handler
        self._stream = stream
        self._durable = durable
        self._filters = (
            [filter_subject] if isinstance(filter_subject, str) else list(filter_subject)
        )
        self._handler = handler
        self._batch = batch
        self._ack_wait = ack_wait_s
        self._retry_delay = retry_delay_s
        self._task: asyncio.Task[None] | None = None
        self._puller: _Puller | None = None
        self._stopping = asyncio.Event()
        # When more messages were waiting after the last fetch: the stream time of the last
        # one handled (what the service has read up to); None when it is caught up.
        self.read_through: datetime | None = None

    async def start(self) -> None:
        one = len(self._filters) == 1
        config = ConsumerConfig(
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=self._filters[0] if one else None,
            filter_subjects=None if one else self._filters,
            ack_wait=self._ack_wait,
            max_ack_pending=self._batch * 4,
        )
        # Create or update (the server's create of an existing durable with another
        # configuration updates it, e.g. a new filter; what cannot change, like the ack
        # policy, fails the start). No subscription of nats-py's own: the puller below keeps
        # a pull request open instead of its fetch rounds.
        await self._js.add_consumer(self._stream, config)
        self._puller = _Puller(self._js, self._stream, self._durable, self._batch)
        await self._puller.start()
        self._task = asyncio.create_task(self._loop(self._puller), name=f"consumer:{self._durable}")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Let the current batch finish, then unsubscribe (so a drain never waits)."""
        self._stopping.set()
        if self._puller is not None:
            self._puller.wake()
        await stop_gracefully(self._task, timeout_s)
        if self._puller is not None:
            with contextlib.suppress(Exception):
                await self._puller.unsubscribe()

    async def _loop(self, puller: _Puller) -> None:
        """Handle what the server pushed, as soon as it arrives: the first message waiting
        and every one queued behind it (up to a batch) go to the handler together, so a
        burst is applied in few transactions and a lone event without delay."""
        while not self._stopping.is_set():
            try:
                messages = await puller.next_batch()
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                    raise
                if self._stopping.is_set():
                    return
                log.exception("pull failed on %s; retrying", self._durable)
                await asyncio.sleep(self._retry_delay)
                continue
            if not messages:
                self.read_through = None  # nothing was waiting
                continue
            batched = self._batch_handler is not None and len(messages) > 1
            if not (batched and await self._dispatch_batch(messages)):
                for msg in messages:
                    await self._dispatch(msg)
            self.read_through = _behind(messages[-1], buffered=puller.buffered())

    async def _dispatch_batch(self, messages: list[Msg]) -> bool:
        """The whole fetch to the batch handler; False if it failed (then each message goes
        to the handler on its own)."""
        assert self._batch_handler is not None
        try:
            with self._consuming(messages):
                await self._batch_handler(messages)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                raise
            log.warning(
                "batch of %d failed on %s (%s); handling them one by one",
                len(messages),
                self._durable,
                exc,
            )
            return False
        for msg in messages:
            await msg.ack()
        return True

    async def _dispatch(self, msg: Msg) -> None:
        try:
            with self._consuming([msg]):
                await self._handler(msg)
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                raise
            log.exception("handler failed for %s; will redeliver", msg.subject)
            await msg.nak(delay=self._retry_delay)
            return
        await msg.ack()

    @contextlib.contextmanager
    def _consuming(self, messages: list[Msg]) -> Iterator[None]:
        """A consumer span per message that carries a trace context (progress events carry
        none), continuing the producer's trace; the first is current while the handler
        runs, each is found by consume_context(its id). A handler's failure marks them all."""
        traced = [m for m in messages if has_context(m.headers)] if self._tracer else []
        if not traced:
            yield
            return
        assert self._tracer is not None
        if not self._recording:
            # Nothing records spans (ContextTracer): its "span" of a message would be the
            # producer's context made current, so that context is attached as it is, without
            # a span's context managers per message.
            found = {
                (m.headers or {}).get("Nats-Msg-Id", ""): trace.set_span_in_context(
                    trace.get_current_span(extract_context(m.headers))
                )
                for m in traced
            }
            first = (traced[0].headers or {}).get("Nats-Msg-Id", "")
            attached = otel_context.attach(found[first])
            consuming = _consuming.set(found)
            try:
                yield
            finally:
                _consuming.reset(consuming)
                otel_context.detach(attached)
            return
        with contextlib.ExitStack() as stack:
            contexts: dict[str, otel_context.Context] = {}
            spans = []
            for msg in traced:
                span = stack.enter_context(
                    current_span(
                        self._tracer,
                        f"consume {self._durable}",
                        context=extract_context(msg.headers),
                        kind=trace.SpanKind.CONSUMER,
                        attributes=self._attributes(msg, len(messages))
                        if self._recording
                        else None,
                    )
                )
                spans.append(span)
                contexts[(msg.headers or {}).get("Nats-Msg-Id", "")] = trace.set_span_in_context(
                    span
                )
            # Current: the first message's span (the ones above were entered in turn).
            stack.enter_context(trace.use_span(spans[0], end_on_exit=False))
            token = _consuming.set(contexts)
            try:
                yield
            finally:
                _consuming.reset(token)

    def _attributes(self, msg: Msg, batch: int) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": self._durable,
            "messaging.message.id": (msg.headers or {}).get("Nats-Msg-Id", ""),
        }
        if batch > 1:
            attributes["messaging.batch.message_count"] = batch
        if self._describe is not None:
            attributes.update(self._describe(msg))
        return attributes


# How long one pull request stays open on the server; an idle consumer renews it this often.
PULL_EXPIRES_S = 1.0


class _Puller:
    """A durable pull consumer's messages as the server pushes them, without fetch rounds:
    one pull request for up to a batch is kept open (renewed when half of it was delivered,
    or when it ended), and each message is queued the moment it arrives."""

    def __init__(self, js: JetStreamContext, stream: str, durable: str, batch: int) -> None:
        # nats-py (2.x) has no continuous pull: its fetch() asks anew and waits each round.
        # The request below is the JetStream API its fetch() uses, on the same connection.
        self._nc: NATS = js._nc
        self._next = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = batch
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._inbox = ""
        self._asked = 0  # messages asked for, not delivered, in requests still open
        self._asked_at = -PULL_EXPIRES_S  # loop time of the last request

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._arrived)

    async def _arrived(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)

    def buffered(self) -> int:
        """Messages the server already delivered to this process, not yet taken by
        next_batch(): the stream's num_pending no longer counts them."""
        in_client = self._sub.pending_msgs if self._sub is not None else 0
        return self._queue.qsize() + in_client

    def wake(self) -> None:
        """Make a waiting next_batch() return (at stop)."""
        self._queue.put_nowait(None)

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def next_batch(self) -> list[Msg]:
        """The first message to arrive and every one already queued behind it, up to a
        batch; empty when a request ended without one, or none came for a request's
        lifetime (asked again then, so a request lost with a connection is renewed)."""
        now = asyncio.get_running_loop().time()
        if now - self._asked_at >= PULL_EXPIRES_S:
            self._asked = 0  # the last request is over, whether or not its status came
        if self._asked <= self._batch // 2:
            more = self._batch - self._asked
            request = {"batch": more, "expires": int(PULL_EXPIRES_S * 1e9)}
            await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
            self._asked += more
            self._asked_at = now
        if self._queue.empty():
            try:  # asyncio.timeout: no task per wait, unlike wait_for
                async with asyncio.timeout(PULL_EXPIRES_S):
                    item = await self._queue.get()
            except TimeoutError:
                return []
        else:
            item = self._queue.get_nowait()
        messages: list[Msg] = []
        while True:
            if item is not None and self._is_message(item):
                messages.append(item)
            if len(messages) >= self._batch or self._queue.empty():
                return messages
            item = self._queue.get_nowait()

    def _is_message(self, msg: Msg) -> bool:
        """True for a stream message; a status (408 expired, 409 ended by a server limit)
        means a request is over: ask again."""
        if JetStreamContext.is_status_msg(msg) is None:
            self._asked = max(self._asked - 1, 0)
            return True
        self._asked = 0
        return False


def _behind(msg: Msg, buffered: int = 0) -> datetime | None:
    """The stream time of `msg` if more messages wait after it (in the stream, or already
    delivered to this process and not handled yet), else None."""
    try:
        metadata = msg.metadata
    except Exception:  # not a JetStream message
        return None
    return metadata.timestamp if metadata.num_pending or buffered else None


async def follow_script_changes(
    nc: NATS, prefix: str, forget: Callable[[str | None], None]
) -> None:
    """Call `forget(script name)` for every ScriptEvent any catalogue replica publishes from
    now on (`forget(None)` for one that does not decode): what caches catalogue answers
    drops them with it."""

    async def on_event(msg: Msg) -> None:
        try:
            forget(events_pb2.ScriptEvent.FromString(msg.data).script_name)
        except DecodeError:
            forget(None)

    await nc.subscribe(f"{prefix}.script.>", cb=on_event)
