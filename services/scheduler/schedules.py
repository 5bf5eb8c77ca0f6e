"""Schedule definitions: create, read, list, update, delete, pause, resume
and preview. Firing is a later step: it reads `next_fire_at`, which is
computed here on every change that can move it.

Stored parameters are the values the caller gave (checked against the
script's current version through the catalogue), so each fire gets the
defaults of its own time. Secret values are refused: a schedule would have to
keep them at rest, and secrets belong to the runtime.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import field_mask_pb2, json_format
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import schedule_spec
from services.scheduler import triggers as tr
from services.scheduler.catalogue import CatalogueClient
from services.scheduler.models import ScheduleRow
from services.scheduler.runs import after_cursor, encode_cursor
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound

SS = pb.ScheduleState
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


class Schedules:
    """The schedule table's domain operations."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        catalogue: CatalogueClient,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._sessions = sessions
        self._catalogue = catalogue
        self._clock = clock

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
            row.definition = _to_dict(merged)
            row.name, row.script_name = merged.name, merged.script.name
            if row.state == SS.SCHEDULE_STATE_ACTIVE:
                row.next_fire_at = tr.next_fire(spec, now)
            row.updated_at = now
        return row

    async def delete(self, schedule_id: str) -> str:
        async with self._sessions() as session, session.begin():
            row = await self._locked(session, schedule_id)
            await session.delete(row)
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
            row.state, row.next_fire_at = SS.SCHEDULE_STATE_PAUSED, None
            row.pause_reason = reason[:1000] or row.pause_reason
            row.updated_at = self._clock()
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

    @staticmethod
    async def _locked(session: AsyncSession, schedule_id: str) -> ScheduleRow:
        if not schedule_id:
            raise InvalidArgument.field("id", "schedule id is required")
        row = await session.get(ScheduleRow, schedule_id, with_for_update=True)
        if row is None:
            raise NotFound("schedule", schedule_id)
        return row


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
