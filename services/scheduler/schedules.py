"""Schedule definitions: create, read, list, update, delete, pause, resume,
preview, and the read side of firing (fires, statistics). Firing itself is
`firing.py`: it reads `next_fire_at`, which is computed here on every change
that can move it, and is woken by `on_change`.

Stored parameters are the values the caller gave (checked against the
script's current version through the catalogue), so each fire gets the
defaults of its own time. Secret values are refused: a schedule would have to
keep them at rest, and secrets belong to the runtime.
"""

from __future__ import annotations

import base64
import hashlib
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf import field_mask_pb2, json_format, timestamp_pb2
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import schedule_spec
from services.scheduler import state as sm
from services.scheduler import triggers as tr
from services.scheduler.catalogue import CatalogueClient
from services.scheduler.models import FireRow, RunRow, ScheduleRow
from services.scheduler.run_store import after_cursor, encode_cursor
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from shared.outbox import Outbox, OutboxMessage
from shared.telemetry import inject_context

SS = pb.ScheduleState
FO = pb.FireOutcome
RS = common_pb2.RunState
SE = events_pb2.ScheduleEventType
STATISTICS_WINDOW = timedelta(days=30)
STATISTICS_WINDOW_MAX = timedelta(days=366)
# Set by the server; a request's values for them are ignored.
OUTPUT_ONLY = (
    "id",
    "state",
    "next_fire_time",
    "last_fire_time",
    "consecutive_failures",
    "create_time",
    "update_time",
    "created_by",
)
_DESCRIPTOR: Any = pb.Schedule.DESCRIPTOR
PREVIEW_DEFAULT = 10
PREVIEW_MAX = 1000


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored one is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def definition(row: ScheduleRow) -> pb.Schedule:
    """The user-set fields of a stored schedule."""
    return json_format.ParseDict(row.definition, pb.Schedule())


def _user_fields(schedule: pb.Schedule) -> pb.Schedule:
    result = pb.Schedule()
    result.CopyFrom(schedule)
    for name in OUTPUT_ONLY:
        result.ClearField(name)  # type: ignore[arg-type]
    schedule_spec.fill_defaults(result)
    return result


def _request_digest(schedule: pb.Schedule) -> str:
    return hashlib.sha256(schedule.SerializeToString(deterministic=True)).hexdigest()


class ScheduleRef(Protocol):
    """What an event needs of its schedule (a row, or what a bulk fire read of it)."""

    @property
    def id(self) -> str: ...

    @property
    def script_name(self) -> str: ...


@dataclass(frozen=True)
class ScheduleEvents:
    """Stages ScheduleEvents (subject `<prefix>.schedule.<schedule id>`) in the caller's
    transaction; `key` makes the Nats-Msg-Id, so a retried transaction publishes once."""

    outbox: Outbox
    prefix: str

    async def stage(
        self,
        session: AsyncSession,
        kind: events_pb2.ScheduleEventType,
        row: ScheduleRow,
        **fields: Any,
    ) -> None:
        """Stage `message(kind, row, **fields)` in the caller's transaction."""
        await self.outbox.add_many(session, [self.message(kind, row, **fields)])

    def message(
        self,
        kind: events_pb2.ScheduleEventType,
        row: ScheduleRef,
        *,
        key: str,
        nominal: datetime | None = None,
        run_id: str = "",
        reason: str = "",
    ) -> OutboxMessage:
        """The event, ready to stage."""
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        event = events_pb2.ScheduleEvent(
            event_id=f"schedule:{row.id}:{key}:{SE.Name(kind).removeprefix('SCHEDULE_EVENT_TYPE_')}",
            type=kind,
            schedule_id=row.id,
            script_name=row.script_name,
            run_id=run_id,
            reason=reason,
            occurred_at=now,
        )
        if nominal is not None:
            event.fire_time.FromDatetime(nominal)
        return OutboxMessage(
            f"{self.prefix}.schedule.{row.id}",
            event.event_id,
            event.SerializeToString(),
            inject_context({}),
        )


@dataclass(frozen=True)
class Statistics:
    """Run figures of a schedule or script over a window."""

    by_state: dict[str, int]
    total: int
    success_rate: float
    average: timedelta | None
    p95: timedelta | None
    last_fire: datetime | None
    next_fire: datetime | None
    fires_by_outcome: dict[str, int] = field(default_factory=dict)


