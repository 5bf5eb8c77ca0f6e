"""The run link, executor side (ExecutorService.Link): one long-lived stream per scheduler
replica carrying Execute requests in and, out, their answers and the state-change events of
the runs accepted over it.

Invariants:
- An Execute over a link goes through `RunManager.accept`, as the unary Execute does, and
  its answer is what the unary call would answer (same code, message and status details).
- Every event still goes to JetStream through the outbox relay. An event pushed down a link
  is held by the relay until the scheduler acknowledges it (it applied and committed it): it
  is then published on `<subject>.applied`, outside the scheduler's consumer filters, so the
  scheduler does not get it twice. Without an ack within `hold_s`, or when the link drops, it
  is published on its normal subject and the scheduler's durable consumer applies it
  (idempotently). A crash of the executor loses only the hold: after a restart the relay
  publishes what the table holds unsent, on the normal subjects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

from google.rpc import code_pb2
from opentelemetry import trace

from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from services.executor.events import timestamp
from shared.errors import DomainError
from shared.outbox import Outbox, OutboxMessage
from shared.run_subjects import APPLIED, SCHEDULER_APPLIES
from shared.status import to_status
from shared.telemetry import (
    LINK_EXECUTE_SPAN,
    current_span,
    extract_context,
    link_execute_attributes,
    tracer_records,
)

log = logging.getLogger(__name__)

# How long the relay holds an event pushed down a link for the scheduler's ack.
HOLD_S = 1.0
# Most run ids remembered as linked (a run's FINISHED, or its link's end, forgets it).
MAX_RUNS = 100_000
_PUSHED = frozenset(SCHEDULER_APPLIES)

# RunManager.accept: (accepted at, newly accepted), or a DomainError.
Accept = Callable[[executor_pb2.ExecuteRequest], Awaitable[tuple[datetime, bool]]]


class Link:
    """One open link: what waits to be sent down it, and the events it has not acked."""

    def __init__(self) -> None:
        self.replica = ""
        self.closed = False
        self.waiting: dict[str, None] = {}  # event ids sent, not acked, in order
        self._answers: list[executor_pb2.LinkAnswer] = []
        self._events: list[events_pb2.RunEvent] = []
        self._wake = asyncio.Event()

    def answer(self, answer: executor_pb2.LinkAnswer) -> None:
        self._answers.append(answer)
        self._wake.set()

    def push(self, event: events_pb2.RunEvent) -> None:
        self._events.append(event)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def responses(self) -> AsyncIterator[executor_pb2.LinkResponse]:
        """An empty first message (the link is up: the scheduler may use it), then what was
        queued since the last one, one message per loop turn at most."""
        yield executor_pb2.LinkResponse()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.closed:
                return
            answers, self._answers = self._answers, []
            events, self._events = self._events, []
            if answers or events:
                yield executor_pb2.LinkResponse(answers=answers, events=events)


class Links:
    """The executor's open links: which run reports to which, and the events held for acks."""

    def __init__(
        self, outbox: Outbox, *, hold_s: float = HOLD_S, tracer: trace.Tracer | None = None
    ) -> None:
        # The server span of an Execute over a link, only when spans are recorded.
        self._tracer = tracer if tracer_records(tracer) else None
        self._outbox = outbox
        self._hold_s = hold_s
        self._runs: dict[str, Link] = {}

    async def serve(
        self, requests: AsyncIterator[executor_pb2.LinkRequest], accept: Accept, executor_id: str
    ) -> AsyncIterator[executor_pb2.LinkResponse]:
        """One link, until the scheduler ends it or the stream breaks."""
        link = Link()
        reader = asyncio.create_task(self._read(link, requests, accept, executor_id))
        try:
            async for response in link.responses():
                yield response
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.close(link)

    async def _read(
        self,
        link: Link,
        requests: AsyncIterator[executor_pb2.LinkRequest],
        accept: Accept,
        executor_id: str,
    ) -> None:
        executing: set[asyncio.Task[None]] = set()

        async def execute(item: executor_pb2.LinkExecute) -> None:
            span = (
                current_span(
                    self._tracer,
                    LINK_EXECUTE_SPAN,
                    context=extract_context(dict(item.trace_context)),
                    kind=trace.SpanKind.SERVER,
                    attributes=link_execute_attributes(item.request.run_id),
                )
                if self._tracer is not None and item.trace_context
                else contextlib.nullcontext()
            )
            with span:
                answer = await answer_of(accept, executor_id, item)
            if answer.code:
                self.forget(item.request.run_id, link)
            link.answer(answer)

        try:
            async for request in requests:
                if request.replica_id:
                    link.replica = request.replica_id
                    log.info("run link opened by scheduler %s", link.replica)
                for item in request.executes:
                    self.expect(item.request.run_id, link)
                    task = asyncio.create_task(execute(item))
                    executing.add(task)
                    task.add_done_callback(executing.discard)
                if request.acks:
                    self.acked(link, request.acks)
        except Exception as exc:  # the stream broke: the link ends
            log.info("run link of scheduler %s broke: %s", link.replica or "?", exc)
        finally:
            link.close()

    def expect(self, run_id: str, link: Link) -> None:
        """The run's events go down `link` (set before its accept: a short run may commit
        its STARTED and FINISHED before Execute answers)."""
        self._runs.pop(run_id, None)  # re-inserted last: the oldest go first past MAX_RUNS
        self._runs[run_id] = link
        while len(self._runs) > MAX_RUNS:
            self._runs.pop(next(iter(self._runs)))

    def forget(self, run_id: str, link: Link) -> None:
        if self._runs.get(run_id) is link:
            del self._runs[run_id]

    def committed(
        self, messages: Sequence[OutboxMessage], events: Sequence[events_pb2.RunEvent]
    ) -> set[str]:
        """Called right after the outbox commit of `events` (`messages` are their rows,
        before the relay gets them): push those of linked runs down their links; the ids
        the relay must hold."""
        if not self._runs:
            return set()
        held: dict[Link, list[str]] = {}
        for event in events:
            link = self._runs.get(event.run_id)
            if link is None or event.type not in _PUSHED:
                continue
            if event.type == events_pb2.RUN_EVENT_TYPE_FINISHED:
                del self._runs[event.run_id]  # its last event
            if link.closed:
                continue
            link.push(event)
            link.waiting[event.event_id] = None
            held.setdefault(link, []).append(event.event_id)
        loop = asyncio.get_running_loop()
        for link, ids in held.items():
            loop.call_later(self._hold_s, self._expire, link, ids)
        return {i for ids in held.values() for i in ids}

    def acked(self, link: Link, event_ids: Sequence[str]) -> None:
        """The scheduler applied and committed these: published off its filters."""
        ids = [i for i in event_ids if link.waiting.pop(i, 0) is None]
        self._outbox.release(ids, suffix=APPLIED)

    def _expire(self, link: Link, event_ids: list[str]) -> None:
        """No ack in time: the scheduler gets them from JetStream."""
        ids = [i for i in event_ids if link.waiting.pop(i, 0) is None]
        if ids:
            log.debug("link %s: %d events not acked in time; published", link.replica, len(ids))
            self._outbox.release(ids)

    def close(self, link: Link) -> None:
        """The link ended: what it did not ack goes to JetStream, its runs report there."""
        link.close()
        self._outbox.release(list(link.waiting))
        link.waiting.clear()
        for run_id in [r for r, owner in self._runs.items() if owner is link]:
            del self._runs[run_id]


async def answer_of(
    accept: Accept, executor_id: str, execute: executor_pb2.LinkExecute
) -> executor_pb2.LinkAnswer:
    """The answer to one Execute sent over a link, as the unary Execute would give it."""
    try:
        accepted_at, new = await accept(execute.request)
    except DomainError as error:
        status = to_status(error)
        return executor_pb2.LinkAnswer(
            sequence=execute.sequence,
            code=status.code,
            message=status.message,
            status=status.SerializeToString(),
        )
    except Exception:
        log.exception("unhandled error in Execute over a link")
        return executor_pb2.LinkAnswer(
            sequence=execute.sequence, code=code_pb2.INTERNAL, message="internal error"
        )
    response = executor_pb2.ExecuteResponse(
        run_id=execute.request.run_id, executor_id=executor_id, newly_accepted=new
    )
    response.accepted_at.CopyFrom(timestamp(accepted_at))
    return executor_pb2.LinkAnswer(sequence=execute.sequence, accepted=response)
