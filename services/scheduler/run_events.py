"""The scheduler's own run events (SUBMITTED, FINISHED by the scheduler, RETRIED,
DEAD_LETTERED), staged in the outbox within the transaction that makes them true."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import timestamp_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.scheduler import handoff
from services.scheduler.models import RunRow
from shared.outbox import Outbox, OutboxMessage
from shared.run_subjects import run_subject
from shared.telemetry import inject_context


class RunEvents:
    """Builds and stages the lifecycle events of runs (id "<run>:scheduler:<tag>")."""

    def __init__(self, outbox: Outbox, *, subjects_prefix: str) -> None:
        self.outbox = outbox
        self._prefix = subjects_prefix
        # Inside `collecting`: the run events its transaction stages, relayed from memory
        # after the commit.
        self._staging: contextvars.ContextVar[list[OutboxMessage] | None] = contextvars.ContextVar(
            "staging", default=None
        )

    @contextlib.contextmanager
    def collecting(self) -> Iterator[list[OutboxMessage]]:
        """The events staged within, in a list (for the relay, once committed)."""
        staged: list[OutboxMessage] = []
        token = self._staging.set(staged)
        try:
            yield staged
        finally:
            self._staging.reset(token)

    async def stage(self, session: AsyncSession, row: RunRow) -> None:
        """Add a prepared run and its SUBMITTED event to the caller's transaction (claimed
        for a direct hand-off when the submit asked for one: handoff.py)."""
        await handoff.claim_in(session, row)
        session.add(row)
        await session.flush()
        await self.stage_event(session, row, events_pb2.RUN_EVENT_TYPE_SUBMITTED, "submitted")

    async def stage_event(self, session: AsyncSession, row: RunRow, kind: int, tag: str) -> None:
        """Stage a lifecycle event of `row` (id "<run>:scheduler:<tag>") in the caller's
        transaction; run-end hooks report retries and dead letters with it."""
        message = self.event_message(row, kind, tag)
        await self.outbox.add_many(session, [message])
        staged = self._staging.get()
        if staged is not None:
            staged.append(message)

    def event_message(self, row: RunRow | Mapping[str, Any], kind: int, tag: str) -> OutboxMessage:
        """The lifecycle event of a run (a row, or its column values as inserted without an
        ORM object; id "<run>:scheduler:<tag>"), ready to stage."""
        get = row.get if isinstance(row, Mapping) else row.__getattribute__
        run_id, trace_context = get("id"), get("trace_context")
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        event = events_pb2.RunEvent(
            event_id=f"{run_id}:scheduler:{tag}",
            run_id=run_id,
            attempt=get("attempt"),
            type=kind,  # type: ignore[arg-type]
            state=get("state"),
            occurred_at=now,
            trace_context=trace_context,
            script_name=get("script_name"),
            script_version=get("script_version"),
            execution_type=get("execution_type"),
            schedule_id=get("schedule_id") or "",
            labels=get("labels"),
            parent_run_id=get("parent_run_id") or "",
            exit=common_pb2.ExitInfo(reason=get("failure_reason"), message=get("exit_message")),
        )
        return OutboxMessage(
            run_subject(self._prefix, str(run_id), kind),
            event.event_id,
            event.SerializeToString(),
            inject_context(dict(trace_context or {})),
        )
