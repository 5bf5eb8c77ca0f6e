"""`runbox schedule ...`: create, inspect, preview, pause, resume and delete schedules.

A schedule is given with flags, one trigger flag per kind (--cron, --every, --at, --daily,
--weekly, --monthly, --yearly). The CLI only parses their shape (HH:MM, day lists, times,
durations); the scheduler is the authority on meaning (cron fields, ranges, zones, windows)
and its violations are shown with the flag that set the field.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from rich.markup import escape
from rich.table import Table

from cli import config as cli_config
from cli import render
from cli.rpc import call, every_page, fail
from cli.runs import MAX_PAGE, JsonFlag, Params, duration, instant, pairs, parameters, timestamp
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from runbox.scheduler.v1 import scheduler_pb2_grpc
from shared.clients import open_channel

app = typer.Typer(help="Create and manage schedules.", no_args_is_help=True)
Stub = scheduler_pb2_grpc.SchedulerServiceStub
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
_YEARLY_DAY = re.compile(r"(\d{1,2})-(\d{1,2})")


class Concurrency(enum.StrEnum):
    allow = "allow"
    forbid = "forbid"
    replace_ = "replace"
    queue = "queue"


class CatchUp(enum.StrEnum):
    skip = "skip"
    latest = "latest"
    all = "all"


class OnFailure(enum.StrEnum):
    continue_ = "continue"
    pause = "pause"
    notify = "notify"
    disable = "disable"


class Days(enum.StrEnum):
    all = "all"
    weekdays = "weekdays"
    weekends = "weekends"


class Dst(enum.StrEnum):
    shift = "shift"
    skip = "skip"


class StateFilter(enum.StrEnum):
    active = "active"
    paused = "paused"
    disabled = "disabled"
    completed = "completed"


DST = {
    Dst.shift: pb.DST_POLICY_SHIFT_FORWARD_FIRE_ONCE,
    Dst.skip: pb.DST_POLICY_SKIP_MISSING_FIRE_ONCE,
}
# Field of a violation (after "schedule.") -> the flag that sets it; longest first wins.
FLAGS = {
    "trigger.cron": "--cron",
    "trigger.interval": "--every",
    "trigger.once": "--at",
    "trigger.daily": "--daily",
    "trigger.weekly": "--weekly",
    "trigger.monthly": "--monthly",
    "trigger.yearly": "--yearly",
    "trigger": "--cron/--every/--at/--daily/--weekly/--monthly/--yearly",
    "script.name": "--script",
    "script.version": "--version",
    "script": "--script",
    "parameters": "--param",
    "time_zone": "--tz",
    "dst_policy": "--dst",
    "day_filter": "--days",
    "start_time": "--start",
    "end_time": "--end",
    "jitter": "--jitter",
    "concurrency": "--concurrency",
    "catch_up_deadline": "--catch-up-deadline",
    "catch_up": "--catch-up",
    "failure_action": "--on-failure",
    "failure_threshold": "--failure-threshold",
    "name": "--name",
    "priority": "--priority",
    "labels": "--label",
    "idempotency_key": "--idempotency-key",
    "count": "--count",
}


def flag_for(field: str) -> str:
    """`schedule.trigger.cron.expression` -> `schedule.trigger.cron.expression (--cron)`."""
    inner = field.removeprefix("schedule.")
    for prefix in sorted(FLAGS, key=len, reverse=True):
        if inner == prefix or inner.startswith((prefix + ".", prefix + "[")):
            return f"{field} ({FLAGS[prefix]})"
    return field


def _enum(enum_type: Any, prefix: str, choice: enum.StrEnum | None) -> int:
    """A CLI choice as the proto enum (unset: UNSPECIFIED, so the scheduler's default)."""
    if choice is None:
        return 0
    return enum_type.Value(f"{prefix}_{choice.value.upper()}")  # type: ignore[no-any-return]


def _proto_duration(flag: str, text: str | None) -> duration_pb2.Duration | None:
    if text is None:
        return None
    value = duration_pb2.Duration()
    value.FromTimedelta(duration(flag, text))
    return value


def time_of_day(flag: str, text: str) -> pb.TimeOfDay:
    match = _TIME_OF_DAY.fullmatch(text.strip())
    if not match:
        raise fail(f"{flag} {text!r}: expected a time of day HH:MM or HH:MM:SS")
    hour, minute, second = (int(part or 0) for part in match.groups())
    return pb.TimeOfDay(hour=hour, minute=minute, second=second)


def _day(flag: str, text: str, *, names: bool) -> int:
    word = text.strip().lower()
    if names and word in WEEKDAYS:
        return WEEKDAYS.index(word) + 1
    if word.isdigit():
        return int(word)
    kind = "weekday (mon..sun or 1..7)" if names else "day of the month (1..31)"
    raise fail(f"{flag} {text!r}: not a {kind}")


def day_list(flag: str, text: str, *, names: bool) -> list[int]:
    """`mon,wed-fri` or `1,15,28-31`: ranges expanded, order and duplicates kept for the
    scheduler to judge."""
    days: list[int] = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        low = _day(flag, first, names=names)
        if not dash:
            days.append(low)
            continue
        high = _day(flag, last, names=names)
        if high < low:
            raise fail(f"{flag} {part!r}: range runs backwards")
        days.extend(range(low, high + 1))
    return days


def _days_at(flag: str, text: str) -> tuple[str, pb.TimeOfDay]:
    days, at, time_text = text.partition("@")
    if not at or not days:
        raise fail(f"{flag} {text!r}: expected DAYS@HH:MM")
    return days, time_of_day(flag, time_text)


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(f"--tz {tz!r}: unknown time zone") from None


def trigger(
    *,
    cron: str | None,
    every: str | None,
    at: str | None,
    daily: str | None,
    weekly: str | None,
    monthly: str | None,
    yearly: str | None,
    tz: str | None,
) -> pb.Trigger:
    """Exactly one trigger flag as a Trigger; --at without an offset is in --tz (else UTC)."""
    given = {
        flag: value
        for flag, value in (
            ("--cron", cron),
            ("--every", every),
            ("--at", at),
            ("--daily", daily),
            ("--weekly", weekly),
            ("--monthly", monthly),
            ("--yearly", yearly),
        )
        if value is not None
    }
    if len(given) != 1:
        raise fail(
            "give exactly one of --cron, --every, --at, --daily, --weekly, --monthly, --yearly"
            + (f" (got {', '.join(given)})" if given else "")
        )
    [(flag, value)] = given.items()
    if flag == "--cron":
        return pb.Trigger(cron=pb.CronSpec(expression=value))
    if flag == "--every":
        return pb.Trigger(interval=pb.IntervalSpec(every=_proto_duration(flag, value)))
    if flag == "--at":
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise fail(f"--at {value!r}: expected an ISO 8601 time (2026-01-31T08:00)") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=_zone(tz))
        return pb.Trigger(once=pb.OnceSpec(at=timestamp(moment)))
    if flag == "--daily":
        return pb.Trigger(daily=pb.DailySpec(at=time_of_day(flag, value)))
    if flag == "--yearly":
        day, at_time = _days_at(flag, value)
        match = _YEARLY_DAY.fullmatch(day)
        if not match:
            raise fail(f"--yearly {value!r}: expected MM-DD@HH:MM")
        month, day_of_month = int(match[1]), int(match[2])
        return pb.Trigger(yearly=pb.YearlySpec(month=month, day=day_of_month, at=at_time))
    days, at_time = _days_at(flag, value)
    if flag == "--weekly":
        return pb.Trigger(
            weekly=pb.WeeklySpec(weekdays=day_list(flag, days, names=True), at=at_time)
        )
    return pb.Trigger(monthly=pb.MonthlySpec(days=day_list(flag, days, names=False), at=at_time))