class AheadFires(Protocol):
    """Fires recorded before their time (services/scheduler/firing)."""

    async def withdraw(self, session: AsyncSession, schedule_id: str, why: str) -> None: ...


class Schedules:
    """The schedule table's domain operations."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalogue: CatalogueClient,
        events: ScheduleEvents,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._sessions = sessions
        self._catalogue = catalogue
        self._events = events
        self._clock = clock
        # Called after a commit that may move a next fire (the firing loop wakes early).
        self.on_change: list[Callable[[], None]] = []
        # Withdraws a schedule's fires recorded ahead of their time (firing), inside the
        # transaction that pauses, changes or deletes it.
        self.ahead: AheadFires | None = None
        # Called after a schedule is deleted, with its id (firing cancels its held runs).
        self.on_delete: list[Callable[[str], Awaitable[None]]] = []

    def _changed(self) -> None:
        for hook in self.on_change:
            hook()

    async def create(self, request: pb.CreateScheduleRequest, *, actor: str) -> ScheduleRow:
        """Validate the whole schedule and store it ACTIVE with its next fire."""
        key, digest = request.idempotency_key, _request_digest(request.schedule)
        if len(key) > 200:
            raise InvalidArgument.field("idempotency_key", "must be at most 200 characters")
        if key and (existing := await self._by_key(key)) is not None:
            return self._same_request(existing, digest)
        schedule = _user_fields(request.schedule)
        now = self._clock()
        spec = schedule_spec.check(schedule, now=now, anchor=now)
        await self._check_script(schedule)
        row = ScheduleRow(
            id=uuid.uuid4().hex,
            name=schedule.name,
            script_name=schedule.script.name,
            state=SS.SCHEDULE_STATE_ACTIVE,
            definition=_to_dict(schedule),
            next_fire_at=tr.next_fire(spec, now),
            consecutive_failures=0,
            pause_reason="",
            idempotency_key=key or None,
            request_sha256=digest,
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
        except IntegrityError:
            existing = await self._by_key(key) if key else None
            if existing is None:
                raise
            return self._same_request(existing, digest)
        self._changed()
        return row

    @staticmethod
    def _same_request(existing: ScheduleRow, digest: str) -> ScheduleRow:
        if existing.request_sha256 != digest:
            raise FailedPrecondition(
                f"idempotency key already used for a different schedule ({existing.id})",
                [FieldViolation("idempotency_key", "already used with another request")],
            )
        return existing

    async def _by_key(self, key: str) -> ScheduleRow | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(ScheduleRow).where(ScheduleRow.idempotency_key == key)
            )

    async def _check_script(self, schedule: pb.Schedule) -> None:
        """The script exists and the stored parameters fit it; no secret values."""
        try:
            validated = await self._catalogue.validate(schedule.script, schedule.parameters)
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"schedule is invalid: {exc.message}",
                [FieldViolation(f"schedule.{v.field}", v.description) for v in exc.violations],
            ) from None
        except NotFound as exc:
            field = (
                "schedule.script.version" if "version" in exc.message else "schedule.script.name"
            )
            raise InvalidArgument(exc.message, [FieldViolation(field, exc.message)]) from None
        secret = sorted(set(validated.secret_names) & set(schedule.parameters.keys()))
        if secret:
            raise FailedPrecondition(
                f"schedules cannot store secret parameter values ({', '.join(secret)}): "
                "secrets must come from the runtime; leave them out of the schedule",
                [
                    FieldViolation(f"schedule.parameters.{name}", "secret values are not stored")
                    for name in secret
                ],
            )

    async def get(self, schedule_id: str) -> ScheduleRow:
        if not schedule_id:
            raise InvalidArgument.field("id", "schedule id is required")
        async with self._sessions() as session:
            row = await session.get(ScheduleRow, schedule_id)
        if row is None:
            raise NotFound("schedule", schedule_id)
        return row

    async def list(self, request: pb.ListSchedulesRequest) -> tuple[Sequence[ScheduleRow], str]:
        """Newest first; the cursor is (created_at, id) like runs, so pages never shift."""
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(request.page_size or 50, 500)
        query = select(ScheduleRow).order_by(ScheduleRow.created_at.desc(), ScheduleRow.id.desc())
        if request.script_name:
            query = query.where(ScheduleRow.script_name == request.script_name)
        if request.states:
            query = query.where(ScheduleRow.state.in_(list(request.states)))
        query = after_cursor(query, ScheduleRow.created_at, ScheduleRow.id, request.page_token)
        async with self._sessions() as session:
            rows = list((await session.scalars(query.limit(size + 1))).all())
        token = encode_cursor(rows[size - 1]) if len(rows) > size else ""
        return rows[:size], token

    async def update(self, request: pb.UpdateScheduleRequest) -> ScheduleRow:
        """Apply the fields named by the mask, then validate the result as a whole."""
        if not request.schedule.id:
            raise InvalidArgument.field("schedule.id", "schedule id is required")
        paths = _mask_paths(request.update_mask)
        current = await self.get(request.schedule.id)
        merged = definition(current)
        mask = field_mask_pb2.FieldMask(paths=paths)
        mask.MergeMessage(
            request.schedule, merged, replace_message_field=True, replace_repeated_field=True
        )
        merged = _user_fields(merged)
        now = self._clock()
        spec = schedule_spec.check(merged, now=now, anchor=_aware(current.created_at))
        await self._check_script(merged)
        async with self._sessions() as session, session.begin():
            row = await self._locked(session, current.id)
            if row.state == SS.SCHEDULE_STATE_ACTIVE and row.next_fire_at is not None:
                due = _aware(row.next_fire_at)
                if due <= now:
                    await self._skip_due(session, row, due, now)
            await self._withdraw(session, row.id, "the schedule was updated")
            row.definition = _to_dict(merged)
            row.name, row.script_name = merged.name, merged.script.name
            if row.state == SS.SCHEDULE_STATE_ACTIVE:
                row.next_fire_at = tr.next_fire(spec, now)
            row.updated_at = now
        self._events.outbox.notify()
        self._changed()
        return row

    async def _skip_due(
        self, session: AsyncSession, row: ScheduleRow, due: datetime, now: datetime
    ) -> None:
        """The fire that was due but not yet claimed when the schedule changed: recorded
        SKIPPED (the new definition counts from now), never dropped silently. A firing loop
        that claimed it meanwhile wins (its fire row has the key)."""
        reason = "the schedule was updated after this fire was due and before it was claimed"
        try:
            async with session.begin_nested():
                session.add(
                    FireRow(
                        schedule_id=row.id,
                        nominal_at=due,
                        outcome=pb.FIRE_OUTCOME_SKIPPED,
                        run_id=None,
                        reason=reason,
                        recorded_at=now,
                    )
                )
        except IntegrityError:
            return
        key = due.astimezone(UTC).isoformat().replace("+00:00", "Z")
        await self._events.stage(
            session, SE.SCHEDULE_EVENT_TYPE_FIRE_SKIPPED, row, key=key, nominal=due, reason=reason
        )

    async def _withdraw(self, session: AsyncSession, schedule_id: str, why: str) -> None:
        if self.ahead is not None:
            await self.ahead.withdraw(session, schedule_id, why)

    async def delete(self, schedule_id: str) -> str:
        async with self._sessions() as session, session.begin():
            row = await self._locked(session, schedule_id)
            await self._withdraw(session, row.id, "the schedule was deleted")
            await session.delete(row)
        for hook in self.on_delete:
            await hook(schedule_id)
        return schedule_id

    async def pause(self, schedule_id: str, reason: str) -> ScheduleRow:
        """ACTIVE -> PAUSED (no next fire); pausing a paused schedule updates its reason."""
        async with self._sessions() as session, session.begin():
            row = await self._locked(session, schedule_id)
            if row.state not in (SS.SCHEDULE_STATE_ACTIVE, SS.SCHEDULE_STATE_PAUSED):
                raise FailedPrecondition(
                    f"schedule {schedule_id} is {SS.Name(row.state)}; only an active "
                    "schedule can be paused (resume it instead)"
                )
            was = row.state
            await self._withdraw(session, row.id, "the schedule was paused")
            row.state, row.next_fire_at = SS.SCHEDULE_STATE_PAUSED, None
            row.pause_reason = reason[:1000] or row.pause_reason
            row.updated_at = self._clock()
            if was == SS.SCHEDULE_STATE_ACTIVE:
                await self._events.stage(
                    session,
                    SE.SCHEDULE_EVENT_TYPE_PAUSED,
                    row,
                    key=uuid.uuid4().hex,
                    reason=row.pause_reason or "paused by a user",
                )
        self._events.outbox.notify()
        return row

    async def resume(self, schedule_id: str) -> ScheduleRow:
        """PAUSED, DISABLED or COMPLETED -> ACTIVE, next fire counted from now."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            row = await self._locked(session, schedule_id)
            if row.state == SS.SCHEDULE_STATE_ACTIVE:
                return row
            following = tr.next_fire(self.spec(row), now)
            if following is None:
                raise FailedPrecondition(
                    f"schedule {schedule_id} has no future fire (end_time passed or a "
                    "once trigger in the past); update it before resuming"
                )
            row.state, row.next_fire_at = SS.SCHEDULE_STATE_ACTIVE, following
            row.consecutive_failures, row.pause_reason = 0, ""
            row.updated_at = now
            await self._events.stage(
                session, SE.SCHEDULE_EVENT_TYPE_RESUMED, row, key=uuid.uuid4().hex
            )
        self._events.outbox.notify()
        self._changed()
        return row

    def spec(self, row: ScheduleRow) -> tr.Spec:
        """The trigger spec of a stored (already validated) schedule."""
        return schedule_spec.check_timing(definition(row), anchor=_aware(row.created_at))

    async def preview(self, request: pb.PreviewScheduleRequest) -> tuple[Sequence[datetime], str]:
        """The next fires from now of a stored or proposed schedule, and its zone."""
        count = request.count or PREVIEW_DEFAULT
        if not 1 <= count <= PREVIEW_MAX:
            raise InvalidArgument.field("count", f"must be between 1 and {PREVIEW_MAX}")
        now = self._clock()
        target = request.WhichOneof("target")
        if target == "id":
            spec = self.spec(await self.get(request.id))
        elif target == "schedule":
            spec = schedule_spec.check_timing(_user_fields(request.schedule), anchor=now)
        else:
            raise InvalidArgument.field("target", "id or schedule is required")
        return list(tr.upcoming(spec, now, count)), spec.zone.key

    async def fires(self, request: pb.ListFiresRequest) -> tuple[Sequence[FireRow], str]:
        """A schedule's fires, newest nominal time first; the cursor is that time."""
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        await self.get(request.schedule_id)
        size = min(request.page_size or 50, 500)
        query = (
            select(FireRow)
            .where(FireRow.schedule_id == request.schedule_id)
            .order_by(FireRow.nominal_at.desc())
        )
        if request.page_token:
            query = query.where(FireRow.nominal_at < _decode_fire_cursor(request.page_token))
        async with self._sessions() as session:
            rows = list((await session.scalars(query.limit(size + 1))).all())
        token = ""
        if len(rows) > size:
            last = _aware(rows[size - 1].nominal_at).isoformat()
            token = base64.urlsafe_b64encode(last.encode()).decode()
        return rows[:size], token

    async def statistics(self, request: pb.GetStatisticsRequest) -> Statistics:
        """Runs created within the window by a schedule (or of a script): counts by terminal
        state, success rate among ended runs, average and p95 (nearest rank) duration of the
        runs that started and ended, and the last and next fire."""
        window = STATISTICS_WINDOW
        if request.HasField("window"):
            window = request.window.ToTimedelta()
            if not timedelta(0) < window <= STATISTICS_WINDOW_MAX:
                raise InvalidArgument.field(
                    "window", f"must be positive and at most {STATISTICS_WINDOW_MAX.days} days"
                )
        target = request.WhichOneof("target")
        schedules: Sequence[ScheduleRow]
        if target == "schedule_id":
            schedules = [await self.get(request.schedule_id)]
            runs_of: Any = RunRow.schedule_id == request.schedule_id
        elif target == "script_name" and request.script_name:
            async with self._sessions() as session:
                schedules = (
                    await session.scalars(
                        select(ScheduleRow).where(ScheduleRow.script_name == request.script_name)
                    )
                ).all()
            runs_of = RunRow.script_name == request.script_name
        else:
            raise InvalidArgument.field("target", "schedule_id or script_name is required")
        since = self._clock() - window
        async with self._sessions() as session:
            counts = (
                await session.execute(
                    select(RunRow.state, func.count())
                    .where(runs_of, RunRow.created_at >= since)
                    .group_by(RunRow.state)
                )
            ).all()
            spans = (
                await session.execute(
                    select(RunRow.started_at, RunRow.finished_at).where(
                        runs_of,
                        RunRow.created_at >= since,
                        RunRow.started_at.is_not(None),
                        RunRow.finished_at.is_not(None),
                    )
                )
            ).all()
            fires = await self._fire_counts(session, [s.id for s in schedules], since)
        by_state = {RS.Name(s): int(n) for s, n in counts if sm.is_terminal(s)}
        ended = sum(by_state.values())
        durations = sorted(_aware(end) - _aware(start) for start, end in spans if start and end)
        lasts = [_aware(s.last_fire_at) for s in schedules if s.last_fire_at is not None]
        nexts = [_aware(s.next_fire_at) for s in schedules if s.next_fire_at is not None]
        return Statistics(
            by_state=by_state,
            total=sum(int(n) for _, n in counts),
            success_rate=by_state.get(RS.Name(RS.RUN_STATE_SUCCEEDED), 0) / ended if ended else 0.0,
            average=sum(durations, timedelta(0)) / len(durations) if durations else None,
            p95=durations[math.ceil(0.95 * len(durations)) - 1] if durations else None,
            last_fire=max(lasts, default=None),
            next_fire=min(nexts, default=None),
            fires_by_outcome=fires,
        )

    @staticmethod
    async def _fire_counts(
        session: AsyncSession, schedule_ids: Sequence[str], since: datetime
    ) -> dict[str, int]:
        """Fire records of the schedules with a nominal time in the window, by outcome (the
        per-schedule figures Prometheus does not carry: its counters have no schedule label)."""
        if not schedule_ids:
            return {}
        rows = (
            await session.execute(
                select(FireRow.outcome, func.count())
                .where(FireRow.schedule_id.in_(schedule_ids), FireRow.nominal_at >= since)
                .group_by(FireRow.outcome)
            )
        ).all()
        return {FO.Name(outcome): int(n) for outcome, n in rows}

    @staticmethod
    async def _locked(session: AsyncSession, schedule_id: str) -> ScheduleRow:
        """The schedule, locked for the caller's transaction. SQLite has no row locks and
        its transaction begins at the first write, so there the first statement is a write
        (updated_at set to itself), which takes the database's write lock: what the caller
        reads next (the fires to withdraw) cannot change before it commits, even from
        another scheduler on the same file."""
        if not schedule_id:
            raise InvalidArgument.field("id", "schedule id is required")
        if session.get_bind().dialect.name == "sqlite":
            await session.execute(
                update(ScheduleRow)
                .where(ScheduleRow.id == schedule_id)
                .values(updated_at=ScheduleRow.updated_at)
            )
        row = await session.get(ScheduleRow, schedule_id, with_for_update=True)
        if row is None:
            raise NotFound("schedule", schedule_id)
        return row


def _decode_fire_cursor(token: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None
    return _aware(parsed)


def _to_dict(schedule: pb.Schedule) -> dict[str, Any]:
    return json_format.MessageToDict(schedule, preserving_proto_field_name=True)


def _mask_paths(mask: field_mask_pb2.FieldMask) -> list[str]:
    if not mask.paths:
        raise InvalidArgument.field("update_mask", "name the fields to update")
    bad: list[FieldViolation] = []
    for i, path in enumerate(mask.paths):
        if path.split(".")[0] in OUTPUT_ONLY:
            bad.append(FieldViolation(f"update_mask.paths[{i}]", f"{path!r} is output only"))
        elif not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(_DESCRIPTOR):
            bad.append(FieldViolation(f"update_mask.paths[{i}]", f"no field {path!r} in Schedule"))
    if bad:
        raise InvalidArgument("update_mask is invalid", bad)
    return list(mask.paths)
