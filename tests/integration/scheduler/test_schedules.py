"""Schedule definitions over a real scheduler gRPC server backed by a real
catalogue: create, validation, idempotency, list, update, pause/resume,
delete, preview and permissions."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2, status_pb2

from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from shared.auth import hash_token, new_token
from shared.status import DETAILS_KEY, from_rpc_error
from tests.integration.dialects import DIALECTS, fresh_database
from tests.integration.stack import RunPath, start_run_path, start_scheduler

Mutator = Callable[[pb.Schedule], None]


class ScheduleTokens:
    """Admin and service tokens plus principals holding only schedule permissions."""

    def __init__(self, directory: Path) -> None:
        self.admin, self.service = new_token(), new_token()
        self.runs_reader, self.sched_reader = new_token(), new_token()
        self.sched_writer = new_token()
        self.principals_file = directory / "schedule-principals.json"
        entries = [
            ("admin", self.admin, ["*"]),
            ("svc", self.service, ["*"]),
            ("runs-reader", self.runs_reader, ["script:read", "script_execution:read"]),
            ("sched-reader", self.sched_reader, ["script_schedule:read"]),
            ("sched-writer", self.sched_writer, ["script_schedule:read", "script_schedule:write"]),
        ]
        principals = [
            {"name": n, "token_sha256": hash_token(t), "permissions": p} for n, t, p in entries
        ]
        self.principals_file.write_text(json.dumps({"principals": principals}))


@pytest.fixture
async def path(tmp_path: Path, nats_server: Any) -> AsyncIterator[RunPath]:
    tokens = ScheduleTokens(tmp_path)
    stack = await start_run_path(tmp_path, nats_server.url, tokens, with_executor=False)
    await stack.publish("nightly", "print('night')\n")
    yield stack
    await stack.close()


def cron(expression: str = "0 3 * * *", script: str = "nightly", **fields: Any) -> pb.Schedule:
    schedule = pb.Schedule(
        name="nightly-report",
        script=common_pb2.ScriptRef(name=script),
        trigger=pb.Trigger(cron=pb.CronSpec(expression=expression)),
        **fields,
    )
    return schedule


def create(schedule: pb.Schedule, key: str = "") -> pb.CreateScheduleRequest:
    return pb.CreateScheduleRequest(schedule=schedule, idempotency_key=key)


def precondition_subjects(error: grpc.aio.AioRpcError) -> set[str]:
    """Subjects of the PreconditionFailure detail of a FAILED_PRECONDITION."""
    subjects: set[str] = set()
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                    failure = error_details_pb2.PreconditionFailure()
                    detail.Unpack(failure)
                    subjects |= {v.subject for v in failure.violations}
    return subjects


async def violations(
    call: Any, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> set[str]:
    """Await a call that must fail with `code`; the violated field paths."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return precondition_subjects(err.value)
    return {v.field for v in getattr(from_rpc_error(err.value), "violations", [])}