def timing(
    *,
    cron: str | None,
    every: str | None,
    at: str | None,
    daily: str | None,
    weekly: str | None,
    monthly: str | None,
    yearly: str | None,
    tz: str | None,
    days: Days | None,
    dst: Dst | None,
    start: str | None,
    end: str | None,
) -> pb.Schedule:
    """The fields that decide when a schedule fires (what preview needs)."""
    schedule = pb.Schedule(
        trigger=trigger(
            cron=cron,
            every=every,
            at=at,
            daily=daily,
            weekly=weekly,
            monthly=monthly,
            yearly=yearly,
            tz=tz,
        ),
        time_zone=tz or "",
        day_filter=_enum(pb.DayFilter, "DAY_FILTER", days),  # type: ignore[arg-type]
        dst_policy=DST[dst] if dst else 0,  # type: ignore[arg-type]
    )
    if start is not None:
        schedule.start_time.CopyFrom(timestamp(instant("--start", start)))
    if end is not None:
        schedule.end_time.CopyFrom(timestamp(instant("--end", end)))
    return schedule


Cron = Annotated[
    str | None, typer.Option(help="Cron expression: 5 fields, or 6 with seconds first.")
]
Every = Annotated[str | None, typer.Option(help="Interval: 30s, 15m, 2h, 1d, PT90M.")]
At = Annotated[
    str | None, typer.Option(help="Once, at an ISO 8601 time (no offset: in --tz, else UTC).")
]
Daily = Annotated[str | None, typer.Option(help="Every day at HH:MM[:SS].")]
Weekly = Annotated[str | None, typer.Option(help="DAYS@HH:MM, e.g. mon,wed-fri@07:30.")]
Monthly = Annotated[str | None, typer.Option(help="DAYS@HH:MM, e.g. 1,15@06:00 (31: last day).")]
Yearly = Annotated[str | None, typer.Option(help="MM-DD@HH:MM, e.g. 12-31@23:00.")]
Tz = Annotated[str | None, typer.Option("--tz", help="IANA time zone (default UTC).")]
DaysOpt = Annotated[Days | None, typer.Option("--days", help="Days it may fire on.")]
DstOpt = Annotated[
    Dst | None,
    typer.Option("--dst", help="Skipped spring-forward times: shift (fire after the gap) or skip."),
]
Start = Annotated[
    str | None, typer.Option(help="Do not fire before this ISO 8601 time (no offset: local).")
]
End = Annotated[
    str | None, typer.Option(help="Do not fire after this ISO 8601 time (no offset: local).")
]


