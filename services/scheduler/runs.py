"""Runs: submit, read, list, cancel, and apply lifecycle events. No gRPC
server code here; the catalogue is reached through a small client."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler import state as sm
from services.scheduler.catalogue import CatalogueClient
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import RunRow
from services.scheduler.watch import Change, Watchers
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from shared.outbox import Outbox
from shared.telemetry import inject_context

RS = common_pb2.RunState


def _now() -> datetime:
    return datetime.now(UTC)


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Runs:
    """The run table's domain operations."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        catalogue: CatalogueClient,
        watchers: Watchers,
        metrics: SchedulerMetrics,
        *,
        subjects_prefix: str,
    ) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._catalogue = catalogue
        self._watchers = watchers
        self._metrics = metrics
        self._prefix = subjects_prefix
        # Secret values live only here, in memory, until the run is dispatched.
        self.secrets: dict[str, dict[str, str]] = {}
        self.on_submitted: list[Any] = []
        # Called inside the transaction that ends a run, whichever way it ends (an executor's
        # event, a cancel while pending, a dispatch failure, a lost lease): what follows from
        # it (a retry, a dead letter, a schedule's failure count) commits with it or not at all.
        self.on_terminal: list[Callable[[AsyncSession, RunRow], Awaitable[None]]] = []

    async def submit(self, request: scheduler_pb2.SubmitRunRequest, *, actor: str) -> RunRow:
        """Validate through the catalogue and commit the run PENDING."""
        if request.idempotency_key:
            existing = await self._by_key(request.idempotency_key)
            if existing is not None:
                return existing
        if not request.script.name:
            raise InvalidArgument.field("script.name", "script name is required")
        if request.priority < -1000 or request.priority > 1000:
            raise InvalidArgument.field("priority", "must be between -1000 and 1000")
        raw = json_format.MessageToDict(request.parameters)
        validated = await self._catalogue.validate(request.script, request.parameters)
        script = await self._catalogue.get_script(request.script.name)
        version = validated.version
        row = RunRow(
            id=uuid.uuid4().hex,
            script_name=version.script_name,
            version_selector=request.script.version,
            script_version=version.version,
            sha256=version.sha256,
            execution_type=version.execution_type,
            state=RS.RUN_STATE_PENDING,
            parameters=json_format.MessageToDict(validated.values),
            secret_names=list(validated.secret_names),
            config=_dict(script.config),
            priority=request.priority,
            labels=dict(request.labels),
            idempotency_key=request.idempotency_key or None,
            limits=self._limits(script, request),
            retry=_dict(request.retry)
            if request.HasField("retry")
            else _dict(script.default_retry),
            isolation=script.isolation,
            runtime=script.runtime,
            submitted_by=actor,
            trace_context=inject_context(),
            created_at=_now(),
            updated_at=_now(),
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
                await session.flush()
                await self._event(session, row, events_pb2.RUN_EVENT_TYPE_SUBMITTED, "submitted")
        except IntegrityError:
            existing = (
                await self._by_key(request.idempotency_key) if request.idempotency_key else None
            )
            if existing is None:
                raise
            return existing
        self.secrets[row.id] = {n: _secret_text(raw.get(n)) for n in row.secret_names if n in raw}
        self._outbox.notify()
        self._metrics.submitted.inc()
        for hook in self.on_submitted:
            hook()
        return row

    @staticmethod
    def _limits(script: Any, request: scheduler_pb2.SubmitRunRequest) -> dict[str, Any]:
        limits = common_pb2.ResourceLimits()
        limits.CopyFrom(script.default_limits)
        if request.HasField("limits"):
            for field, value in request.limits.ListFields():
                getattr(limits, field.name).CopyFrom(value) if field.message_type else setattr(
                    limits, field.name, value
                )
        if request.HasField("timeout"):
            if request.timeout.ToTimedelta().total_seconds() <= 0:
                raise InvalidArgument.field("timeout", "must be positive")
            limits.timeout.CopyFrom(request.timeout)
        return _dict(limits)

    async def _by_key(self, key: str) -> RunRow | None:
        async with self._sessions() as session:
            return await session.scalar(select(RunRow).where(RunRow.idempotency_key == key))

    async def get(self, run_id: str) -> RunRow:
        if not run_id:
            raise InvalidArgument.field("id", "run id is required")
        async with self._sessions() as session:
            row = await session.get(RunRow, run_id)
        if row is None:
            raise NotFound("run", run_id)
        return row

    async def list(self, request: scheduler_pb2.ListRunsRequest) -> tuple[Sequence[RunRow], str]:
        """Newest first; the cursor is (created_at, id) so inserts never shift pages."""
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(request.page_size or 50, 500)
        query = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc())
        if request.script_name:
            query = query.where(RunRow.script_name == request.script_name)
        if request.schedule_id:
            query = query.where(RunRow.schedule_id == request.schedule_id)
        if request.states:
            query = query.where(RunRow.state.in_(list(request.states)))
        if request.HasField("created_after"):
            query = query.where(RunRow.created_at >= request.created_after.ToDatetime(UTC))
        if request.HasField("created_before"):
            query = query.where(RunRow.created_at < request.created_before.ToDatetime(UTC))
        query = after_cursor(query, RunRow.created_at, RunRow.id, request.page_token)
        wanted = dict(request.labels)
        async with self._sessions() as session:
            rows: list[RunRow] = []
            async for row in await session.stream_scalars(query):
                if all(row.labels.get(k) == v for k, v in wanted.items()):
                    rows.append(row)
                    if len(rows) > size:
                        break
        token = encode_cursor(rows[size - 1]) if len(rows) > size else ""
        return rows[:size], token

    async def cancel_pending(self, run_id: str) -> RunRow | None:
        """Cancel a run no executor holds yet; None if it is past PENDING."""
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, run_id, with_for_update=True)
            if row is None:
                raise NotFound("run", run_id)
            if sm.is_terminal(row.state):
                raise FailedPrecondition(f"run {run_id} already ended ({RS.Name(row.state)})")
            if row.state != RS.RUN_STATE_PENDING:
                return None
            self._finish(
                row,
                RS.RUN_STATE_CANCELLED,
                common_pb2.FAILURE_REASON_CANCELLED,
                "cancelled while pending",
            )
            await self._event(session, row, events_pb2.RUN_EVENT_TYPE_FINISHED, "cancelled")
            await self._ended(session, row)
        self._after_change(row)
        return row

    async def fail(self, run_id: str, reason: int, message: str) -> None:
        """End a run the scheduler cannot dispatch (invalid config, lost secrets)."""
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, run_id, with_for_update=True)
            if row is None or sm.is_terminal(row.state):
                return
            self._finish(row, RS.RUN_STATE_FAILED, reason, message)
            await self._event(session, row, events_pb2.RUN_EVENT_TYPE_FINISHED, "failed")
            await self._ended(session, row)
        self._after_change(row)

    def _finish(self, row: RunRow, state: int, reason: int, message: str) -> None:
        row.state, row.failure_reason, row.exit_message = state, reason, message
        row.finished_at = row.updated_at = _now()
        self.secrets.pop(row.id, None)

    async def _ended(self, session: AsyncSession, row: RunRow) -> None:
        for hook in self.on_terminal:
            await hook(session, row)

    def _after_change(self, row: RunRow) -> None:
        self._outbox.notify()
        self._watchers.notify(Change(row.id))
        if sm.is_terminal(row.state):
            self._metrics.finished.labels(
                RS.Name(row.state).removeprefix("RUN_STATE_").lower()
            ).inc()

    async def _event(self, session: AsyncSession, row: RunRow, kind: int, tag: str) -> None:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        event = events_pb2.RunEvent(
            event_id=f"{row.id}:scheduler:{tag}",
            run_id=row.id,
            attempt=row.attempt,
            type=kind,  # type: ignore[arg-type]
            state=RS.ValueType(row.state),  # type: ignore[arg-type]
            occurred_at=now,
            trace_context=row.trace_context,
            script_name=row.script_name,
            script_version=row.script_version,
            execution_type=common_pb2.ExecutionType.ValueType(row.execution_type),  # type: ignore[arg-type]
            schedule_id=row.schedule_id or "",
            labels=row.labels,
            parent_run_id=row.parent_run_id or "",
            exit=common_pb2.ExitInfo(reason=row.failure_reason, message=row.exit_message),  # type: ignore[arg-type]
        )
        await self._outbox.add(
            session,
            subject=f"{self._prefix}.run.{row.id}",
            msg_id=event.event_id,
            payload=event.SerializeToString(),
            headers=dict(row.trace_context),
        )

    async def mark_dispatched(self, run_id: str, executor_id: str, address: str) -> None:
        """Record the executor; move to QUEUED unless events already moved it on."""
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, run_id, with_for_update=True)
            if row is None:
                return
            row.executor_id, row.executor_address = executor_id, address
            if sm.can_move(row.state, RS.RUN_STATE_QUEUED):
                row.state, row.queued_at = RS.RUN_STATE_QUEUED, _now()
            row.updated_at = _now()
        self.secrets.pop(run_id, None)
        self._watchers.notify(Change(run_id))

    async def defer(self, run_id: str, until: datetime) -> None:
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, run_id)
            if row is not None and row.state == RS.RUN_STATE_PENDING:
                row.next_dispatch_at = until
                row.dispatch_attempts += 1

    async def pending(self, limit: int) -> Sequence[RunRow]:
        """Runs to dispatch: highest priority first, FIFO within a priority."""
        now = _now()
        query = (
            select(RunRow)
            .where(RunRow.state == RS.RUN_STATE_PENDING)
            .where((RunRow.next_dispatch_at.is_(None)) | (RunRow.next_dispatch_at <= now))
            .order_by(RunRow.priority.desc(), RunRow.created_at, RunRow.id)
            .limit(limit)
        )
        async with self._sessions() as session:
            return (await session.scalars(query)).all()

    async def apply(self, event: events_pb2.RunEvent) -> bool:
        """Apply one lifecycle event; False when it changes nothing."""
        if event.type == events_pb2.RUN_EVENT_TYPE_LOG:
            stream = "stdout" if event.log.stream == events_pb2.LOG_STREAM_STDOUT else "stderr"
            self._watchers.notify(Change(event.run_id, stream, event.log.data))
            return False
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, event.run_id, with_for_update=True)
            if row is None or not sm.can_move(row.state, event.state):
                return False
            _apply_fields(row, event)
            if sm.is_terminal(row.state):
                await self._ended(session, row)
        self._after_change(row)
        return True