async def test_create_schedule_is_active_with_defaults_and_next_fire(path: RunPath) -> None:
    """A created schedule is ACTIVE, has explicit defaults and its next fire in its zone."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(create(cron("0 3 * * *", time_zone="Europe/Paris")))
    assert created.id and created.state == pb.SCHEDULE_STATE_ACTIVE
    assert created.created_by == "admin"
    assert created.dst_policy == pb.DST_POLICY_SHIFT_FORWARD_FIRE_ONCE
    assert created.day_filter == pb.DAY_FILTER_ALL
    assert created.concurrency == pb.CONCURRENCY_POLICY_FORBID
    assert created.catch_up == pb.CATCH_UP_POLICY_SKIP
    next_fire = created.next_fire_time.ToDatetime(UTC)
    assert next_fire > datetime.now(UTC)
    local = next_fire.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (3, 0)
    fetched = await stub.GetSchedule(pb.GetScheduleRequest(id=created.id))
    assert fetched == created


async def test_create_accepts_every_trigger_kind(path: RunPath) -> None:
    """Cron (5 and 6 fields), interval, once, daily, weekly, monthly and yearly all store."""
    at = pb.TimeOfDay(hour=6, minute=30)
    soon = datetime.now(UTC) + timedelta(days=2)
    once = pb.OnceSpec()
    once.at.FromDatetime(soon)
    interval = pb.IntervalSpec()
    interval.every.FromTimedelta(timedelta(minutes=15))
    triggers = [
        pb.Trigger(cron=pb.CronSpec(expression="*/5 * * * *")),
        pb.Trigger(cron=pb.CronSpec(expression="30 */5 * * * *")),
        pb.Trigger(interval=interval),
        pb.Trigger(once=once),
        pb.Trigger(daily=pb.DailySpec(at=at)),
        pb.Trigger(weekly=pb.WeeklySpec(weekdays=[1, 5], at=at)),
        pb.Trigger(monthly=pb.MonthlySpec(days=[1, 31], at=at)),
        pb.Trigger(yearly=pb.YearlySpec(month=2, day=29, at=at)),
    ]
    stub = path.scheduler_stub()
    for trigger in triggers:
        schedule = pb.Schedule(script=common_pb2.ScriptRef(name="nightly"), trigger=trigger)
        created = await stub.CreateSchedule(create(schedule))
        assert created.HasField("next_fire_time"), trigger
    listed = (await stub.ListSchedules(pb.ListSchedulesRequest())).schedules
    once_created = [s for s in listed if s.trigger.WhichOneof("kind") == "once"]
    assert [s.next_fire_time.ToDatetime(UTC) for s in once_created] == [soon]


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "5 fields"),
        ("* * * * * * * *", "5 fields"),
        ("0 0 30 2 *", "never fires"),
    ],
)
async def test_create_rejects_bad_cron_expression(
    path: RunPath, expression: str, reason: str
) -> None:
    """Bad or never-firing cron expressions are INVALID_ARGUMENT on the expression field."""
    stub = path.scheduler_stub()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSchedule(create(cron(expression)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_rpc_error(err.value)
    assert [v.field for v in error.violations] == ["schedule.trigger.cron.expression"]  # type: ignore[attr-defined]
    assert reason in error.violations[0].description  # type: ignore[attr-defined]


def _set(path_: str, value: Any) -> Mutator:
    def mutate(schedule: pb.Schedule) -> None:
        *parents, leaf = path_.split(".")
        target: Any = schedule
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)

    return mutate


def _seconds(path_: str, seconds: int) -> Mutator:
    return _set(path_ + ".seconds", seconds)


def _when(field: str, delta: timedelta) -> Mutator:
    def mutate(schedule: pb.Schedule) -> None:
        getattr(schedule, field).FromDatetime(datetime.now(UTC) + delta)

    return mutate


def _both(*mutators: Mutator) -> Mutator:
    def mutate(schedule: pb.Schedule) -> None:
        for m in mutators:
            m(schedule)

    return mutate


def _trigger(trigger: pb.Trigger) -> Mutator:
    def mutate(schedule: pb.Schedule) -> None:
        schedule.trigger.CopyFrom(trigger)

    return mutate


def _interval(seconds: int) -> pb.Trigger:
    trigger = pb.Trigger()
    trigger.interval.every.seconds = seconds
    return trigger


def _once(delta: timedelta) -> pb.Trigger:
    trigger = pb.Trigger()
    trigger.once.at.FromDatetime(datetime.now(UTC) + delta)
    return trigger


BAD_FIELDS: list[tuple[str, Mutator, str]] = [
    ("unknown zone", _set("time_zone", "Mars/Olympus_Mons"), "schedule.time_zone"),
    ("zone path", _set("time_zone", "../../etc/passwd"), "schedule.time_zone"),
    (
        "end before start",
        _both(_when("start_time", timedelta(days=10)), _when("end_time", timedelta(days=5))),
        "schedule.end_time",
    ),
    ("end in the past", _when("end_time", timedelta(days=-1)), "schedule.end_time"),
    ("failure_threshold -1", _set("failure_threshold", -1), "schedule.failure_threshold"),
    ("failure_threshold huge", _set("failure_threshold", 2**31 - 1), "schedule.failure_threshold"),
    (
        "disable without threshold",
        _set("failure_action", pb.FAILURE_ACTION_DISABLE),
        "schedule.failure_threshold",
    ),
    ("negative jitter", _seconds("jitter", -5), "schedule.jitter"),
    ("jitter 2^63", _seconds("jitter", 2**63 - 1), "schedule.jitter"),
    ("jitter too long", _seconds("jitter", 7200), "schedule.jitter"),
    ("priority too high", _set("priority", 1001), "schedule.priority"),
    ("priority int32 min", _set("priority", -(2**31)), "schedule.priority"),
    ("retry attempts -1", _set("retry.max_attempts", -1), "schedule.retry.max_attempts"),
    ("retry attempts 0", _set("retry.max_attempts", 0), "schedule.retry.max_attempts"),
    (
        "retry backoff 2^63",
        _both(_set("retry.max_attempts", 3), _seconds("retry.initial_backoff", 2**63 - 1)),
        "schedule.retry.initial_backoff",
    ),
    (
        "retry jitter above 1",
        _both(_set("retry.max_attempts", 3), _set("retry.jitter", 1.5)),
        "schedule.retry.jitter",
    ),
    ("catch-up deadline negative", _seconds("catch_up_deadline", -1), "schedule.catch_up_deadline"),
    (
        "catch-up all without deadline",
        _set("catch_up", pb.CATCH_UP_POLICY_ALL),
        "schedule.catch_up_deadline",
    ),
    ("unknown dst policy", _set("dst_policy", 99), "schedule.dst_policy"),
    ("unknown day filter", _set("day_filter", -3), "schedule.day_filter"),
    ("unknown concurrency", _set("concurrency", 42), "schedule.concurrency"),
    ("no script", _set("script.name", ""), "schedule.script.name"),
    ("no trigger", lambda s: s.ClearField("trigger"), "schedule.trigger"),
    ("interval zero", _trigger(_interval(0)), "schedule.trigger.interval.every"),
    ("interval negative", _trigger(_interval(-60)), "schedule.trigger.interval.every"),
    ("interval 2^63", _trigger(_interval(2**63 - 1)), "schedule.trigger.interval.every"),
    ("once in the past", _trigger(_once(timedelta(days=-1))), "schedule.trigger.once.at"),
    (
        "daily hour 24",
        _trigger(pb.Trigger(daily=pb.DailySpec(at=pb.TimeOfDay(hour=24)))),
        "schedule.trigger.daily.at.hour",
    ),
    (
        "daily without time",
        _trigger(pb.Trigger(daily=pb.DailySpec())),
        "schedule.trigger.daily.at",
    ),
    (
        "weekday 8",
        _trigger(pb.Trigger(weekly=pb.WeeklySpec(weekdays=[1, 8], at=pb.TimeOfDay()))),
        "schedule.trigger.weekly.weekdays[1]",
    ),
    (
        "no weekdays",
        _trigger(pb.Trigger(weekly=pb.WeeklySpec(at=pb.TimeOfDay()))),
        "schedule.trigger.weekly.weekdays",
    ),
    (
        "month day 0",
        _trigger(pb.Trigger(monthly=pb.MonthlySpec(days=[0], at=pb.TimeOfDay()))),
        "schedule.trigger.monthly.days[0]",
    ),
    (
        "February 30",
        _trigger(pb.Trigger(yearly=pb.YearlySpec(month=2, day=30, at=pb.TimeOfDay()))),
        "schedule.trigger.yearly.day",
    ),
    (
        "month 13",
        _trigger(pb.Trigger(yearly=pb.YearlySpec(month=13, day=1, at=pb.TimeOfDay()))),
        "schedule.trigger.yearly.month",
    ),
    (
        "filter excludes every cron day",
        _both(
            _trigger(pb.Trigger(cron=pb.CronSpec(expression="0 9 * * 1-5"))),
            _set("day_filter", pb.DAY_FILTER_WEEKENDS),
        ),
        "schedule.trigger.cron.expression",
    ),
    (
        "long label key",
        lambda s: s.labels.update({"k" * 64: "v"}),
        f"schedule.labels[{'k' * 64!r}]",
    ),
]


async def test_create_rejects_each_bad_field_precisely_and_stores_nothing(path: RunPath) -> None:
    """Every bad value is INVALID_ARGUMENT naming exactly its field; nothing is stored."""
    stub = path.scheduler_stub()
    for label, mutate, field in BAD_FIELDS:
        schedule = cron()
        mutate(schedule)
        fields = await violations(stub.CreateSchedule(create(schedule)))
        assert fields == {field}, label
    listed = await stub.ListSchedules(pb.ListSchedulesRequest())
    assert list(listed.schedules) == []


async def test_create_reports_all_violations_at_once(path: RunPath) -> None:
    """Several bad fields come back together in one INVALID_ARGUMENT."""
    schedule = cron("61 * * * *", time_zone="Nowhere/City", priority=5000)
    fields = await violations(path.scheduler_stub().CreateSchedule(create(schedule)))
    assert fields == {"schedule.trigger.cron.expression", "schedule.time_zone", "schedule.priority"}


async def test_create_unknown_script_is_invalid_argument(path: RunPath) -> None:
    """The catalogue's NOT_FOUND becomes a violation on schedule.script.name."""
    fields = await violations(path.scheduler_stub().CreateSchedule(create(cron(script="ghost"))))
    assert fields == {"schedule.script.name"}


