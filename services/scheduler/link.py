"""The run link, scheduler side: one long-lived ExecutorService.Link stream from this replica
to each executor, carrying Execute requests out and the answers and run events back, so a
run's hand-off and report cost stream messages rather than a unary call and JetStream
deliveries (services/executor/link.py is the other end).

Invariants:
- The link is only an accelerator. Dispatch uses it when it is up (its handshake answered),
  the unary Execute otherwise; an Execute in flight when the link breaks is sent again as a
  unary Execute (idempotent on the run id). An executor without Link (UNIMPLEMENTED) is
  asked again only every `UNLINKED_RETRY_S`.
- Events from a link are applied as consumed ones are (RunEventHandler.events: one
  transaction for all that arrived meanwhile), then acked over the link after the commit.
  An event not acked (an apply failed, the link broke, the process died) is published by the
  executor where the durable consumer takes it: JetStream stays the recovery path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from tenacity import AsyncRetrying, RetryCallState, wait_exponential, wait_random

from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from shared.status import DETAILS_KEY
from shared.telemetry import (
    LINK_EXECUTE_SPAN,
    extract_context,
    inject_context,
    link_execute_attributes,
    run_event_span_attributes,
    tracer_records,
)

if TYPE_CHECKING:
    from services.scheduler.executors import ExecutorSet

log = logging.getLogger(__name__)

# Reconnect backoff: from 0.1 s doubled up to 10 s, plus up to 0.1 s of jitter.
_BACKOFF = wait_exponential(multiplier=0.05, max=10.0) + wait_random(0, 0.1)
_RETRYING = AsyncRetrying()
# How often an executor that answered Link UNIMPLEMENTED (older) is asked again.
UNLINKED_RETRY_S = 60.0
# How long acks wait for an Execute to carry them before they get a message of their own.
# Nothing on a run's path waits for an ack (it only lets the executor publish the applied
# events on `.applied`); it must stay well under the executor's hold (link_hold_s, 1 s).
ACK_LINGER_S = 0.02

Apply = Callable[[list[events_pb2.RunEvent]], Awaitable[None]]
APPLY_SPAN = "run_link.apply"


class LinkDown(Exception):
    """The link broke before the answer came: the caller sends the unary Execute."""


class ExecutorLink:
    """This replica's link to one executor."""

    def __init__(
        self,
        stub: executor_pb2_grpc.ExecutorServiceAsyncStub,
        replica: str,
        applier: Applier,
        tracer: trace.Tracer | None = None,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        ack_linger_s: float = ACK_LINGER_S,
    ) -> None:
        # Spans only when they are recorded (a span per Execute costs ~20 µs otherwise).
        self._tracer = tracer if tracer_records(tracer) else None
        # The stub's channel may have no interceptors (shared.clients.open_stream_channel):
        # the call then sends what they would have added (the bearer token) itself.
        self._stub = stub
        self._metadata = tuple(metadata)
        self._replica = replica
        self._applier = applier
        self._call: grpc.aio.StreamStreamCall[Any, Any] | None = None
        self._up = False
        self._sequence = itertools.count(1)
        self._answers: dict[int, asyncio.Future[executor_pb2.LinkAnswer]] = {}
        self._executes: list[executor_pb2.LinkExecute] = []
        self._acks: list[str] = []
        self._ack_linger_s = ack_linger_s
        self._ack_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.unimplemented = False

    @property
    def up(self) -> bool:
        return self._up

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name="run-link")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def execute(
        self, request: executor_pb2.ExecuteRequest, timeout_s: float
    ) -> executor_pb2.ExecuteResponse:
        """Execute over the link: the unary call's answer, or its error as an AioRpcError;
        LinkDown when the link broke first."""
        sequence = next(self._sequence)
        future: asyncio.Future[executor_pb2.LinkAnswer] = asyncio.get_running_loop().create_future()
        self._answers[sequence] = future
        item = executor_pb2.LinkExecute(sequence=sequence, request=request)
        span = self._span(item)
        self._executes.append(item)
        self._wake.set()
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    answer = await future
            except TimeoutError:
                raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", b"") from None
            finally:
                self._answers.pop(sequence, None)
            if answer.HasField("accepted"):
                return answer.accepted
            code = _CODES.get(answer.code, grpc.StatusCode.UNKNOWN)
            raise _error(code, answer.message, answer.status)
        except BaseException as exc:
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            if span is not None:
                span.end()

    def _span(self, item: executor_pb2.LinkExecute) -> trace.Span | None:
        """The client span of an Execute over the link (a child of the current one, the
        dispatch's), its context sent with the request for the executor's server span."""
        if self._tracer is None:
            return None
        span = self._tracer.start_span(
            LINK_EXECUTE_SPAN,
            kind=trace.SpanKind.CLIENT,
            attributes=link_execute_attributes(item.request.run_id),
        )
        item.trace_context.update(inject_context(context=trace.set_span_in_context(span)))
        return span

    def ack(self, event_ids: Iterable[str]) -> None:
        """Queue acks for the next message: the next Execute's (a run's acks most often ride
        with the Execute of the run its client submits next), or one of their own after
        `ack_linger_s`. One stream message a run each way fewer than an ack message each."""
        self._acks.extend(event_ids)
        if self._ack_timer is None and self._acks:
            self._ack_timer = asyncio.get_running_loop().call_later(
                self._ack_linger_s, self._wake.set
            )

    async def _keep(self) -> None:
        """Open the link, serve it until it breaks, reopen after a backoff (tenacity's
        exponential wait with jitter; reset once a link came up)."""
        state = RetryCallState(retry_object=_RETRYING, fn=None, args=(), kwargs={})
        while True:
            if await self._serve():
                state.attempt_number = 1
            else:
                state.attempt_number += 1
            wait = UNLINKED_RETRY_S if self.unimplemented else float(_BACKOFF(state))
            await asyncio.sleep(wait)

    async def _serve(self) -> bool:
        """One link's life; True if it came up."""
        call = self._stub.Link(None, metadata=self._metadata)  # requests written on the call
        writer: asyncio.Task[None] | None = None
        try:
            try:
                await call.write(executor_pb2.LinkRequest(replica_id=self._replica))
            except asyncio.InvalidStateError:
                # The call ended before the hello went out (an executor of a build without
                # Link answers UNIMPLEMENTED at once): reading it raises its status.
                pass
            first = await call.read()
            if not isinstance(first, executor_pb2.LinkResponse):  # the stream ended
                return False
            self.unimplemented = False
            self._up = True
            log.info("run link up")
            writer = asyncio.create_task(self._write(call), name="run-link-writer")
            self._received(first)
            while isinstance(response := await call.read(), executor_pb2.LinkResponse):
                self._received(response)
            return True
        except grpc.aio.AioRpcError as exc:
            self.unimplemented = exc.code() == grpc.StatusCode.UNIMPLEMENTED
            if self._up or not self.unimplemented:
                log.info("run link down: %s %s", exc.code().name, exc.details())
            return self._up
        except Exception:
            log.exception("run link failed")
            return self._up
        finally:
            was_up, self._up = self._up, False
            call.cancel()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._broken()
            if was_up:
                log.info("run link closed; Execute goes unary until it is back")

    async def _write(self, call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
        """Send what was queued since the last write, one message at a time: woken by an
        Execute (acks queued meanwhile go with it) or by the acks' linger."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            executes, self._executes = self._executes, []
            acks, self._acks = self._acks, []
            if acks and self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
            if executes or acks:
                await call.write(executor_pb2.LinkRequest(executes=executes, acks=acks))

    def _received(self, response: executor_pb2.LinkResponse) -> None:
        for answer in response.answers:
            future = self._answers.get(answer.sequence)
            if future is not None and not future.done():
                future.set_result(answer)
        if response.events:
            self._applier.received(self, list(response.events))

    def _broken(self) -> None:
        """Executes without an answer go unary; queued acks are moot (the executor published
        those events where the consumer takes them)."""
        for future in self._answers.values():
            if not future.done():
                future.set_exception(LinkDown())
        self._executes.clear()
        self._acks.clear()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None


class RunLinks:
    """A link to each executor new runs may go to, opened as they appear (`refresh_s`)."""

    def __init__(
        self,
        executors: ExecutorSet,
        *,
        replica: str,
        apply: Apply,
        refresh_s: float = 2.0,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._executors = executors
        self._replica = replica
        self._tracer = tracer
        self._applier = Applier(apply, tracer)
        self._refresh_s = refresh_s
        self._links: list[ExecutorLink] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._applier.start()
        self._task = asyncio.create_task(self._loop(), name="run-links")

    def open_new(self) -> None:
        """A link to each active executor that has none yet."""
        for executor in self._executors.active():
            if executor.link is None:
                link = executor.link = ExecutorLink(
                    executor.link_stub,
                    self._replica,
                    self._applier,
                    self._tracer,
                    metadata=self._executors.link_metadata,
                )
                self._links.append(link)
                link.start()

    async def _loop(self) -> None:
        while True:
            self.open_new()
            await asyncio.sleep(self._refresh_s)

    async def stop(self) -> None:
        """Close the links (unacked events go to JetStream), then the applier."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(link.stop() for link in self._links))
        await self._applier.stop()


class Applier:
    """Applies the events of every link: what arrived while an apply was in flight goes in
    the next one (one transaction), then each link gets its acks."""

    def __init__(self, apply: Apply, tracer: trace.Tracer | None = None) -> None:
        self._apply = apply
        self._tracer = tracer if tracer_records(tracer) else None
        self._pending: list[tuple[ExecutorLink, list[events_pb2.RunEvent]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def received(self, link: ExecutorLink, events: list[events_pb2.RunEvent]) -> None:
        self._pending.append((link, events))
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="run-link-applier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._step(batch)

    async def _step(self, batch: Sequence[tuple[ExecutorLink, list[events_pb2.RunEvent]]]) -> None:
        events = [event for _, events in batch for event in events]
        spans = self._spans(events)
        try:
            with trace.use_span(spans[0], end_on_exit=False) if spans else contextlib.nullcontext():
                await self._apply(events)
        except Exception as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            # Not acked: the executors publish them where the durable consumer applies them.
            log.exception("applying %d events from run links failed", len(batch))
            return
        finally:
            for span in spans:
                span.end()
        for link, events in batch:
            link.ack(event.event_id for event in events)

    def _spans(self, events: Sequence[events_pb2.RunEvent]) -> list[trace.Span]:
        """A consumer span per traced event (lifecycle events carry the run's trace context,
        progress events none), continuing the executor's run span; the first is current while
        the batch is applied (as the durable consumer's are for a fetched batch)."""
        if self._tracer is None:
            return []
        return [
            self._tracer.start_span(
                APPLY_SPAN,
                context=extract_context(dict(event.trace_context)),
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "runbox.run_link",
                    "messaging.operation.type": "process",
                    "messaging.message.id": event.event_id,
                    **run_event_span_attributes(event),
                },
            )
            for event in events
            if event.trace_context
        ]


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _error(code: grpc.StatusCode, message: str, status: bytes) -> grpc.aio.AioRpcError:
    """The error the unary Execute would have raised (its details in the trailing metadata,
    read by shared.status.from_rpc_error)."""
    trailing = grpc.aio.Metadata((DETAILS_KEY, status)) if status else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message, None)