@app.command("create")
def create_cmd(
    script: Annotated[str, typer.Option(help="Script name.")],
    version: Annotated[
        str, typer.Option(help="Version selector (exact, range); default: latest at each fire.")
    ] = "",
    cron: Cron = None,
    every: Every = None,
    at: At = None,
    daily: Daily = None,
    weekly: Weekly = None,
    monthly: Monthly = None,
    yearly: Yearly = None,
    tz: Tz = None,
    param: Params = None,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    concurrency: Annotated[
        Concurrency | None, typer.Option(help="When the previous run is still active.")
    ] = None,
    catch_up: Annotated[
        CatchUp | None, typer.Option(help="Fires missed while no scheduler ran.")
    ] = None,
    catch_up_deadline: Annotated[
        str | None, typer.Option(help="How far back --catch-up all reaches (e.g. 6h).")
    ] = None,
    jitter: Annotated[
        str | None, typer.Option(help="Random delay up to this much per fire.")
    ] = None,
    days: DaysOpt = None,
    dst: DstOpt = None,
    start: Start = None,
    end: End = None,
    on_failure: Annotated[
        OnFailure | None, typer.Option(help="What a failed run does to the schedule.")
    ] = None,
    failure_threshold: Annotated[
        int | None, typer.Option(help="Consecutive failures before --on-failure disable acts.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Priority of its runs.")] = 0,
    label: Annotated[
        list[str] | None, typer.Option(help="Label key=value for its runs (repeatable).")
    ] = None,
    idempotency_key: Annotated[
        str, typer.Option(help="Creating again with this key returns the first schedule.")
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Create a schedule of SCRIPT with exactly one trigger flag."""
    schedule = timing(
        cron=cron,
        every=every,
        at=at,
        daily=daily,
        weekly=weekly,
        monthly=monthly,
        yearly=yearly,
        tz=tz,
        days=days,
        dst=dst,
        start=start,
        end=end,
    )
    schedule.name = name
    schedule.script.CopyFrom(common_pb2.ScriptRef(name=script, version=version))
    schedule.parameters.CopyFrom(parameters(param))
    schedule.concurrency = _enum(pb.ConcurrencyPolicy, "CONCURRENCY_POLICY", concurrency)  # type: ignore[assignment]
    schedule.catch_up = _enum(pb.CatchUpPolicy, "CATCH_UP_POLICY", catch_up)  # type: ignore[assignment]
    schedule.failure_action = _enum(pb.FailureAction, "FAILURE_ACTION", on_failure)  # type: ignore[assignment]
    schedule.failure_threshold = failure_threshold or 0
    schedule.priority = priority
    schedule.labels.update(pairs("--label", label))
    for field, flag, text in (
        ("catch_up_deadline", "--catch-up-deadline", catch_up_deadline),
        ("jitter", "--jitter", jitter),
    ):
        value = _proto_duration(flag, text)
        if value is not None:
            getattr(schedule, field).CopyFrom(value)
    request = pb.CreateScheduleRequest(schedule=schedule, idempotency_key=idempotency_key)

    async def go(cfg: cli_config.ClientConfig) -> pb.Schedule:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await Stub(channel).CreateSchedule(request)

    created = call(go, field_name=flag_for)
    if as_json:
        render.print_json(render.to_dict(created))
    else:
        render.console.print(
            f"created schedule [bold]{created.id}[/], next fire {when(created, 'next_fire_time')}"
        )


def _when_ts(stamp: timestamp_pb2.Timestamp, zone: ZoneInfo, *, utc: bool = True) -> str:
    moment = stamp.ToDatetime(UTC)
    in_utc = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if zone.key == "UTC":
        return in_utc
    local = moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"{local} ({in_utc})" if utc else local


def when(schedule: pb.Schedule, field: str, *, utc: bool = True) -> str:
    """A schedule's time in its zone (and, with utc, in UTC), or '-'."""
    if not schedule.HasField(field):  # type: ignore[arg-type]
        return "-"
    try:
        zone = ZoneInfo(schedule.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return _when_ts(getattr(schedule, field), zone, utc=utc)


def _time_text(at: pb.TimeOfDay) -> str:
    return f"{at.hour:02d}:{at.minute:02d}" + (f":{at.second:02d}" if at.second else "")


def trigger_text(spec: pb.Trigger) -> str:
    """The trigger the way the create flags spell it."""
    kind = spec.WhichOneof("kind")
    if kind == "cron":
        return f"cron {spec.cron.expression}"
    if kind == "interval":
        return f"every {spec.interval.every.ToJsonString()}"
    if kind == "once":
        return f"once at {spec.once.at.ToJsonString()}"
    if kind == "daily":
        return f"daily at {_time_text(spec.daily.at)}"
    if kind == "weekly":
        names = ",".join(WEEKDAYS[d - 1] if 1 <= d <= 7 else str(d) for d in spec.weekly.weekdays)
        return f"weekly {names}@{_time_text(spec.weekly.at)}"
    if kind == "monthly":
        days = ",".join(str(d) for d in spec.monthly.days)
        return f"monthly {days}@{_time_text(spec.monthly.at)}"
    if kind == "yearly":
        return f"yearly {spec.yearly.month:02d}-{spec.yearly.day:02d}@{_time_text(spec.yearly.at)}"
    return "-"


def _name(enum_type: Any, value: int, prefix: str) -> str:
    return enum_type.Name(value).removeprefix(prefix).lower()  # type: ignore[no-any-return]


def state_text(state: int) -> str:
    return _name(pb.ScheduleState, state, "SCHEDULE_STATE_").upper()


def schedules_table(schedules: list[pb.Schedule]) -> Table:
    table = Table(box=None)
    table.add_column("ID", no_wrap=True)
    for column in ("NAME", "SCRIPT", "TRIGGER", "ZONE", "STATE", "NEXT FIRE"):
        table.add_column(column)
    for s in schedules:
        ref = s.script.name + (f"@{s.script.version}" if s.script.version else "")
        table.add_row(
            s.id,
            escape(s.name) or "-",
            escape(ref),
            escape(trigger_text(s.trigger)),
            s.time_zone or "UTC",
            state_text(s.state),
            when(s, "next_fire_time", utc=False),
        )
    return table


def print_schedule(s: pb.Schedule) -> None:
    out = render.console
    ref = s.script.name + (f"@{s.script.version}" if s.script.version else "")
    out.print(f"[bold]schedule[/] {s.id}" + (f" ({escape(s.name)})" if s.name else ""))
    rows = [
        ("script", escape(ref)),
        ("trigger", escape(trigger_text(s.trigger))),
        ("zone", f"{s.time_zone or 'UTC'}, dst {_name(pb.DstPolicy, s.dst_policy, 'DST_POLICY_')}"),
        ("days", _name(pb.DayFilter, s.day_filter, "DAY_FILTER_")),
        ("state", state_text(s.state)),
        ("next fire", when(s, "next_fire_time")),
        ("last fire", when(s, "last_fire_time")),
        ("window", f"{when(s, 'start_time')} .. {when(s, 'end_time')}"),
        ("concurrency", _name(pb.ConcurrencyPolicy, s.concurrency, "CONCURRENCY_POLICY_")),
        (
            "catch-up",
            _name(pb.CatchUpPolicy, s.catch_up, "CATCH_UP_POLICY_")
            + (
                f" within {s.catch_up_deadline.ToJsonString()}"
                if s.HasField("catch_up_deadline")
                else ""
            ),
        ),
        (
            "on failure",
            _name(pb.FailureAction, s.failure_action, "FAILURE_ACTION_")
            + (f" after {s.failure_threshold}" if s.failure_threshold else "")
            + f" ({s.consecutive_failures} consecutive now)",
        ),
        ("jitter", s.jitter.ToJsonString() if s.HasField("jitter") else "-"),
        ("parameters", escape(str(MessageToDict(s.parameters))) if s.parameters else "-"),
        ("created", f"{when(s, 'create_time')} by {escape(s.created_by)}"),
    ]
    for label, value in rows:
        out.print(f"  {label:<12}{value}", highlight=False)


async def _one(cfg: cli_config.ClientConfig, method: str, request: Any) -> Any:
    async with open_channel(cfg.scheduler, token=cfg.token) as channel:
        return await getattr(Stub(channel), method)(request)


def _show(schedule: pb.Schedule, *, as_json: bool, message: str | None = None) -> None:
    if as_json:
        render.print_json(render.to_dict(schedule))
    elif message:
        render.console.print(message)
    else:
        print_schedule(schedule)


@app.command("list")
def list_cmd(
    script: Annotated[str, typer.Option(help="Only schedules of this script.")] = "",
    state: Annotated[
        list[StateFilter] | None, typer.Option(help="Schedule state (repeatable).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List schedules, newest first, following page tokens."""
    request = pb.ListSchedulesRequest(
        script_name=script,
        page_size=MAX_PAGE,
        states=[_enum(pb.ScheduleState, "SCHEDULE_STATE", s) for s in state or []],  # type: ignore[misc]
    )

    async def go(cfg: cli_config.ClientConfig) -> list[pb.Schedule]:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await every_page(Stub(channel).ListSchedules, request, "schedules")

    schedules = call(go)
    if as_json:
        render.print_json([render.to_dict(s) for s in schedules])
    else:
        if schedules:
            render.print_table(schedules_table(schedules))
        else:
            render.console.print("no schedules found")


ScheduleId = Annotated[str, typer.Argument(help="Schedule id.")]


@app.command("show")
def show_cmd(schedule_id: ScheduleId, as_json: JsonFlag = False) -> None:
    """Show a schedule with its next and last fire times (its zone and UTC)."""
    schedule = call(lambda cfg: _one(cfg, "GetSchedule", pb.GetScheduleRequest(id=schedule_id)))
    _show(schedule, as_json=as_json)


@app.command("preview")
def preview_cmd(
    schedule_id: Annotated[
        str | None, typer.Argument(help="A stored schedule; or give trigger flags instead.")
    ] = None,
    cron: Cron = None,
    every: Every = None,
    at: At = None,
    daily: Daily = None,
    weekly: Weekly = None,
    monthly: Monthly = None,
    yearly: Yearly = None,
    tz: Tz = None,
    days: DaysOpt = None,
    dst: DstOpt = None,
    start: Start = None,
    end: End = None,
    count: Annotated[int, typer.Option(help="How many fire times.", min=1)] = 10,
    as_json: JsonFlag = False,
) -> None:
    """The next COUNT fire times of a stored schedule, or of one described by flags."""
    request = pb.PreviewScheduleRequest(count=count)
    if schedule_id is not None:
        flags = (cron, every, at, daily, weekly, monthly, yearly, tz, days, dst, start, end)
        if any(flag is not None for flag in flags):
            raise fail("give a schedule id or trigger flags, not both")
        request.id = schedule_id
    else:
        request.schedule.CopyFrom(
            timing(
                cron=cron,
                every=every,
                at=at,
                daily=daily,
                weekly=weekly,
                monthly=monthly,
                yearly=yearly,
                tz=tz,
                days=days,
                dst=dst,
                start=start,
                end=end,
            )
        )
    reply: pb.PreviewScheduleResponse = call(
        lambda cfg: _one(cfg, "PreviewSchedule", request), field_name=flag_for
    )
    if as_json:
        render.print_json([render.to_dict(f) for f in reply.fire_times])
        return
    table = Table(box=None)
    for column in ("#", "LOCAL", "UTC"):
        table.add_column(column)
    for number, fire in enumerate(reply.fire_times, 1):
        table.add_row(str(number), fire.local, fire.utc.ToJsonString())
    if reply.fire_times:
        render.print_table(table)
    else:
        render.console.print("no upcoming fire times")


@app.command("pause")
def pause_cmd(
    schedule_id: ScheduleId,
    reason: Annotated[str, typer.Option(help="Why (kept with the schedule).")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Pause a schedule: no fires until resumed."""
    request = pb.PauseScheduleRequest(id=schedule_id, reason=reason)
    schedule = call(lambda cfg: _one(cfg, "PauseSchedule", request))
    _show(schedule, as_json=as_json, message=f"schedule {schedule.id} is PAUSED")


@app.command("resume")
def resume_cmd(schedule_id: ScheduleId, as_json: JsonFlag = False) -> None:
    """Resume a paused or disabled schedule; its next fire is counted from now."""
    request = pb.ResumeScheduleRequest(id=schedule_id)
    schedule = call(lambda cfg: _one(cfg, "ResumeSchedule", request))
    _show(
        schedule,
        as_json=as_json,
        message=f"schedule {schedule.id} is {state_text(schedule.state)}, "
        f"next fire {when(schedule, 'next_fire_time')}",
    )


@app.command("delete")
def delete_cmd(schedule_id: ScheduleId, as_json: JsonFlag = False) -> None:
    """Delete a schedule; its past runs stay."""
    reply: pb.DeleteScheduleResponse = call(
        lambda cfg: _one(cfg, "DeleteSchedule", pb.DeleteScheduleRequest(id=schedule_id))
    )
    if as_json:
        render.print_json(render.to_dict(reply))
    else:
        render.console.print(f"deleted schedule {reply.id}")


@app.command("fires")
def fires_cmd(schedule_id: ScheduleId, as_json: JsonFlag = False) -> None:
    """Recorded fires of a schedule (fired, skipped, missed, queued), newest first."""
    request = pb.ListFiresRequest(schedule_id=schedule_id, page_size=MAX_PAGE)

    async def go(cfg: cli_config.ClientConfig) -> list[pb.Fire]:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await every_page(Stub(channel).ListFires, request, "fires")

    fires = call(go)
    if as_json:
        render.print_json([render.to_dict(f) for f in fires])
        return
    table = Table(box=None)
    for column in ("NOMINAL (UTC)", "OUTCOME", "RUN", "REASON", "RECORDED (UTC)"):
        table.add_column(column)
    for fire in fires:
        table.add_row(
            fire.nominal_time.ToJsonString(),
            _name(pb.FireOutcome, fire.outcome, "FIRE_OUTCOME_").upper(),
            fire.run_id or "-",
            escape(fire.reason) or "-",
            fire.record_time.ToJsonString() if fire.HasField("record_time") else "-",
        )
    if fires:
        render.print_table(table)
    else:
        render.console.print("no fires recorded")


@app.command("stats")
def stats_cmd(
    schedule_id: Annotated[str | None, typer.Argument(help="Schedule id.")] = None,
    script: Annotated[
        str | None, typer.Option(help="A script's statistics instead of a schedule's.")
    ] = None,
    window: Annotated[str | None, typer.Option(help="Aggregate over this (default 30d).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run statistics of a schedule (or --script): counts, success rate, durations, fires."""
    if (schedule_id is None) == (script is None):
        raise fail("give a schedule id or --script, one of them")
    request = pb.GetStatisticsRequest()
    if schedule_id is not None:
        request.schedule_id = schedule_id
    else:
        request.script_name = script or ""
    span = _proto_duration("--window", window)
    if span is not None:
        request.window.CopyFrom(span)
    stats: pb.Statistics = call(lambda cfg: _one(cfg, "GetStatistics", request))
    if as_json:
        render.print_json(render.to_dict(stats))
        return
    out = render.console
    out.print(f"  runs         {stats.total_runs}", highlight=False)
    for state, count in sorted(stats.runs_by_state.items()):
        out.print(f"    {state.removeprefix('RUN_STATE_'):<11}{count}", highlight=False)
    out.print(f"  success rate {stats.success_rate:.1%}", highlight=False)
    if stats.fires_by_outcome:
        out.print(f"  fires        {sum(stats.fires_by_outcome.values())}", highlight=False)
    for outcome, count in sorted(stats.fires_by_outcome.items()):
        out.print(f"    {outcome.removeprefix('FIRE_OUTCOME_'):<11}{count}", highlight=False)
    for label, field in (("average", "average_duration"), ("p95", "p95_duration")):
        value = getattr(stats, field)
        shown = f"{value.ToTimedelta().total_seconds():.3f}s" if stats.HasField(field) else "-"  # type: ignore[arg-type]
        out.print(f"  {label:<13}{shown}", highlight=False)
    utc = ZoneInfo("UTC")
    for label, field in (("last fire", "last_fire_time"), ("next fire", "next_fire_time")):
        shown = _when_ts(getattr(stats, field), utc) if stats.HasField(field) else "-"  # type: ignore[arg-type]
        out.print(f"  {label:<13}{shown}", highlight=False)