async def test_create_invalid_parameters_keep_catalogue_violations(path: RunPath) -> None:
    """Stored parameters are validated by the catalogue; violations name schedule.parameters.<n>."""
    params = [
        catalogue_pb2.ParameterDefinition(
            name="n", type=catalogue_pb2.PARAMETER_TYPE_INTEGER, required=True
        )
    ]
    await path.publish("typed", "print(1)\n", params=params)
    schedule = cron(script="typed")
    schedule.parameters.update({"n": "many", "extra": 1})
    stub = path.scheduler_stub()
    fields = await violations(stub.CreateSchedule(create(schedule)))
    assert fields == {"schedule.parameters.n", "schedule.parameters.extra"}
    schedule.parameters.Clear()
    schedule.parameters.update({"n": 7})
    created = await stub.CreateSchedule(create(schedule))
    assert dict(created.parameters) == {"n": 7}


async def test_create_secret_parameter_value_is_failed_precondition(path: RunPath) -> None:
    """A secret value in a schedule is refused: secrets must come from the runtime."""
    params = [
        catalogue_pb2.ParameterDefinition(name="token", type=catalogue_pb2.PARAMETER_TYPE_PASSWORD),
        catalogue_pb2.ParameterDefinition(name="region", type=catalogue_pb2.PARAMETER_TYPE_STRING),
    ]
    await path.publish("secretive", "print(1)\n", params=params)
    schedule = cron(script="secretive")
    schedule.parameters.update({"token": "tok-very-secret", "region": "eu"})
    stub = path.scheduler_stub()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateSchedule(create(schedule))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "secrets must come from the runtime" in (err.value.details() or "")
    assert precondition_subjects(err.value) == {"schedule.parameters.token"}
    assert not (await stub.ListSchedules(pb.ListSchedulesRequest())).schedules
    stored = b"".join(p.read_bytes() for p in path.tmp.glob("scheduler.db*"))
    assert b"tok-very-secret" not in stored
    del schedule.parameters["token"]
    created = await stub.CreateSchedule(create(schedule))
    assert dict(created.parameters) == {"region": "eu"}


