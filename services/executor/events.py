"""RunEvents the executor publishes (through its outbox). Never carries
secret values: output is redacted before it gets here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from google.protobuf import duration_pb2, timestamp_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.executor.models import OUTBOX
from services.executor.outbox_writer import SqliteOutboxWriter
from services.executor.results import result_struct
from services.executor.runners.base import Outcome
from shared.outbox import Outbox, OutboxMessage
from shared.run_subjects import run_subject

if TYPE_CHECKING:
    from services.executor.link import Links

# How long an event nobody waits for (a run's STARTED) may wait for a commit that would be
# made anyway (its run's FINISHED, another run's QUEUED) before it gets one of its own.
LINGER_S = 0.05


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """Timestamp.FromDatetime by integer arithmetic (a naive value is UTC, as there): the
    same seconds and nanos without its time-tuple round trip."""
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if value is None else timestamp(value)


@dataclass
class RunContext:
    """The identity of a run as it appears in every event."""

    run_id: str
    attempt: int
    script_name: str
    script_version: str
    execution_type: int
    executor_id: str
    schedule_id: str = ""
    parent_run_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    trace_context: dict[str, str] = field(default_factory=dict)
    sequence: int = 0


def event_id(run_id: str, attempt: int, sequence: int) -> str:
    """A run's event id: stable for (run, attempt, sequence), so JetStream drops a re-send."""
    return f"{run_id}:executor:{attempt}:{sequence}"


def build_event(ctx: RunContext, kind: int, state: int, **fields: object) -> events_pb2.RunEvent:
    """The next event of a run; event_id is stable for (run, attempt, sequence)."""
    ctx.sequence += 1
    ns = time.time_ns()
    now = timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)
    return events_pb2.RunEvent(
        event_id=event_id(ctx.run_id, ctx.attempt, ctx.sequence),
        run_id=ctx.run_id,
        attempt=ctx.attempt,
        sequence=ctx.sequence,
        type=kind,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        occurred_at=now,
        trace_context=ctx.trace_context,
        script_name=ctx.script_name,
        script_version=ctx.script_version,
        execution_type=ctx.execution_type,  # type: ignore[arg-type]
        executor_id=ctx.executor_id,
        schedule_id=ctx.schedule_id,
        labels=ctx.labels,
        parent_run_id=ctx.parent_run_id,
        **fields,  # type: ignore[arg-type]
    )


def finished_fields(
    outcome: Outcome, stdout: tuple[bytes, int, bool], stderr: tuple[bytes, int, bool]
) -> dict[str, object]:
    """FINISHED-only fields: exit info (with any collection warnings), usage, the
    retained output, the result and the artifacts."""
    wall = duration_pb2.Duration()
    wall.FromNanoseconds(int(outcome.usage.wall_seconds * 1e9))
    fields: dict[str, object] = {
        "started_at": _ts(outcome.started_at),
        "finished_at": _ts(outcome.finished_at),
        "exit": common_pb2.ExitInfo(
            exit_code=outcome.exit_code,
            reason=outcome.reason,  # type: ignore[arg-type]
            message="; ".join(m for m in (outcome.message, *outcome.warnings) if m),
            signal=outcome.signal,
        ),
        "usage": common_pb2.ResourceUsage(
            cpu_seconds=outcome.usage.cpu_seconds,
            peak_memory_bytes=outcome.usage.peak_memory_bytes,
            io_read_bytes=outcome.usage.io_read_bytes,
            io_write_bytes=outcome.usage.io_write_bytes,
            wall_time=wall,
            sandbox=outcome.usage.sandbox,
        ),
        "output": common_pb2.OutputTail(
            stdout=stdout[0],
            stderr=stderr[0],
            truncated=stdout[2] or stderr[2],
            stdout_total_bytes=stdout[1],
            stderr_total_bytes=stderr[1],
        ),
        "artifacts": [
            common_pb2.Artifact(name=a.name, size_bytes=a.size_bytes, sha256=a.sha256, uri=a.uri)
            for a in outcome.artifacts
        ],
    }
    if outcome.result is not None:
        fields["result"] = result_struct(outcome.result)
    return fields


