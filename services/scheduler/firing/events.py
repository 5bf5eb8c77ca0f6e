"""The one builder of the events a fire publishes: the run's SUBMITTED event and the
schedule's FIRED / SKIPPED / MISSED / QUEUED-release event, for both write paths.

A bulk fire (see records.py) adds only its own fields to a template serialised once per
version of its schedule (protobuf messages concatenate: a field set twice takes the
last value), so the event bytes are the same as the general path's, built field by field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler.firing.planning import iso, timestamp
from services.scheduler.models import RunRow
from services.scheduler.runs import Runs
from services.scheduler.schedules import ScheduleEvents, ScheduleRef
from shared.outbox import OutboxMessage
from shared.run_subjects import run_subject

FO = pb.FireOutcome
SE = events_pb2.ScheduleEventType
# The event of each fire outcome; a QUEUED fire publishes FIRED when it is released.
EVENT_OF: dict[int, events_pb2.ScheduleEventType] = {
    FO.FIRE_OUTCOME_FIRED: SE.SCHEDULE_EVENT_TYPE_FIRED,
    FO.FIRE_OUTCOME_SKIPPED: SE.SCHEDULE_EVENT_TYPE_FIRE_SKIPPED,
    FO.FIRE_OUTCOME_MISSED: SE.SCHEDULE_EVENT_TYPE_FIRE_MISSED,
}
SUBMITTED = events_pb2.RUN_EVENT_TYPE_SUBMITTED


@dataclass(frozen=True)
class Template:
    """A FIRED fire's two events without their per-fire fields, serialised once."""

    run_event: bytes = b""
    run_headers: dict[str, str] = field(default_factory=dict)
    fired_event: bytes = b""
    fired_headers: dict[str, str] = field(default_factory=dict)


class FireMessages:
    """Builds every event of a fire (outbox messages, staged by the caller)."""

    def __init__(self, runs: Runs, events: ScheduleEvents) -> None:
        self._runs = runs
        self._events = events

    @property
    def prefix(self) -> str:
        return self._events.prefix

    def template(self, values: Mapping[str, Any], ref: ScheduleRef) -> Template:
        """The events of a FIRED fire whose run has column `values`, less the fields each
        fire sets (`fired`)."""
        message = self._runs.events.event_message({**values, "id": ""}, SUBMITTED, "submitted")
        event = events_pb2.RunEvent.FromString(message.payload)
        for name in ("event_id", "run_id", "occurred_at"):
            event.ClearField(name)  # type: ignore[arg-type]
        scheduled_message = self.schedule(SE.SCHEDULE_EVENT_TYPE_FIRED, ref, key="")
        scheduled = events_pb2.ScheduleEvent.FromString(scheduled_message.payload)
        for name in ("event_id", "occurred_at"):
            scheduled.ClearField(name)  # type: ignore[arg-type]
        return Template(
            event.SerializeToString(),
            message.headers,
            scheduled.SerializeToString(),
            scheduled_message.headers,
        )

    @staticmethod
    def for_schedule(shared: Template, ref: ScheduleRef) -> Template:
        """`shared` (the template of schedules alike, built with an empty ScheduleRef) for
        the fires of schedule `ref`: its own fields appended to both events."""
        return Template(
            shared.run_event + events_pb2.RunEvent(schedule_id=ref.id).SerializeToString(),
            shared.run_headers,
            shared.fired_event
            + events_pb2.ScheduleEvent(
                schedule_id=ref.id, script_name=ref.script_name
            ).SerializeToString(),
            shared.fired_headers,
        )

    def fired(
        self,
        template: Template,
        *,
        schedule_id: str,
        run_id: str,
        nominal: datetime,
        created: datetime,
        state: int = 0,
    ) -> list[OutboxMessage]:
        """A FIRED fire's run SUBMITTED and schedule FIRED events, from its template (the
        run's `state` when it is not the template's, PENDING: SCHEDULED for a fire recorded
        ahead of its time). The FIRED event of a fire recorded ahead names its run in its
        id: that fire may be withdrawn and its nominal time fired again by another run, whose
        FIRED event must not collide with the first's (the outbox's unique message id,
        JetStream's duplicate window)."""
        occurred = timestamp(created)
        run_event_id = f"{run_id}:scheduler:submitted"
        ahead = f":{run_id}" if state == common_pb2.RUN_STATE_SCHEDULED else ""
        fired_id = f"schedule:{schedule_id}:{iso(nominal)}{ahead}:FIRED"
        return [
            OutboxMessage(
                run_subject(self.prefix, run_id, SUBMITTED),
                run_event_id,
                template.run_event
                + events_pb2.RunEvent(
                    event_id=run_event_id,
                    run_id=run_id,
                    occurred_at=occurred,
                    state=state,  # type: ignore[arg-type]
                ).SerializeToString(),
                template.run_headers,
            ),
            OutboxMessage(
                f"{self.prefix}.schedule.{schedule_id}",
                fired_id,
                template.fired_event
                + events_pb2.ScheduleEvent(
                    event_id=fired_id,
                    run_id=run_id,
                    occurred_at=occurred,
                    fire_time=timestamp(nominal),
                ).SerializeToString(),
                template.fired_headers,
            ),
        ]

    def recorded(
        self, ref: ScheduleRef, nominal: datetime, outcome: int, run: RunRow | None, reason: str
    ) -> list[OutboxMessage]:
        """The events of one fire recorded with `outcome` (the general path)."""
        messages = []
        if run is not None:
            messages.append(self._runs.events.event_message(run, SUBMITTED, "submitted"))
        kind = EVENT_OF.get(outcome)
        if kind is not None:
            messages.append(
                self.schedule(
                    kind,
                    ref,
                    key=iso(nominal),
                    nominal=nominal,
                    run_id=run.id if run is not None else "",
                    reason=reason,
                )
            )
        return messages

    def schedule(
        self,
        kind: events_pb2.ScheduleEventType,
        ref: ScheduleRef,
        *,
        key: str,
        nominal: datetime | None = None,
        run_id: str = "",
        reason: str = "",
    ) -> OutboxMessage:
        """One schedule event (`key` makes its Nats-Msg-Id)."""
        return self._events.message(
            kind, ref, key=key, nominal=nominal, run_id=run_id, reason=reason
        )

    async def stage(
        self,
        session: AsyncSession,
        kind: events_pb2.ScheduleEventType,
        ref: ScheduleRef,
        **fields: Any,
    ) -> None:
        """Stage one schedule event in the caller's transaction."""
        await self._events.outbox.add_many(session, [self.schedule(kind, ref, **fields)])
