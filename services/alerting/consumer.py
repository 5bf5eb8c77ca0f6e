"""Consumes every lifecycle event (durable consumer "alerting"), once per
event id. Rules and notifications build on this; for now it records and
logs what it saw — never secret values (events carry none)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.alerting.metrics import AlertingMetrics
from services.alerting.models import ProcessedEvent

log = logging.getLogger(__name__)
KINDS: dict[str, type[Message]] = {
    "run": events_pb2.RunEvent,
    "script": events_pb2.ScriptEvent,
    "schedule": events_pb2.ScheduleEvent,
}


def kind_of(subject: str, prefix: str) -> str:
    """'runbox.events.run.<id>' -> 'run'; '' if not an event subject."""
    if not subject.startswith(prefix + "."):
        return ""
    kind = subject[len(prefix) + 1 :].split(".", 1)[0]
    return kind if kind in KINDS else ""


class EventRecorder:
    """Handler for the alerting consumer."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], metrics: AlertingMetrics, prefix: str
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._prefix = prefix

    async def __call__(self, msg: Msg) -> None:
        kind = kind_of(msg.subject, self._prefix)
        if not kind:
            self._metrics.events.labels("unknown", "invalid").inc()
            log.warning("event on unexpected subject %s dropped", msg.subject)
            return
        try:
            event = KINDS[kind].FromString(msg.data)
        except DecodeError:
            self._metrics.events.labels(kind, "invalid").inc()
            log.warning("undecodable %s event on %s dropped", kind, msg.subject)
            return
        event_id = getattr(event, "event_id", "") or (msg.headers or {}).get("Nats-Msg-Id", "")
        if not await self._first_time(event_id, kind, msg.subject):
            self._metrics.events.labels(kind, "duplicate").inc()
            return
        self._metrics.events.labels(kind, "processed").inc()
        log.info("saw %s event", kind, extra=describe(event))

    async def _first_time(self, event_id: str, kind: str, subject: str) -> bool:
        if not event_id:
            return True
        try:
            async with self._sessions() as session, session.begin():
                session.add(
                    ProcessedEvent(
                        event_id=event_id, kind=kind, subject=subject, received_at=datetime.now(UTC)
                    )
                )
        except IntegrityError:
            return False
        return True


def describe(event: Message) -> dict[str, object]:
    """Log fields for an event (ids, state, script; never output or parameters)."""
    if isinstance(event, events_pb2.RunEvent):
        return {
            "run_id": event.run_id,
            "event": events_pb2.RunEventType.Name(event.type),
            "state": common_pb2.RunState.Name(event.state),
            "script": event.script_name,
            "version": event.script_version,
            "attempt": event.attempt,
        }
    if isinstance(event, events_pb2.ScriptEvent):
        return {
            "event": events_pb2.ScriptEventType.Name(event.type),
            "script": event.script_name,
            "version": event.version,
        }
    if isinstance(event, events_pb2.ScheduleEvent):
        return {
            "event": events_pb2.ScheduleEventType.Name(event.type),
            "schedule_id": event.schedule_id,
            "script": event.script_name,
        }
    return {}
