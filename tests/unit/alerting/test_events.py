"""How alerting reads event subjects and payloads, and its permission map."""

from __future__ import annotations

import pytest

from runbox.alerting.v1 import alerting_pb2
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.alerting.events import InvalidEvent, describe, parse, split_subject
from services.alerting.server import PERMISSIONS, SERVICE

PREFIX = "runbox.events"


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("runbox.events.run.r-1", ("run", "r-1")),
        ("runbox.events.run.r-1.finished", ("run", "r-1")),
        # Applied by the scheduler over the run link (0.3.0), still the run's event.
        ("runbox.events.run.r-1.finished.applied", ("run", "r-1")),
        ("runbox.events.run.r-1.dead_lettered", ("run", "r-1")),
        ("runbox.events.script.hello", ("script", "hello")),
        ("runbox.events.script.team.hello", ("script", "team.hello")),
        ("runbox.events.schedule.s-1", ("schedule", "s-1")),
        ("runbox.events.quarantine.hello", ("quarantine", "hello")),
        ("runbox.events.run", ("unknown", "")),
        ("runbox.events.weird.x", ("unknown", "")),
        ("runbox.eventsrun.x", ("unknown", "")),
        ("other.events.run.x", ("unknown", "")),
    ],
)
def test_split_subject_returns_kind_and_key(subject: str, expected: tuple[str, str]) -> None:
    """A subject maps to (kind, key); anything not an event subject is 'unknown'."""
    assert split_subject(subject, PREFIX) == expected


def test_parse_decodes_each_kind_by_subject() -> None:
    """Run, script and schedule subjects decode into their own message types."""
    run = events_pb2.RunEvent(
        event_id="r1:executor:1:1", run_id="r1", type=events_pb2.RUN_EVENT_TYPE_QUEUED
    )
    script = events_pb2.ScriptEvent(
        event_id="s1", script_name="hello", type=events_pb2.SCRIPT_EVENT_TYPE_CREATED
    )
    schedule = events_pb2.ScheduleEvent(
        event_id="f1", schedule_id="s-1", type=events_pb2.SCHEDULE_EVENT_TYPE_FIRED
    )
    cases = [
        ("runbox.events.run.r1", run),
        ("runbox.events.script.hello", script),
        ("runbox.events.schedule.s-1", schedule),
    ]
    for subject, message in cases:
        event = parse(subject, message.SerializeToString(), None, PREFIX)
        assert event.message == message
        assert event.event_id == message.event_id


def test_parse_uses_nats_msg_id_when_event_id_is_empty() -> None:
    """An event without event_id is deduplicated by its Nats-Msg-Id header."""
    run = events_pb2.RunEvent(run_id="r1", type=events_pb2.RUN_EVENT_TYPE_STARTED)
    event = parse("runbox.events.run.r1", run.SerializeToString(), {"Nats-Msg-Id": "m-7"}, PREFIX)
    assert event.event_id == "m-7"


@pytest.mark.parametrize(
    ("subject", "data", "kind"),
    [
        ("runbox.events.run.r1", b"\xff\xff\xff", "run"),
        ("runbox.events.run.r1", b"", "run"),
        (
            "runbox.events.run.other",
            events_pb2.RunEvent(
                event_id="e", run_id="r1", type=events_pb2.RUN_EVENT_TYPE_QUEUED
            ).SerializeToString(),
            "run",
        ),
        (
            "runbox.events.run.r1",
            events_pb2.RunEvent(
                run_id="r1", type=events_pb2.RUN_EVENT_TYPE_QUEUED
            ).SerializeToString(),
            "run",
        ),
        (
            "runbox.events.script.x",
            events_pb2.ScriptEvent(event_id="e").SerializeToString(),
            "script",
        ),
        ("runbox.events.weird.x", b"", "unknown"),
    ],
)
def test_parse_rejects_unusable_messages(subject: str, data: bytes, kind: str) -> None:
    """Garbage, empty, mismatched or id-less payloads raise InvalidEvent with their kind."""
    with pytest.raises(InvalidEvent) as err:
        parse(subject, data, None, PREFIX)
    assert err.value.kind == kind


def test_ignored_is_true_only_for_log_and_heartbeat() -> None:
    """LOG and HEARTBEAT run events are ignored; lifecycle events are not."""

    def ignored(kind: int) -> bool:
        message = events_pb2.RunEvent(event_id="e", run_id="r", type=kind)  # type: ignore[arg-type]
        return parse("runbox.events.run.r", message.SerializeToString(), None, PREFIX).ignored

    assert ignored(events_pb2.RUN_EVENT_TYPE_LOG)
    assert ignored(events_pb2.RUN_EVENT_TYPE_HEARTBEAT)
    assert not ignored(events_pb2.RUN_EVENT_TYPE_FINISHED)


def test_describe_omits_output_and_result() -> None:
    """Log fields of a FINISHED event carry ids and state, never output or results."""
    event = events_pb2.RunEvent(
        event_id="e",
        run_id="r1",
        type=events_pb2.RUN_EVENT_TYPE_FINISHED,
        state=common_pb2.RUN_STATE_FAILED,
        script_name="hello",
        output=common_pb2.OutputTail(stdout=b"token=hunter2"),
        labels={"team": "ops"},
    )
    event.result.update({"password": "hunter2"})
    fields = describe(event)
    assert fields["run_id"] == "r1"
    assert fields["state"] == "RUN_STATE_FAILED"
    assert fields["script"] == "hello"
    assert "hunter2" not in repr(fields)


def test_describe_shows_unknown_enum_values_as_numbers() -> None:
    """A type number from a newer producer is logged as a number, not an error."""
    event = events_pb2.RunEvent(run_id="r1", type=99)  # type: ignore[arg-type]
    assert describe(event)["event"] == "99"


def test_permissions_cover_every_alerting_method() -> None:
    """Every AlertingService RPC has a permission of the alert:* scope, by verb."""
    methods = alerting_pb2.DESCRIPTOR.services_by_name["AlertingService"].methods
    assert set(PERMISSIONS) == {f"/{SERVICE}/{m.name}" for m in methods}

    def needs(method: str) -> str:
        return PERMISSIONS[f"/{SERVICE}/{method}"]

    assert needs("ListRules") == needs("GetAlert") == needs("ListDeliveries") == "alert:read"
    assert needs("CreateRule") == needs("TestChannel") == needs("ExpireSilence") == "alert:write"
    assert needs("AcknowledgeAlert") == needs("ResolveAlert") == "alert:write"
    assert needs("DeleteRule") == needs("DeleteChannel") == "alert:delete"
    assert needs("RetryDelivery") == "alert:manage"
