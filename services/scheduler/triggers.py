"""Trigger math: when does a schedule fire next?

Pure functions over validated specs, no database and no gRPC. Wall-clock
triggers (cron, daily, weekly, monthly, yearly) produce naive local times in
the schedule's zone; `resolve` turns each into one UTC instant by the DST
policy. Interval and once triggers are absolute instants and ignore DST.

DST policy (proto `DstPolicy`), precisely:
- Skipped wall times (spring forward, e.g. 02:30 on 2026-03-29 in
  Europe/Paris): SHIFT_FORWARD fires at the first valid instant after the gap
  (03:00 local, the transition instant); every skipped time of one gap lands
  on that instant and fires once, together with a trigger time at the gap's
  end. SKIP_MISSING does not fire them at all.
- Repeated wall times (fall back, 02:30 twice on 2026-10-25 in Europe/Paris):
  both policies fire once, at the first occurrence (the earlier offset,
  02:30+02:00); the second pass through the hour fires nothing.
- The day filter looks at the local date of the wall time; the start/end
  window (start inclusive, end exclusive) at the resolved instant.
"""

from __future__ import annotations

import calendar
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import IntEnum
from zoneinfo import ZoneInfo

from croniter import CroniterError, croniter

# A trigger that does not fire within this horizon is treated as never firing:
# croniter would otherwise search (nearly) forever for "0 0 30 2 *". Ten years
# cover the longest real gap, Feb 29 (eight years around 2100).
HORIZON = timedelta(days=366 * 10)
_TICK = timedelta(microseconds=1)
# Searches stop here, well before datetime's year 9999 limit.
LAST_YEAR = 9000


class DayFilter(IntEnum):
    """Days a schedule may fire on (values of the proto enum)."""

    ALL = 1
    WEEKDAYS = 2
    WEEKENDS = 3


class DstPolicy(IntEnum):
    """Handling of skipped and repeated wall times (values of the proto enum)."""

    SHIFT_FORWARD_FIRE_ONCE = 1
    SKIP_MISSING_FIRE_ONCE = 2


@dataclass(frozen=True)
class Cron:
    """5 fields, or 6 with seconds first."""

    expression: str

    def next_after(self, local: datetime) -> datetime | None:
        return _cron_next(self.expression, local)


@functools.lru_cache(maxsize=65_536)
def _cron_next(expression: str, local: datetime) -> datetime | None:
    """Memoised: schedules sharing an expression (`0 * * * *`...) fire at the same wall
    times, and parsing the expression is most of the cost."""
    try:
        it = croniter(
            expression,
            local,
            second_at_beginning=len(expression.split()) == 6,
            max_years_between_matches=HORIZON.days // 365,
        )
        result: datetime = it.get_next(datetime)
    except CroniterError:
        return None
    return result


@dataclass(frozen=True)
class Daily:
    at: time

    def next_after(self, local: datetime) -> datetime | None:
        candidate = datetime.combine(local.date(), self.at)
        return candidate if candidate > local else candidate + timedelta(days=1)


@dataclass(frozen=True)
class Weekly:
    """ISO weekdays 1 (Monday) .. 7 (Sunday)."""

    weekdays: frozenset[int]
    at: time

    def next_after(self, local: datetime) -> datetime | None:
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            candidate = datetime.combine(day, self.at)
            if day.isoweekday() in self.weekdays and candidate > local:
                return candidate
        return None


@dataclass(frozen=True)
class Monthly:
    """Days 1..31; days past a month's end fire once on its last day."""

    days: frozenset[int]
    at: time

    def next_after(self, local: datetime) -> datetime | None:
        year, month = local.year, local.month
        for _ in range(13):
            last = calendar.monthrange(year, month)[1]
            for day in sorted({min(d, last) for d in self.days}):
                candidate = datetime.combine(date(year, month, day), self.at)
                if candidate > local:
                    return candidate
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return None


@dataclass(frozen=True)
class Yearly:
    """Month and day; Feb 29 fires on Feb 28 in common years."""

    month: int
    day: int
    at: time

    def next_after(self, local: datetime) -> datetime | None:
        for year in range(local.year, local.year + 2):
            day = min(self.day, calendar.monthrange(year, self.month)[1])
            candidate = datetime.combine(date(year, self.month, day), self.at)
            if candidate > local:
                return candidate
        return None


