"""Lifecycle events as alerting reads them: which message type a subject
carries, what makes an event valid, and the log fields that describe one
(ids, states and script names, never output, results or parameters)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import DecodeError, Message

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2

# Subject kind (the token after the prefix) -> message type on that subject.
MESSAGE_TYPES: dict[str, type[Message]] = {
    "run": events_pb2.RunEvent,
    "script": events_pb2.ScriptEvent,
    "schedule": events_pb2.ScheduleEvent,
    "quarantine": events_pb2.ScheduleEvent,
}
UNKNOWN = "unknown"
# Run events alerting has no use for: live output and lease extensions.
IGNORED_RUN_EVENTS = frozenset({events_pb2.RUN_EVENT_TYPE_LOG, events_pb2.RUN_EVENT_TYPE_HEARTBEAT})


class InvalidEvent(Exception):
    """A message that is not a usable event (acked and counted, never retried)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """A decoded, valid event and the id it is deduplicated by."""

    kind: str
    event_id: str
    message: Message

    @property
    def ignored(self) -> bool:
        """True for run events no rule looks at (LOG, HEARTBEAT)."""
        return (
            isinstance(self.message, events_pb2.RunEvent)
            and self.message.type in IGNORED_RUN_EVENTS
        )


def split_subject(subject: str, prefix: str) -> tuple[str, str]:
    """'runbox.events.run.<id>' (before 0.4.0) or 'runbox.events.run.<id>.<type>' ->
    ('run', '<id>'); kind is 'unknown' if not ours."""
    if not subject.startswith(prefix + "."):
        return UNKNOWN, ""
    kind, _, rest = subject[len(prefix) + 1 :].partition(".")
    if kind == "run":
        rest = rest.partition(".")[0]  # the type token, if any, is the payload's too
    if kind not in MESSAGE_TYPES or not rest:
        return UNKNOWN, ""
    return kind, rest


def parse(subject: str, data: bytes, headers: Mapping[str, str] | None, prefix: str) -> Event:
    """Decode and check one message; raise InvalidEvent when it is unusable."""
    kind, key = split_subject(subject, prefix)
    if kind == UNKNOWN:
        raise InvalidEvent(UNKNOWN, "subject is not an event subject")
    try:
        message = MESSAGE_TYPES[kind].FromString(data)
    except DecodeError:
        raise InvalidEvent(kind, "payload is not a protobuf event") from None
    _check(kind, key, message)
    event_id = str(getattr(message, "event_id", "")) or (headers or {}).get("Nats-Msg-Id", "")
    if not event_id:
        raise InvalidEvent(kind, "no event_id and no Nats-Msg-Id")
    return Event(kind=kind, event_id=event_id, message=message)


def _check(kind: str, key: str, message: Message) -> None:
    """Reject payloads that decode (protobuf is lenient) but say nothing usable."""
    if isinstance(message, events_pb2.RunEvent):
        if message.run_id != key:
            raise InvalidEvent(kind, "run_id does not match the subject")
        if message.type == events_pb2.RUN_EVENT_TYPE_UNSPECIFIED:
            raise InvalidEvent(kind, "run event type is unspecified")
    elif isinstance(message, events_pb2.ScriptEvent):
        if not message.script_name:
            raise InvalidEvent(kind, "script event without script_name")
        if message.type == events_pb2.SCRIPT_EVENT_TYPE_UNSPECIFIED:
            raise InvalidEvent(kind, "script event type is unspecified")
    elif (
        isinstance(message, events_pb2.ScheduleEvent)
        and message.type == events_pb2.SCHEDULE_EVENT_TYPE_UNSPECIFIED
    ):
        raise InvalidEvent(kind, "schedule event type is unspecified")


def describe(message: Message) -> dict[str, object]:
    """Log fields for an event: ids, type, state, script; nothing a user wrote."""
    if isinstance(message, events_pb2.RunEvent):
        return {
            "run_id": message.run_id,
            "event": _name(events_pb2.RunEventType, message.type),
            "state": _name(common_pb2.RunState, message.state),
            "script": message.script_name,
            "version": message.script_version,
            "attempt": message.attempt,
        }
    if isinstance(message, events_pb2.ScriptEvent):
        return {
            "event": _name(events_pb2.ScriptEventType, message.type),
            "script": message.script_name,
            "version": message.version,
        }
    if isinstance(message, events_pb2.ScheduleEvent):
        return {
            "event": _name(events_pb2.ScheduleEventType, message.type),
            "schedule_id": message.schedule_id,
            "script": message.script_name,
            "run_id": message.run_id,
        }
    return {}


def _name(enum: EnumTypeWrapper, value: int) -> str:
    """Enum value name; a number from a newer producer is shown as is."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)