def _ts(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(UTC)


def _apply_fields(row: RunRow, event: events_pb2.RunEvent) -> None:
    row.state, row.updated_at = event.state, _now()
    if event.executor_id:
        row.executor_id = event.executor_id
    if event.state == RS.RUN_STATE_QUEUED or row.queued_at is None:
        row.queued_at = row.queued_at or _ts(event.occurred_at)
    if event.HasField("started_at"):
        row.started_at = _ts(event.started_at)
    elif event.state == RS.RUN_STATE_RUNNING:
        row.started_at = _ts(event.occurred_at)
    if sm.is_terminal(event.state):
        row.finished_at = (
            _ts(event.finished_at) if event.HasField("finished_at") else _ts(event.occurred_at)
        )
        row.exit_code, row.failure_reason = event.exit.exit_code, event.exit.reason
        row.exit_message, row.exit_signal = event.exit.message, event.exit.signal
        row.usage = _dict(event.usage)
        row.stdout_tail, row.stderr_tail = event.output.stdout, event.output.stderr
        row.output_truncated = event.output.truncated
        row.stdout_total, row.stderr_total = (
            event.output.stdout_total_bytes,
            event.output.stderr_total_bytes,
        )
        row.result = json_format.MessageToDict(event.result)


def _secret_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def encode_cursor(row: RunRow) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def after_cursor(query: Any, created_at: Any, ident: Any, token: str) -> Any:
    """Rows after a newest-first (created_at, id) keyset cursor; the query unchanged if none."""
    if not token:
        return query
    at, last_id = decode_cursor(token)
    return query.where((created_at < at) | ((created_at == at) & (ident < last_id)))


def decode_cursor(token: str) -> tuple[datetime, str]:
    try:
        at, run_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        parsed = datetime.fromisoformat(at)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)), run_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None