async def test_idempotency_key_returns_same_schedule_or_refuses_other_request(
    path: RunPath,
) -> None:
    """Same key and request: one schedule. Same key, other request: FAILED_PRECONDITION."""
    stub = path.scheduler_stub()
    first = await stub.CreateSchedule(create(cron(), key="nightly-v1"))
    again = await stub.CreateSchedule(create(cron(), key="nightly-v1"))
    assert again.id == first.id
    fields = await violations(
        stub.CreateSchedule(create(cron("0 4 * * *"), key="nightly-v1")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert fields == {"idempotency_key"}
    listed = await stub.ListSchedules(pb.ListSchedulesRequest())
    assert [s.id for s in listed.schedules] == [first.id]


async def test_list_filters_by_script_and_state_and_pages_stably(path: RunPath) -> None:
    """ListSchedules filters by script and states, newest first, with a cursor."""
    await path.publish("other", "print(2)\n")
    stub = path.scheduler_stub()
    ids = [(await stub.CreateSchedule(create(cron(f"{i} 3 * * *")))).id for i in range(5)]
    other = await stub.CreateSchedule(create(cron(script="other")))
    await stub.PauseSchedule(pb.PauseScheduleRequest(id=ids[1], reason="maintenance"))
    seen, token = [], ""
    while True:
        page = await stub.ListSchedules(
            pb.ListSchedulesRequest(script_name="nightly", page_size=2, page_token=token)
        )
        assert len(page.schedules) <= 2
        seen += [s.id for s in page.schedules]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    paused = await stub.ListSchedules(pb.ListSchedulesRequest(states=[pb.SCHEDULE_STATE_PAUSED]))
    assert [s.id for s in paused.schedules] == [ids[1]]
    active_other = await stub.ListSchedules(
        pb.ListSchedulesRequest(script_name="other", states=[pb.SCHEDULE_STATE_ACTIVE])
    )
    assert [s.id for s in active_other.schedules] == [other.id]
    fields = await violations(stub.ListSchedules(pb.ListSchedulesRequest(page_token="%%%")))
    assert fields == {"page_token"}
    fields = await violations(stub.ListSchedules(pb.ListSchedulesRequest(page_size=-1)))
    assert fields == {"page_size"}


async def test_update_applies_mask_and_recomputes_next_fire(path: RunPath) -> None:
    """Only masked fields change; the trigger change moves next_fire_time."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(create(cron("0 3 * * *", priority=5)))
    change = pb.Schedule(
        id=created.id,
        name="ignored, not in the mask",
        priority=9,
        trigger=pb.Trigger(daily=pb.DailySpec(at=pb.TimeOfDay(hour=17, minute=45))),
        time_zone="America/New_York",
    )
    updated = await stub.UpdateSchedule(
        pb.UpdateScheduleRequest(
            schedule=change,
            update_mask=field_mask_pb2.FieldMask(paths=["priority", "trigger", "time_zone"]),
        )
    )
    assert updated.name == "nightly-report" and updated.priority == 9
    assert updated.trigger.WhichOneof("kind") == "daily"
    local = updated.next_fire_time.ToDatetime(UTC).astimezone(ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (17, 45)
    assert updated.create_time == created.create_time
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()


async def test_update_validates_the_result_and_keeps_the_stored_schedule(path: RunPath) -> None:
    """An update producing an invalid schedule is INVALID_ARGUMENT and changes nothing."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(create(cron()))
    bad = pb.Schedule(id=created.id, time_zone="Atlantis/Capital")
    fields = await violations(
        stub.UpdateSchedule(
            pb.UpdateScheduleRequest(
                schedule=bad, update_mask=field_mask_pb2.FieldMask(paths=["time_zone"])
            )
        )
    )
    assert fields == {"schedule.time_zone"}
    start = pb.Schedule(id=created.id)
    start.start_time.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    start.end_time.FromDatetime(datetime.now(UTC) + timedelta(days=40))
    await stub.UpdateSchedule(
        pb.UpdateScheduleRequest(
            schedule=start, update_mask=field_mask_pb2.FieldMask(paths=["start_time", "end_time"])
        )
    )
    early_end = pb.Schedule(id=created.id)
    early_end.end_time.FromDatetime(datetime.now(UTC) + timedelta(days=2))
    fields = await violations(
        stub.UpdateSchedule(
            pb.UpdateScheduleRequest(
                schedule=early_end, update_mask=field_mask_pb2.FieldMask(paths=["end_time"])
            )
        )
    )
    assert fields == {"schedule.end_time"}
    stored = await stub.GetSchedule(pb.GetScheduleRequest(id=created.id))
    assert stored.time_zone == "UTC"
    assert stored.end_time.ToDatetime(UTC) > datetime.now(UTC) + timedelta(days=39)
    assert stored.next_fire_time.ToDatetime(UTC) >= stored.start_time.ToDatetime(UTC)


async def test_update_rejects_bad_masks_and_unknown_ids(path: RunPath) -> None:
    """Output-only or unknown mask paths, an empty mask, and a missing id are refused."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(create(cron()))

    def request(*paths: str, schedule_id: str = created.id) -> pb.UpdateScheduleRequest:
        return pb.UpdateScheduleRequest(
            schedule=pb.Schedule(id=schedule_id), update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    assert await violations(stub.UpdateSchedule(request("state"))) == {"update_mask.paths[0]"}
    assert await violations(stub.UpdateSchedule(request("name", "colour"))) == {
        "update_mask.paths[1]"
    }
    assert await violations(stub.UpdateSchedule(request())) == {"update_mask"}
    assert await violations(stub.UpdateSchedule(request("name", schedule_id=""))) == {"schedule.id"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateSchedule(request("name", schedule_id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_pause_and_resume_move_state_and_next_fire(path: RunPath) -> None:
    """Pause clears the next fire; resume recomputes it from now; both are repeatable."""
    stub = path.scheduler_stub()
    interval = pb.Trigger()
    interval.interval.every.FromTimedelta(timedelta(hours=1))
    schedule = pb.Schedule(script=common_pb2.ScriptRef(name="nightly"), trigger=interval)
    created = await stub.CreateSchedule(create(schedule))
    paused = await stub.PauseSchedule(pb.PauseScheduleRequest(id=created.id, reason="holiday"))
    assert paused.state == pb.SCHEDULE_STATE_PAUSED
    assert not paused.HasField("next_fire_time")
    again = await stub.PauseSchedule(pb.PauseScheduleRequest(id=created.id))
    assert again.state == pb.SCHEDULE_STATE_PAUSED
    before = datetime.now(UTC)
    resumed = await stub.ResumeSchedule(pb.ResumeScheduleRequest(id=created.id))
    assert resumed.state == pb.SCHEDULE_STATE_ACTIVE
    next_fire = resumed.next_fire_time.ToDatetime(UTC)
    assert before < next_fire <= before + timedelta(hours=1)
    assert (next_fire - created.create_time.ToDatetime(UTC)) % timedelta(hours=1) == timedelta(0)
    still = await stub.ResumeSchedule(pb.ResumeScheduleRequest(id=created.id))
    assert still.next_fire_time == resumed.next_fire_time
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PauseSchedule(pb.PauseScheduleRequest(id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_removes_the_schedule(path: RunPath) -> None:
    """DeleteSchedule returns the id; afterwards Get and Delete are NOT_FOUND."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(create(cron()))
    deleted = await stub.DeleteSchedule(pb.DeleteScheduleRequest(id=created.id))
    assert deleted.id == created.id
    for call in (
        stub.GetSchedule(pb.GetScheduleRequest(id=created.id)),
        stub.DeleteSchedule(pb.DeleteScheduleRequest(id=created.id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await violations(stub.GetSchedule(pb.GetScheduleRequest(id=""))) == {"id"}


async def test_preview_proposed_schedule_across_spring_forward(path: RunPath) -> None:
    """A proposed 02:30 Europe/Paris daily previews 03:00+02:00 on the 2027 spring-forward day."""
    proposed = pb.Schedule(
        trigger=pb.Trigger(daily=pb.DailySpec(at=pb.TimeOfDay(hour=2, minute=30))),
        time_zone="Europe/Paris",
    )
    proposed.start_time.FromDatetime(datetime(2027, 3, 27, tzinfo=UTC))
    response = await path.scheduler_stub().PreviewSchedule(
        pb.PreviewScheduleRequest(schedule=proposed, count=3)
    )
    assert [f.local for f in response.fire_times] == [
        "2027-03-27T02:30:00+01:00",
        "2027-03-28T03:00:00+02:00",
        "2027-03-29T02:30:00+02:00",
    ]
    assert [f.utc.ToDatetime(UTC) for f in response.fire_times] == [
        datetime(2027, 3, 27, 1, 30, tzinfo=UTC),
        datetime(2027, 3, 28, 1, 0, tzinfo=UTC),
        datetime(2027, 3, 29, 0, 30, tzinfo=UTC),
    ]


async def test_preview_proposed_schedule_across_fall_back_skip_policy(path: RunPath) -> None:
    """New York 01:30 repeats on 2027-11-07 and fires once, at -04:00."""
    proposed = pb.Schedule(
        trigger=pb.Trigger(daily=pb.DailySpec(at=pb.TimeOfDay(hour=1, minute=30))),
        time_zone="America/New_York",
        dst_policy=pb.DST_POLICY_SKIP_MISSING_FIRE_ONCE,
    )
    proposed.start_time.FromDatetime(datetime(2027, 11, 6, 12, tzinfo=UTC))
    response = await path.scheduler_stub().PreviewSchedule(
        pb.PreviewScheduleRequest(schedule=proposed, count=2)
    )
    assert [f.local for f in response.fire_times] == [
        "2027-11-07T01:30:00-04:00",
        "2027-11-08T01:30:00-05:00",
    ]


async def test_preview_stored_schedule_and_count_bounds(path: RunPath) -> None:
    """A stored schedule previews its next fires; count defaults to 10 and is capped."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(create(cron("*/10 * * * *")))
    default = await stub.PreviewSchedule(pb.PreviewScheduleRequest(id=created.id))
    assert len(default.fire_times) == 10
    assert default.fire_times[0].utc == created.next_fire_time
    utc = [f.utc.ToDatetime(UTC) for f in default.fire_times]
    assert all(b - a == timedelta(minutes=10) for a, b in itertools.pairwise(utc))
    assert default.fire_times[0].local.endswith("+00:00")
    big = await stub.PreviewSchedule(pb.PreviewScheduleRequest(id=created.id, count=1000))
    assert len(big.fire_times) == 1000
    for count in (-1, 1001):
        fields = await violations(
            stub.PreviewSchedule(pb.PreviewScheduleRequest(id=created.id, count=count))
        )
        assert fields == {"count"}
    assert await violations(stub.PreviewSchedule(pb.PreviewScheduleRequest())) == {"target"}
    bad = pb.Schedule(trigger=pb.Trigger(cron=pb.CronSpec(expression="* * *")))
    fields = await violations(stub.PreviewSchedule(pb.PreviewScheduleRequest(schedule=bad)))
    assert fields == {"schedule.trigger.cron.expression"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PreviewSchedule(pb.PreviewScheduleRequest(id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_permissions_follow_schedule_scopes(path: RunPath) -> None:
    """read: Get/List/Preview; write: Create/Update/Pause/Resume; delete: Delete."""
    tokens: ScheduleTokens = path.tokens
    created = await path.scheduler_stub().CreateSchedule(create(cron()))
    runs_reader = path.scheduler_stub(tokens.runs_reader)
    reader = path.scheduler_stub(tokens.sched_reader)
    writer = path.scheduler_stub(tokens.sched_writer)
    denied = grpc.StatusCode.PERMISSION_DENIED
    await violations(runs_reader.ListSchedules(pb.ListSchedulesRequest()), denied)
    await reader.ListSchedules(pb.ListSchedulesRequest())
    await reader.GetSchedule(pb.GetScheduleRequest(id=created.id))
    await reader.PreviewSchedule(pb.PreviewScheduleRequest(id=created.id, count=1))
    await violations(reader.CreateSchedule(create(cron())), denied)
    await violations(reader.PauseSchedule(pb.PauseScheduleRequest(id=created.id)), denied)
    await writer.CreateSchedule(create(cron()))
    await writer.PauseSchedule(pb.PauseScheduleRequest(id=created.id))
    await writer.ResumeSchedule(pb.ResumeScheduleRequest(id=created.id))
    await violations(writer.DeleteSchedule(pb.DeleteScheduleRequest(id=created.id)), denied)
    await path.scheduler_stub().DeleteSchedule(pb.DeleteScheduleRequest(id=created.id))


async def _move_scheduler(path: RunPath, database_url: str) -> None:
    """Replace the stack's scheduler by one on another database."""
    await path.scheduler.stop()
    path.scheduler = await start_scheduler(
        path.tmp, path.nats_url, path.tokens, path.catalogue, None, database={"url": database_url}
    )


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_schedules_round_trip_on_each_dialect(
    path: RunPath, tmp_path: Path, dialect: str
) -> None:
    """Create (idempotent), page, update, pause, resume and delete on every SQL dialect."""
    async with fresh_database(dialect, tmp_path, "scheduler_dialect") as url:
        await _move_scheduler(path, url)
        stub = path.scheduler_stub()
        created = []
        for i in range(3):
            schedule = cron(f"{i} 2 * * *", time_zone="Europe/Paris", labels={"team": "ops"})
            created.append(await stub.CreateSchedule(create(schedule, key=f"{dialect}-{i}")))
        again = await stub.CreateSchedule(
            create(
                cron("0 2 * * *", time_zone="Europe/Paris", labels={"team": "ops"}),
                key=f"{dialect}-0",
            )
        )
        assert again.id == created[0].id
        seen, token = [], ""
        while True:
            page = await stub.ListSchedules(
                pb.ListSchedulesRequest(script_name="nightly", page_size=2, page_token=token)
            )
            seen += [s.id for s in page.schedules]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(s.id for s in created) and len(seen) == 3
        fetched = await stub.GetSchedule(pb.GetScheduleRequest(id=created[1].id))
        assert fetched.next_fire_time == created[1].next_fire_time
        assert fetched.labels == {"team": "ops"} and fetched.time_zone == "Europe/Paris"
        updated = await stub.UpdateSchedule(
            pb.UpdateScheduleRequest(
                schedule=pb.Schedule(id=created[1].id, name="renamed"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            )
        )
        assert updated.name == "renamed"
        await stub.PauseSchedule(pb.PauseScheduleRequest(id=created[2].id, reason="db test"))
        paused = await stub.ListSchedules(
            pb.ListSchedulesRequest(states=[pb.SCHEDULE_STATE_PAUSED])
        )
        assert [s.id for s in paused.schedules] == [created[2].id]
        resumed = await stub.ResumeSchedule(pb.ResumeScheduleRequest(id=created[2].id))
        assert resumed.next_fire_time == created[2].next_fire_time
        await stub.DeleteSchedule(pb.DeleteScheduleRequest(id=created[0].id))
        left = await stub.ListSchedules(pb.ListSchedulesRequest())
        assert {s.id for s in left.schedules} == {created[1].id, created[2].id}
