"""Pure planning of fires: what to do with a due nominal time (fire, miss, expire), the
jitter every replica computes alike, the run's idempotency key. No I/O here."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cachetools import LRUCache
from google.protobuf import json_format, timestamp_pb2

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import triggers as tr
from services.scheduler.models import RunRow

RS = common_pb2.RunState
# A run created for a QUEUE fire waits PENDING with this dispatch time until released.
HELD_UNTIL = datetime(tr.LAST_YEAR, 1, 1, tzinfo=UTC)
ACTIVE_STATES = (RS.RUN_STATE_PENDING, RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING)
FAILED_STATES = (RS.RUN_STATE_FAILED, RS.RUN_STATE_TIMED_OUT, RS.RUN_STATE_LOST)
# Counting fires older than the catch-up deadline stops here ("at least N").
EXPIRED_COUNT_CAP = 100_000


@dataclass(frozen=True)
class FiringSettings:
    tick_s: float = 0.5
    # A nominal time older than this when claimed was missed (the scheduler was not running).
    grace: timedelta = timedelta(seconds=15)
    # Schedules taken per tick, and nominal times handled per schedule per tick.
    batch: int = 200
    per_schedule: int = 100
    # The catch-up window of a schedule without catch_up_deadline.
    default_window: timedelta = timedelta(hours=1)
    # How far ahead fires are prepared for (caches warmed); 0 turns it off.
    lookahead: timedelta = timedelta(seconds=30)
    # How far ahead fires of ALLOW schedules are recorded, their runs SCHEDULED until due
    # (within the lookahead); 0 records every fire at its time.
    ahead: timedelta = timedelta(seconds=25)
    # How long after its due time a fire recorded ahead is left to the replica that
    # recorded it (which claims and sends it at once, due.py) before any replica's
    # dispatch rounds may take it.
    handover_grace: timedelta = timedelta(seconds=2)


class Plan(enum.Enum):
    FIRE = "fire"
    MISS = "miss"
    EXPIRED = "expired"


def plan(
    nominal: datetime,
    following: datetime | None,
    *,
    now: datetime,
    grace: timedelta,
    window: timedelta,
    policy: int,
) -> Plan:
    """What to do with one due nominal time; `following` is the schedule's next one."""
    if nominal >= now - grace:
        return Plan.FIRE
    if nominal < now - window:
        return Plan.EXPIRED
    if policy == pb.CATCH_UP_POLICY_ALL:
        return Plan.FIRE
    latest = following is None or following >= now - grace
    return Plan.FIRE if policy == pb.CATCH_UP_POLICY_LATEST and latest else Plan.MISS


def jitter(schedule_id: str, nominal: datetime, most: timedelta) -> timedelta:
    """A delay in [0, most) that every replica computes alike for one fire."""
    if most <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}|{iso(nominal)}".encode()).digest()
    return most * (int.from_bytes(digest[:8], "big") / 2**64)


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def run_key(schedule_id: str, nominal: datetime) -> str:
    """The idempotency key of the run a fire creates."""
    return f"schedule:{schedule_id}:{iso(nominal)}"


def count_expired(
    spec: tr.Spec, first: datetime, cutoff: datetime
) -> tuple[int, datetime, datetime | None]:
    """Nominal times from `first` (included) before `cutoff`: how many (capped), the last
    of them, and the first one at or after the cutoff (None if the schedule ends)."""
    count, last, current = 1, first, tr.next_fire(spec, first)
    while current is not None and current < cutoff and count < EXPIRED_COUNT_CAP:
        count, last, current = count + 1, current, tr.next_fire(spec, current)
    if current is not None and current < cutoff:
        current = tr.next_fire(spec, cutoff - timedelta(microseconds=1))
    return count, last, current


def catch_up_window(schedule: pb.Schedule, default: timedelta) -> timedelta:
    """How far back missed fires of `schedule` are caught up."""
    if schedule.HasField("catch_up_deadline") and schedule.catch_up_deadline.ToTimedelta():
        return schedule.catch_up_deadline.ToTimedelta()
    return default


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    micros = round(instant.timestamp() * 1_000_000)
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


# Definitions but for their name (JSON, keys sorted) -> the parsed Schedule.
_SHAPES: LRUCache[str, pb.Schedule] = LRUCache(maxsize=10_000)


def parse_definition(text: str) -> pb.Schedule:
    """A schedule definition from its stored JSON text."""
    return schedule_of(json.loads(text))


def schedule_of(stored: Mapping[str, Any]) -> pb.Schedule:
    """A schedule definition from its stored JSON value (a new message each call). Parsed
    once per shape: schedules made alike (the same definition but for their name) share
    the parse (ParseDict is pure Python, ~0.3 ms; a copy a few µs)."""
    fields = dict(stored)
    name = fields.pop("name", "")
    shape = json.dumps(fields, sort_keys=True)
    parsed = _SHAPES.get(shape)
    if parsed is None:
        parsed = _SHAPES[shape] = json_format.ParseDict(fields, pb.Schedule())
    schedule = pb.Schedule()
    schedule.CopyFrom(parsed)
    if name:
        schedule.name = name
    return schedule


def fire_request(schedule: pb.Schedule) -> pb.SubmitRunRequest:
    """The submit request a fire of `schedule` makes (without its idempotency key)."""
    request = pb.SubmitRunRequest(
        script=schedule.script,
        parameters=schedule.parameters,
        priority=schedule.priority,
        labels=schedule.labels,
    )
    if schedule.HasField("retry"):
        request.retry.CopyFrom(schedule.retry)
    return request


def held(run: RunRow) -> bool:
    """Whether the run is (or ended as) a queued fire's held run."""
    return run.next_dispatch_at is not None and aware(run.next_dispatch_at) >= HELD_UNTIL


@dataclass
class Prepared:
    """What the transaction of one nominal time needs, computed before it."""

    nominal: datetime
    following: datetime | None
    plan: Plan
    run: RunRow | None = None
    secrets: dict[str, str] | None = None
    invalid: str = ""
    expired: tuple[int, datetime] | None = None
    # Active runs a REPLACE fire cancels once it has committed.
    replaced: list[str] = field(default_factory=list)
