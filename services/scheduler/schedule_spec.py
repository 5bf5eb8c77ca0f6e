"""Checks a proposed schedule and turns it into a trigger `Spec`.

Every violation is collected with its field path (`schedule.trigger.cron.expression`)
so one INVALID_ARGUMENT names all of them. Defaults for unspecified enums are
filled in here, so stored definitions are explicit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from google.protobuf import duration_pb2, timestamp_pb2

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import triggers as tr
from services.scheduler.retries import policy_violations
from shared.errors import FieldViolation, InvalidArgument

MIN_INTERVAL = timedelta(seconds=1)
MAX_INTERVAL = timedelta(days=366)
MAX_JITTER = timedelta(hours=1)
MAX_CATCH_UP_DEADLINE = timedelta(days=7)
MAX_FAILURE_THRESHOLD = 1000
# Timestamps outside these years are mistakes, and datetime cannot hold all
# that a Timestamp can.
_MIN_SECONDS = int(datetime(1970, 1, 1, tzinfo=UTC).timestamp())
_MAX_SECONDS = int(datetime(tr.LAST_YEAR, 1, 1, tzinfo=UTC).timestamp())
_MAX_DURATION_SECONDS = 10 * 366 * 86400

DEFAULTS: dict[str, int] = {
    "dst_policy": pb.DST_POLICY_SHIFT_FORWARD_FIRE_ONCE,
    "day_filter": pb.DAY_FILTER_ALL,
    "concurrency": pb.CONCURRENCY_POLICY_FORBID,
    "catch_up": pb.CATCH_UP_POLICY_SKIP,
    "failure_action": pb.FAILURE_ACTION_CONTINUE,
}
_ENUMS = {
    "dst_policy": pb.DstPolicy,
    "day_filter": pb.DayFilter,
    "concurrency": pb.ConcurrencyPolicy,
    "catch_up": pb.CatchUpPolicy,
    "failure_action": pb.FailureAction,
}


class Violations:
    """Collects field violations under a common prefix."""

    def __init__(self, prefix: str = "schedule") -> None:
        self.prefix = prefix
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(f"{self.prefix}.{field}", description))

    def raise_if_any(self) -> None:
        if self.items:
            fields = ", ".join(v.field for v in self.items)
            raise InvalidArgument(f"schedule is invalid: {fields}", self.items)


def fill_defaults(schedule: pb.Schedule) -> None:
    """Replace UNSPECIFIED enums by their documented defaults, in place."""
    for name, value in DEFAULTS.items():
        if getattr(schedule, name) == 0:
            setattr(schedule, name, value)
    if not schedule.time_zone:
        schedule.time_zone = "UTC"


def check(schedule: pb.Schedule, *, now: datetime, anchor: datetime) -> tr.Spec:
    """Validate a whole schedule (timing and policies); raise InvalidArgument."""
    bad = Violations()
    if not schedule.script.name:
        bad.add("script.name", "script name is required")
    if len(schedule.name) > 200:
        bad.add("name", "must be at most 200 characters")
    _check_policies(schedule, bad)
    _check_labels(schedule, bad)
    if schedule.HasField("retry"):
        _check_retry(schedule.retry, bad)
    spec = _timing(schedule, bad, anchor=anchor)
    if spec is not None and spec.end is not None and spec.end <= now:
        bad.add("end_time", "is in the past")
    interval = spec.trigger if spec is not None else None
    if (
        isinstance(interval, tr.Interval)
        and _seconds(schedule.jitter) >= interval.every.total_seconds()
    ):
        bad.add("jitter", "must be shorter than trigger.interval.every")
    bad.raise_if_any()
    assert spec is not None
    if tr.next_fire(spec, now) is None:
        _never_fires(schedule, spec, now, bad)
        bad.raise_if_any()
    return spec


def check_timing(schedule: pb.Schedule, *, anchor: datetime) -> tr.Spec:
    """Validate only what decides fire times (for previews of proposed schedules)."""
    bad = Violations()
    spec = _timing(schedule, bad, anchor=anchor)
    bad.raise_if_any()
    assert spec is not None
    return spec


def _timing(schedule: pb.Schedule, bad: Violations, *, anchor: datetime) -> tr.Spec | None:
    zone = _zone(schedule.time_zone or "UTC", bad)
    start = _timestamp(schedule, "start_time", bad)
    end = _timestamp(schedule, "end_time", bad)
    if start and end and end <= start:
        bad.add("end_time", "must be after start_time")
    for name in ("dst_policy", "day_filter"):
        _enum(schedule, name, bad)
    trigger = _trigger(schedule, bad, anchor=start or anchor)
    if zone is None or trigger is None or bad.items:
        return None
    return tr.Spec(
        trigger=trigger,
        zone=zone,
        dst=tr.DstPolicy(schedule.dst_policy or pb.DST_POLICY_SHIFT_FORWARD_FIRE_ONCE),
        days=tr.DayFilter(schedule.day_filter or pb.DAY_FILTER_ALL),
        start=start,
        end=end,
    )


def _zone(name: str, bad: Violations) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        bad.add("time_zone", f"unknown IANA time zone {name!r}")
        return None


def _timestamp(message: Any, field: str, bad: Violations, path: str = "") -> datetime | None:
    if not message.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, field)
    if not _MIN_SECONDS <= ts.seconds < _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        bad.add(path or field, f"must be between 1970 and {tr.LAST_YEAR}")
        return None
    return ts.ToDatetime(UTC)


def _seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def _duration(
    value: duration_pb2.Duration, path: str, bad: Violations, *, low: timedelta, high: timedelta
) -> timedelta | None:
    malformed = abs(value.nanos) >= 1_000_000_000 or value.seconds * value.nanos < 0
    if abs(value.seconds) > _MAX_DURATION_SECONDS or malformed:
        bad.add(path, f"must be between {low} and {high}")
        return None
    result = value.ToTimedelta()
    if not low <= result <= high:
        bad.add(path, f"must be between {low} and {high}")
        return None
    return result


def _enum(message: Any, name: str, bad: Violations) -> None:
    value = getattr(message, name)
    if value not in _ENUMS[name].values():
        bad.add(name, f"unknown value {value}")


def _trigger(
    schedule: pb.Schedule, bad: Violations, *, anchor: datetime
) -> tr.WallClock | tr.Interval | tr.Once | None:
    kind = schedule.trigger.WhichOneof("kind")
    if kind is None:
        bad.add(
            "trigger", "one of cron, interval, once, daily, weekly, monthly, yearly is required"
        )
        return None
    build: Callable[[Any, Violations, datetime], Any] = _TRIGGERS[kind]
    before = len(bad.items)
    sub = Violations(f"{bad.prefix}.trigger.{kind}")
    result = build(getattr(schedule.trigger, kind), sub, anchor)
    bad.items.extend(sub.items)
    return result if len(bad.items) == before else None


def _cron(spec: pb.CronSpec, bad: Violations, anchor: datetime) -> tr.Cron | None:
    expression = " ".join(spec.expression.split())
    fields = len(expression.split())
    if fields not in (5, 6):
        bad.add("expression", f"must have 5 fields (or 6 with seconds first), got {fields}")
        return None
    invalid = _cron_invalid(expression, anchor.tzinfo is not None)
    if invalid:
        bad.add("expression", f"invalid cron expression: {invalid}")
        return None
    return tr.Cron(expression)


@functools.lru_cache(maxsize=4096)
def _cron_invalid(expression: str, aware: bool) -> str:
    """Why croniter refuses `expression` ("" if it takes it). Memoised: parsing it is most
    of the cost of checking a schedule's timing (about 1 ms), which every fire's base and
    every general fire repeats, and schedules share expressions; whether it parses does
    not depend on the anchor (only an aware one or not is kept, as croniter is given it)."""
    anchor = datetime(2000, 1, 1, tzinfo=UTC if aware else None)
    try:
        croniter(expression, anchor, second_at_beginning=len(expression.split()) == 6)
    except (CroniterError, ValueError, KeyError) as exc:
        return str(exc) or type(exc).__name__
    return ""


def _interval(spec: pb.IntervalSpec, bad: Violations, anchor: datetime) -> tr.Interval | None:
    every = _duration(spec.every, "every", bad, low=MIN_INTERVAL, high=MAX_INTERVAL)
    return tr.Interval(every, anchor) if every is not None else None


def _once(spec: pb.OnceSpec, bad: Violations, anchor: datetime) -> tr.Once | None:
    if not spec.HasField("at"):
        bad.add("at", "is required")
        return None
    at = _timestamp(spec, "at", bad)
    return tr.Once(at) if at is not None else None


def _time_of_day(message: Any, bad: Violations) -> time | None:
    if not message.HasField("at"):
        bad.add("at", "is required")
        return None
    at: pb.TimeOfDay = message.at
    ok = True
    for name, high in (("hour", 23), ("minute", 59), ("second", 59)):
        if not 0 <= getattr(at, name) <= high:
            bad.add(f"at.{name}", f"must be between 0 and {high}")
            ok = False
    return time(at.hour, at.minute, at.second) if ok else None


def _daily(spec: pb.DailySpec, bad: Violations, anchor: datetime) -> tr.Daily | None:
    at = _time_of_day(spec, bad)
    return tr.Daily(at) if at is not None else None


def _numbers(values: Any, field: str, high: int, bad: Violations) -> frozenset[int] | None:
    if not values:
        bad.add(field, "at least one is required")
        return None
    wrong = [i for i, v in enumerate(values) if not 1 <= v <= high]
    for i in wrong:
        bad.add(f"{field}[{i}]", f"must be between 1 and {high}")
    return None if wrong else frozenset(values)


def _weekly(spec: pb.WeeklySpec, bad: Violations, anchor: datetime) -> tr.Weekly | None:
    days = _numbers(spec.weekdays, "weekdays", 7, bad)
    at = _time_of_day(spec, bad)
    return tr.Weekly(days, at) if days is not None and at is not None else None


def _monthly(spec: pb.MonthlySpec, bad: Violations, anchor: datetime) -> tr.Monthly | None:
    days = _numbers(spec.days, "days", 31, bad)
    at = _time_of_day(spec, bad)
    return tr.Monthly(days, at) if days is not None and at is not None else None


_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _yearly(spec: pb.YearlySpec, bad: Violations, anchor: datetime) -> tr.Yearly | None:
    at = _time_of_day(spec, bad)
    if not 1 <= spec.month <= 12:
        bad.add("month", "must be between 1 and 12")
        return None
    if not 1 <= spec.day <= _MONTH_DAYS[spec.month - 1]:
        bad.add(
            "day", f"must be between 1 and {_MONTH_DAYS[spec.month - 1]} for month {spec.month}"
        )
        return None
    return tr.Yearly(spec.month, spec.day, at) if at is not None else None


_TRIGGERS: dict[str, Callable[[Any, Violations, datetime], Any]] = {
    "cron": _cron,
    "interval": _interval,
    "once": _once,
    "daily": _daily,
    "weekly": _weekly,
    "monthly": _monthly,
    "yearly": _yearly,
}


def _never_fires(schedule: pb.Schedule, spec: tr.Spec, now: datetime, bad: Violations) -> None:
    """Name the field most likely at fault for a schedule with no future fire."""
    kind = schedule.trigger.WhichOneof("kind")
    if isinstance(spec.trigger, tr.Once) and spec.trigger.at <= now:
        bad.add("trigger.once.at", "is in the past")
        return
    where = {
        "cron": "trigger.cron.expression",
        "once": "trigger.once.at",
    }.get(kind or "", "trigger")
    years = tr.HORIZON.days // 365
    bad.add(
        where,
        f"never fires within {years} years (with the day filter and the start/end window)",
    )


def _check_policies(schedule: pb.Schedule, bad: Violations) -> None:
    for name in ("concurrency", "catch_up", "failure_action"):
        _enum(schedule, name, bad)
    _duration(schedule.jitter, "jitter", bad, low=timedelta(0), high=MAX_JITTER)
    deadline = _duration(
        schedule.catch_up_deadline,
        "catch_up_deadline",
        bad,
        low=timedelta(0),
        high=MAX_CATCH_UP_DEADLINE,
    )
    if deadline == timedelta(0) and schedule.catch_up == pb.CATCH_UP_POLICY_ALL:
        bad.add("catch_up_deadline", "is required (and bounds the fires) with CATCH_UP_POLICY_ALL")
    threshold = schedule.failure_threshold
    if not 0 <= threshold <= MAX_FAILURE_THRESHOLD:
        bad.add("failure_threshold", f"must be between 0 and {MAX_FAILURE_THRESHOLD}")
    elif threshold == 0 and schedule.failure_action == pb.FAILURE_ACTION_DISABLE:
        bad.add("failure_threshold", "must be at least 1 with FAILURE_ACTION_DISABLE")
    if not -1000 <= schedule.priority <= 1000:
        bad.add("priority", "must be between -1000 and 1000")


def _check_labels(schedule: pb.Schedule, bad: Violations) -> None:
    for key, value in schedule.labels.items():
        if not 1 <= len(key) <= 63:
            bad.add(f"labels[{key!r}]", "label keys must have 1 to 63 characters")
        if len(value) > 255:
            bad.add(f"labels[{key!r}]", "label values must have at most 255 characters")


def _check_retry(retry: common_pb2.RetryPolicy, bad: Violations) -> None:
    bad.items.extend(policy_violations(retry, f"{bad.prefix}.retry"))