class EventPublisher:
    """Stages events in the executor's outbox and wakes the relay. With a `writer` (the
    executor's SQLite file) a transaction is made on the loop when SQLite gives its lock at
    once, else one hop to the writer's thread; otherwise it goes through SQLAlchemy sessions
    (any dialect)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        prefix: str,
        writer: SqliteOutboxWriter | None = None,
        linger_s: float = LINGER_S,
        links: Links | None = None,
    ) -> None:
        self._links = links
        self._sessions = sessions
        self._outbox = outbox
        self._prefix = prefix
        self._writer_db = writer
        self._pending: list[tuple[list[events_pb2.RunEvent], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._linger_s = linger_s
        # Staged events some caller waits for (or that must not wait): the next write takes
        # every pending event with them. Until one comes, deferred events wait at most
        # linger_s (one timer for all of them).
        self._urgent = False
        self._linger: asyncio.TimerHandle | None = None
        self._busy = False  # a commit is scheduled or in flight

    async def accepted_at(self, run_id: str, attempt: int) -> datetime | None:
        """When a process of this executor (on this database) accepted the run: its QUEUED
        event, always its first (sequence 1), is in the outbox; None if it is not. Survives a
        restart, unlike the memory of accepted run ids."""
        if self._writer_db is not None:
            return await self._writer_db.created_at(event_id(run_id, attempt, 1))
        async with self._sessions() as session:
            staged: datetime | None = await session.scalar(
                select(OUTBOX.c.created_at).where(OUTBOX.c.msg_id == event_id(run_id, attempt, 1))
            )
        if staged is None:
            return None
        return staged if staged.tzinfo else staged.replace(tzinfo=UTC)

    def stage(
        self, events: Sequence[events_pb2.RunEvent], *, defer: bool = False
    ) -> asyncio.Future[None]:
        """Queue events for the next transaction, in call order, without waiting: the future
        is done once they are committed. Events staged while a write is in flight share the
        next transaction (group commit): one commit for many runs' events. Building an event
        and staging it with no await in between keeps each run's sequence numbers in outbox
        order, and a run's next event never waits for its previous one's commit.

        `defer`: nothing waits for these events (a run's STARTED): they go with the next
        write any other event asks for (most often the run's own FINISHED, or another run's
        QUEUED), or after `linger_s` at the latest. A short run's STARTED and FINISHED are
        then one commit and one publish round instead of two."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a caller that stops waiting loses no error
        self._pending.append((list(events), future))
        if defer and self._linger_s > 0:
            if self._linger is None and not self._urgent:
                self._linger = asyncio.get_running_loop().call_later(self._linger_s, self._lingered)
            return future
        self._urgent = True
        self._write()
        return future

    def _lingered(self) -> None:
        self._linger = None
        self._urgent = True  # deferred events waited long enough
        self._write()

    def _write(self) -> None:
        """Commit what is pending at the end of this loop turn (whatever is staged in the same
        turn shares the commit), unless a commit is on its way (it takes them next)."""
        if self._busy:
            return
        self._busy = True
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """On the loop: commit on the writer's loop connection when SQLite allows it at once
        (no thread hop, no task); else a task waits for the writer's thread (or a session),
        and takes what is staged meanwhile after it, in order."""
        if not (self._pending and self._urgent):
            self._busy = False
            self._arm_linger()
            return
        batch, messages = self._take()
        if not messages:
            self._busy = False
            self._arm_linger()
            return
        if self._writer_db is not None:
            try:
                done = self._writer_db.insert_now(messages)
            except Exception as exc:  # every waiter sees the failure of its transaction
                done = True
                _settle(batch, exc)
            else:
                if done:
                    self._committed(batch, messages)
                    _settle(batch, None)
            if done:
                self._busy = False
                self._arm_linger()
                return
        self._writer = asyncio.create_task(self._write_pending(batch, messages))

    def _take(
        self,
    ) -> tuple[list[tuple[list[events_pb2.RunEvent], asyncio.Future[None]]], list[OutboxMessage]]:
        """Everything pending, in staging order, and its outbox rows."""
        batch, self._pending = self._pending, []
        self._urgent = False
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        try:
            messages = [
                OutboxMessage(
                    subject=run_subject(self._prefix, event.run_id, event.type),
                    msg_id=event.event_id,
                    payload=event.SerializeToString(),
                    headers=_trace_headers(event),
                )
                for events, _ in batch
                for event in events
            ]
        except Exception as exc:  # its waiters learn it; the publisher goes on
            _settle(batch, exc)
            return [], []
        return batch, messages

    def _arm_linger(self) -> None:
        """Deferred events left pending get their commit after linger_s at the latest."""
        if self._pending and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self._linger_s, self._lingered)

    async def _write_pending(
        self,
        batch: list[tuple[list[events_pb2.RunEvent], asyncio.Future[None]]],
        messages: list[OutboxMessage],
    ) -> None:
        try:
            while True:
                try:
                    await self._commit(messages)
                    self._committed(batch, messages)
                except Exception as exc:  # every waiter sees the failure of its transaction
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
                if not (self._pending and self._urgent):
                    return
                batch, messages = self._take()
        finally:
            self._busy = False
            self._arm_linger()

    async def _commit(self, messages: list[OutboxMessage]) -> None:
        """Write events in one transaction (waiting for the lock)."""
        if not messages:
            return
        if self._writer_db is not None:
            await self._writer_db.insert(messages)
        else:
            async with self._sessions() as session, session.begin():
                await self._outbox.add_many(session, messages)

    def _committed(
        self,
        batch: list[tuple[list[events_pb2.RunEvent], asyncio.Future[None]]],
        messages: list[OutboxMessage],
    ) -> None:
        """Hand what was just committed to the run links (services/executor/link.py), then
        to the relay, which holds what went down a link until its ack."""
        held: set[str] = set()
        if self._links is not None:
            held = self._links.committed(messages, [e for events, _ in batch for e in events])
        self._outbox.committed(messages, held=held)


def _settle(
    batch: list[tuple[list[events_pb2.RunEvent], asyncio.Future[None]]], exc: Exception | None
) -> None:
    for _, future in batch:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


# Progress events: no trace context in their headers, so they make no publish or consume
# spans (a long run's heartbeats would fill its trace).
_UNTRACED = (events_pb2.RUN_EVENT_TYPE_HEARTBEAT, events_pb2.RUN_EVENT_TYPE_LOG)


def _trace_headers(event: events_pb2.RunEvent) -> dict[str, str]:
    """The run's trace context (whoever writes the batch) for lifecycle events."""
    return {} if event.type in _UNTRACED else dict(event.trace_context)
