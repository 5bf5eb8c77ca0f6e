"""run_to_proto: stored JSON parsed once per distinct value, never shared between runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import json_format, timestamp_pb2

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.models import RUN_COLUMNS, RunRow, kept_messages, run_record
from services.scheduler.run_store import move_runs, proto_dict, repeated_proto_dict
from services.scheduler.servicer import FIXED_FIELDS, run_fixed, run_to_proto, watch_reply

LIMITS = {"cpu": 1.5, "memoryBytes": "268435456", "timeout": "3600s"}
RETRY = {"maxAttempts": 3}


def row(**fields: object) -> RunRow:
    now = datetime(2026, 12, 5, 6, 1, 2, 345678, tzinfo=UTC)
    defaults: dict[str, object] = dict(
        id="r1",
        script_name="noop",
        version_selector="",
        script_version="1",
        sha256="a" * 64,
        execution_type=1,
        state=common_pb2.RUN_STATE_SUCCEEDED,
        parameters={},
        secret_names=[],
        priority=0,
        labels={},
        attempt=1,
        limits=dict(LIMITS),
        retry=dict(RETRY),
        exit_code=0,
        failure_reason=0,
        exit_message="",
        exit_signal=0,
        usage={},
        sandbox="",
        stdout_tail=b"",
        stderr_tail=b"",
        output_truncated=False,
        stdout_total=0,
        stderr_total=0,
        result={},
        executor_id="",
        submitted_by="admin",
        dead_lettered=False,
        created_at=now,
        queued_at=now,
        started_at=now,
        finished_at=now + timedelta(seconds=1),
        next_dispatch_at=None,
    )
    return RunRow(**(defaults | fields))


def test_stored_limits_and_retry_match_json_parse_and_are_not_shared() -> None:
    """Two runs with the same stored limits get equal, separate messages: changing one
    run's leaves the other's (and the next conversion's) as stored."""
    first, second = run_to_proto(row()), run_to_proto(row(id="r2"))
    expected = json_format.ParseDict(LIMITS, common_pb2.ResourceLimits())
    assert first.limits == expected == second.limits
    assert first.retry == json_format.ParseDict(RETRY, common_pb2.RetryPolicy())
    first.limits.cpu = 99
    first.retry.max_attempts = 7
    third = run_to_proto(row(id="r3"))
    assert second.limits == expected == third.limits
    assert third.retry.max_attempts == 3


def test_empty_stored_values_give_default_messages() -> None:
    """No limits, retry, usage or result stored: the fields are left at their defaults."""
    run = run_to_proto(row(limits={}, retry={}))
    assert not run.HasField("usage") or run.usage == common_pb2.ResourceUsage()
    assert run.limits == common_pb2.ResourceLimits()
    assert run.retry == common_pb2.RetryPolicy()
    assert len(run.result.fields) == 0


def test_timestamps_match_from_datetime_for_aware_naive_and_old_times() -> None:
    """Times convert exactly as Timestamp.FromDatetime would (naive ones read as UTC)."""
    for when in (
        datetime(2026, 12, 5, 6, 1, 2, 345678, tzinfo=UTC),
        datetime(1960, 1, 1, 0, 0, 0, 1),
        datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    ):
        expected = timestamp_pb2.Timestamp()
        expected.FromDatetime(when if when.tzinfo else when.replace(tzinfo=UTC))
        assert run_to_proto(row(created_at=when)).create_time == expected


def test_an_empty_result_is_present_and_empty_as_before() -> None:
    """Releases answered `result: {}` for a run without one; skipping the parse of an empty
    value must not make the field unset (the upgrade test compares the JSON)."""
    empty = run_to_proto(row(result={}))
    assert empty.HasField("result") and json_format.MessageToDict(empty)["result"] == {}
    filled = run_to_proto(row(result={"ok": True}))
    assert json_format.MessageToDict(filled)["result"] == {"ok": True}


def _record(**fields: object) -> RunRow:
    """The run as a plain record (models.RunRecord), every column set."""
    base = row(**fields)
    values = {key: getattr(base, key, None) for key in RUN_COLUMNS}
    return run_record(values)


def test_a_watch_merging_the_fixed_fields_shows_what_a_full_conversion_shows() -> None:
    """run_to_proto with the watch's run_fixed (made from the PENDING run) gives, at each
    state, the message converted from scratch."""
    params = {"n": 1, "names": ["a", "é"]}
    pending = _record(
        state=common_pb2.RUN_STATE_PENDING,
        parameters=params,
        secret_names=["token"],
        labels={"team": "data"},
        queued_at=None,
        started_at=None,
        finished_at=None,
        idempotency_key="k",
        parent_run_id="p",
    )
    fixed = run_fixed(pending)
    moved = [
        pending,
        _record(
            state=common_pb2.RUN_STATE_QUEUED,
            parameters=params,
            secret_names=["token"],
            labels={"team": "data"},
            started_at=None,
            finished_at=None,
            idempotency_key="k",
            parent_run_id="p",
            executor_id="ex-1",
        ),
        _record(
            state=common_pb2.RUN_STATE_SUCCEEDED,
            parameters=params,
            secret_names=["token"],
            labels={"team": "data"},
            idempotency_key="k",
            parent_run_id="p",
            executor_id="ex-1",
            usage={"cpuSeconds": 0.5},
            sandbox="none",
            result={"ok": True},
            stdout_tail=b"out",
        ),
    ]
    for run in moved:
        assert run_to_proto(run, fixed) == run_to_proto(run)
    assert {f.name for f, _ in fixed.ListFields()} <= FIXED_FIELDS


def test_every_run_field_is_fixed_or_converted_each_time() -> None:
    """Each Run field is fixed (converted once per watch) or converted for every message,
    never both: a new field fails here until it is placed (artifacts: never set)."""
    moving = {
        "state",
        "exit",
        "usage",
        "output",
        "result",
        "executor_id",
        "dead_lettered",
        "retry_run_id",
        "queue_time",
        "start_time",
        "finish_time",
        "duration",
        "due_time",
    }
    names = {field.name for field in scheduler_pb2.Run.DESCRIPTOR.fields}
    assert names == FIXED_FIELDS | moving | {"artifacts"}
    assert not moving & FIXED_FIELDS


def test_a_run_an_event_ended_shows_as_the_run_read_back() -> None:
    """The usage and result messages an applied FINISHED keeps on the record give the Run
    its stored JSON columns give (read back without them)."""
    running = _record(state=common_pb2.RUN_STATE_RUNNING, finished_at=None)
    finished = events_pb2.RunEvent(
        run_id="r1",
        type=events_pb2.RUN_EVENT_TYPE_FINISHED,
        state=common_pb2.RUN_STATE_SUCCEEDED,
        usage=common_pb2.ResourceUsage(
            cpu_seconds=0.25, peak_memory_bytes=1 << 40, sandbox="docker"
        ),
    )
    finished.usage.wall_time.FromMilliseconds(1500)
    finished.occurred_at.FromDatetime(datetime(2026, 12, 5, 6, 1, 3, tzinfo=UTC))
    finished.result.update({"ok": True, "items": [1, 2.5, "x"], "nested": {"a": None}})

    move_runs({"r1": running}, [finished], [0], datetime(2026, 12, 5, 7, tzinfo=UTC))

    assert kept_messages(running) is not None
    read_back = run_record({key: getattr(running, key) for key in RUN_COLUMNS})
    assert kept_messages(read_back) is None
    assert run_to_proto(running) == run_to_proto(read_back)


def test_a_watch_reply_carries_the_run_with_every_submessage_present_as_before() -> None:
    """watch_reply (the Run built in place) is WatchRunResponse(run=run_to_proto(...)) byte
    for byte, and sub-messages at their defaults (exit, output, usage, an epoch time, a zero
    duration) are still present, as the constructors' fields made them."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for record in (
        _record(
            state=common_pb2.RUN_STATE_PENDING, queued_at=None, started_at=None, finished_at=None
        ),
        _record(queued_at=epoch, started_at=epoch, finished_at=epoch),
        _record(
            state=common_pb2.RUN_STATE_FAILED,
            exit_code=3,
            stderr_tail=b"boom",
            usage={"cpuSeconds": 1},
        ),
        _record(state=common_pb2.RUN_STATE_SCHEDULED, next_dispatch_at=epoch + timedelta(days=1)),
    ):
        fixed = run_fixed(record)
        reply = watch_reply(record, fixed)
        copied = scheduler_pb2.WatchRunResponse(run=run_to_proto(record))
        assert reply.SerializeToString(deterministic=True) == copied.SerializeToString(
            deterministic=True
        )
        for field in ("exit", "output", "usage", "result", "create_time"):
            assert reply.run.HasField(field), field
        assert reply.run.HasField("start_time") == (record.started_at is not None)
        assert reply.run.HasField("duration") == (record.finished_at is not None)
        assert reply.run.HasField("due_time") == (record.state == common_pb2.RUN_STATE_SCHEDULED)


def test_repeated_messages_are_stored_as_proto_dict_stores_them_in_dicts_of_their_own() -> None:
    """repeated_proto_dict gives proto_dict's value for every message, also the second time
    (from its conversion kept), in a dict the caller may change without touching the next."""
    limits = common_pb2.ResourceLimits(cpu=1.5, memory_bytes=256 << 20)
    limits.timeout.FromSeconds(3600)
    messages = [
        limits,
        common_pb2.ResourceLimits(),
        common_pb2.RetryPolicy(max_attempts=3),
        common_pb2.RetryPolicy(),
    ]
    for message in messages * 2:
        first = repeated_proto_dict(message)
        assert first == proto_dict(message)
        first["changed"] = True
        assert repeated_proto_dict(message) == proto_dict(message)