WallClock = Cron | Daily | Weekly | Monthly | Yearly


@dataclass(frozen=True)
class Interval:
    """Every `every`, counted from `anchor` (start time, else creation time)."""

    every: timedelta
    anchor: datetime


@dataclass(frozen=True)
class Once:
    at: datetime


@dataclass(frozen=True)
class Spec:
    """Everything that decides fire times; built from a validated schedule."""

    trigger: WallClock | Interval | Once
    zone: ZoneInfo
    dst: DstPolicy = DstPolicy.SHIFT_FORWARD_FIRE_ONCE
    days: DayFilter = DayFilter.ALL
    start: datetime | None = None
    end: datetime | None = None


def day_allowed(days: DayFilter, day: date) -> bool:
    weekend = day.isoweekday() >= 6
    return days == DayFilter.ALL or (weekend if days == DayFilter.WEEKENDS else not weekend)


def _next_allowed_day(days: DayFilter, day: date) -> date:
    day += timedelta(days=1)
    while not day_allowed(days, day):
        day += timedelta(days=1)
    return day


def resolve(local: datetime, zone: ZoneInfo, dst: DstPolicy) -> datetime | None:
    """The UTC instant of a naive wall time; None for a skipped time under SKIP_MISSING."""
    first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == local:
        return min(first, second)  # repeated time: its first occurrence
    if dst == DstPolicy.SKIP_MISSING_FIRE_ONCE:
        return None
    return _gap_end(min(first, second), max(first, second), zone)


def _gap_end(low: datetime, high: datetime, zone: ZoneInfo) -> datetime:
    """The transition instant between low (old offset) and high (new offset)."""
    old = low.astimezone(zone).utcoffset()
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == old:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def local_wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """Naive wall time of a UTC instant in a zone."""
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def next_fire(spec: Spec, after: datetime) -> datetime | None:
    """The first fire strictly after `after` (UTC) within the window, or None."""
    if spec.start is not None and spec.start - _TICK > after:
        after = spec.start - _TICK
    if after.year >= LAST_YEAR:
        return None
    limit = after + HORIZON
    if isinstance(spec.trigger, Once):
        found = spec.trigger.at if spec.trigger.at > after else None
        if found is not None and not day_allowed(spec.days, local_wall(found, spec.zone).date()):
            found = None
    elif isinstance(spec.trigger, Interval):
        found = _next_interval(spec, spec.trigger, after, limit)
    else:
        found = _next_wall_clock(spec, spec.trigger, after, limit)
    if found is None or (spec.end is not None and found >= spec.end):
        return None
    return found


def _next_wall_clock(
    spec: Spec, trigger: WallClock, after: datetime, limit: datetime
) -> datetime | None:
    # Resolution is monotonic in wall time, so no wall time before after's own
    # can resolve to an instant past `after`: start the search there.
    cursor = local_wall(after, spec.zone)
    local_limit = local_wall(limit, spec.zone)
    while True:
        candidate = trigger.next_after(cursor)
        if candidate is None or candidate > local_limit:
            return None
        if not day_allowed(spec.days, candidate.date()):
            cursor = (
                datetime.combine(_next_allowed_day(spec.days, candidate.date()), time()) - _TICK
            )
            continue
        cursor = candidate
        instant = resolve(candidate, spec.zone, spec.dst)
        if instant is not None and instant > after:
            return instant


def _next_interval(
    spec: Spec, trigger: Interval, after: datetime, limit: datetime
) -> datetime | None:
    every, anchor = trigger.every, trigger.anchor
    floor = after
    while floor <= limit:
        steps = 0 if floor < anchor else (floor - anchor) // every + 1
        candidate = anchor + every * steps
        day = local_wall(candidate, spec.zone).date()
        if day_allowed(spec.days, day):
            return candidate
        midnight = datetime.combine(_next_allowed_day(spec.days, day), time())
        floor = (
            resolve(midnight, spec.zone, DstPolicy.SHIFT_FORWARD_FIRE_ONCE) or candidate
        ) - _TICK
    return None


def upcoming(spec: Spec, after: datetime, count: int) -> Iterator[datetime]:
    """Up to `count` fires after `after`, in order."""
    cursor = after
    for _ in range(count):
        found = next_fire(spec, cursor)
        if found is None:
            return
        yield found
        cursor = found
