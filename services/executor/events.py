"""RunEvents the executor publishes (through its outbox). Never carries
secret values: output is redacted before it gets here."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

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


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


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
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
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
    executor's SQLite file) each transaction is one hop to the writer's thread; otherwise
    it goes through SQLAlchemy sessions (any dialect)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        prefix: str,
        writer: SqliteOutboxWriter | None = None,
    ) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._prefix = prefix
        self._writer_db = writer
        self._pending: list[tuple[list[events_pb2.RunEvent], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

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

    def stage(self, events: Sequence[events_pb2.RunEvent]) -> asyncio.Future[None]:
        """Queue events for the next transaction, in call order, without waiting: the future
        is done once they are committed. Events staged while a write is in flight share the
        next transaction (group commit): one commit for many runs' events. Building an event
        and staging it with no await in between keeps each run's sequence numbers in outbox
        order, and a run's next event never waits for its previous one's commit."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a caller that stops waiting loses no error
        self._pending.append((list(events), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending())
        return future

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._commit([event for events, _ in batch for event in events])
            except Exception as exc:  # every waiter sees the failure of its transaction
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _commit(self, events: Sequence[events_pb2.RunEvent]) -> None:
        """Write events in one transaction and hand them to the relay."""
        if not events:
            return
        messages = [
            OutboxMessage(
                subject=run_subject(self._prefix, event.run_id, event.type),
                msg_id=event.event_id,
                payload=event.SerializeToString(),
                headers=_trace_headers(event),
            )
            for event in events
        ]
        if self._writer_db is not None:
            await self._writer_db.insert(messages)
        else:
            async with self._sessions() as session, session.begin():
                await self._outbox.add_many(session, messages)
        self._outbox.committed(messages)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


# Progress events: no trace context in their headers, so they make no publish or consume
# spans (a long run's heartbeats would fill its trace).
_UNTRACED = (events_pb2.RUN_EVENT_TYPE_HEARTBEAT, events_pb2.RUN_EVENT_TYPE_LOG)


def _trace_headers(event: events_pb2.RunEvent) -> dict[str, str]:
    """The run's trace context (whoever writes the batch) for lifecycle events."""
    return {} if event.type in _UNTRACED else dict(event.trace_context)
