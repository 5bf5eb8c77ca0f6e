"""Firing: turns due schedules into runs, exactly once per (schedule, nominal time).

Each round takes up to `batch` ACTIVE schedules whose `next_fire_at` has passed and
records the next due nominal time of each, all in one transaction: per nominal time
the fire row (primary key (schedule id, nominal time)), the run it creates (its
idempotency key is `schedule:<id>:<nominal time>`, also unique), the schedule's
advanced `next_fire_at` and the events in the outbox commit together or not at all.
A second claim of the same nominal time, by a racing loop, a restarted scheduler or
another replica, fails on a key and creates nothing (the round is then redone one
schedule at a time, so the others still fire).

The schedule rows are taken with SELECT ... FOR UPDATE SKIP LOCKED on servers that
have it, so replicas share due schedules instead of queueing on one; on SQLite (one
replica) it is a plain read and the keys alone decide.

Each fire's script and stored parameters are checked through the catalogue client,
whose answers are cached until the catalogue publishes a change to the script (see
catalogue.py); a lookahead warms that cache, the parsed schedules and their next
times for fires due in the next seconds, so a round seldom waits on the network. A
fire whose parameters no longer validate, or whose script is gone, is recorded SKIPPED
with the reason. An unreachable catalogue leaves the fire due: it is retried on the
next tick.

Missed fires (nominal time older than the grace) follow the schedule's
catch-up policy; fires older than its catch-up deadline are one MISSED row
that counts them. Policies are documented in docs/scheduler.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
from cachetools import LRUCache
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import (
    JSON,
    Column,
    Dialect,
    MetaData,
    Row,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import schedule_spec
from services.scheduler import triggers as tr
from services.scheduler.catalogue import Checked
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import FireRow, RunRow, ScheduleRow
from services.scheduler.runs import Runs, cancel_run, column_values
from services.scheduler.schedules import ScheduleEvents, Schedules, definition
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.outbox import OutboxMessage
from shared.tasks import WakeableLoop

log = logging.getLogger(__name__)
RS = common_pb2.RunState
SS = pb.ScheduleState
FO = pb.FireOutcome
SE = events_pb2.ScheduleEventType
# A run created for a QUEUE fire waits PENDING with this dispatch time until released.
HELD_UNTIL = datetime(tr.LAST_YEAR, 1, 1, tzinfo=UTC)
ACTIVE_STATES = (RS.RUN_STATE_PENDING, RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING)
FAILED_STATES = (RS.RUN_STATE_FAILED, RS.RUN_STATE_TIMED_OUT, RS.RUN_STATE_LOST)
# The event of each fire outcome; a QUEUED fire publishes FIRED when it is released.
_EVENT_OF: dict[int, events_pb2.ScheduleEventType] = {
    FO.FIRE_OUTCOME_FIRED: SE.SCHEDULE_EVENT_TYPE_FIRED,
    FO.FIRE_OUTCOME_SKIPPED: SE.SCHEDULE_EVENT_TYPE_FIRE_SKIPPED,
    FO.FIRE_OUTCOME_MISSED: SE.SCHEDULE_EVENT_TYPE_FIRE_MISSED,
}
# Counting fires older than the catch-up deadline stops here ("at least N").
EXPIRED_COUNT_CAP = 100_000
# Fires of one round prepared at once (each may wait for the catalogue on a cache miss).
PREPARE_CONCURRENCY = 16
PARSED_CACHE_ENTRIES = 100_000
# Schedules warmed per tick at most.
WARM_LIMIT = 20_000


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
    lookahead: timedelta = timedelta(seconds=10)


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


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class _Prepared:
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


class _Encoded(TypeDecorator[Any]):
    """A JSON column whose values come encoded already (text): nothing to do on the way in."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


_RUNS = cast(Table, RunRow.__table__)
_JSON_COLUMNS = frozenset(c.name for c in _RUNS.columns if isinstance(c.type, JSON))
# The runs table as bulk fires insert into it: JSON values encoded once per schedule.
_RUNS_ENCODED = Table(
    "runs",
    MetaData(),
    *(Column(c.name, _Encoded() if c.name in _JSON_COLUMNS else c.type) for c in _RUNS.columns),
)
# SubmitRunRequest fields after idempotency_key (6), whose bytes follow its own.
_AFTER_KEY = ("labels", "limits")


def _timestamp(instant: datetime) -> timestamp_pb2.Timestamp:
    micros = round(instant.timestamp() * 1_000_000)
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


_FIRES = cast(Table, FireRow.__table__)
_SCHEDULES = cast(Table, ScheduleRow.__table__)


def _due_columns() -> tuple[Any, ...]:
    """What a round reads of each due schedule. The definition comes as its stored text (not
    decoded): it keys the caches of parsed definitions and fire bases."""
    return (
        ScheduleRow.id,
        ScheduleRow.script_name,
        ScheduleRow.next_fire_at,
        type_coerce(ScheduleRow.definition, Text).label("definition"),
        ScheduleRow.created_at,
    )


def json_format_parse(text: str) -> pb.Schedule:
    return json_format.ParseDict(json.loads(text), pb.Schedule())


def _fire_request(schedule: pb.Schedule) -> pb.SubmitRunRequest:
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


@dataclass
class _Base:
    """What every fire of one version of a schedule shares, computed once (by the
    lookahead, before its first fire): the parsed definition and trigger and, for an ALLOW
    schedule whose script and parameters validate and carry no secrets, the catalogue's
    answer it was built from, the submit request and the run's column values. Without
    `values`, its fires go the general way."""

    schedule: pb.Schedule
    spec: tr.Spec
    checked: Checked | None = None
    request: pb.SubmitRunRequest | None = None
    values: dict[str, Any] | None = None
    # The catalogue answer was current at this cache generation, until this monotonic time.
    generation: int = -1
    fresh_until: float = 0.0
    # The run's values as inserted (JSON columns encoded once), the request around its
    # idempotency key (serialised fields before and after it, for the digest), and the
    # events' constant fields, serialised once (per fire only its own fields are added:
    # protobuf messages concatenate).
    insert: dict[str, Any] = field(default_factory=dict)
    digest_parts: tuple[bytes, bytes] = (b"", b"")
    run_event: bytes = b""
    run_headers: dict[str, str] = field(default_factory=dict)
    fired_event: bytes = b""
    fired_headers: dict[str, str] = field(default_factory=dict)
    # Nominal time -> the next one (computed by the lookahead).
    following: dict[datetime, datetime | None] = field(default_factory=dict)

    def next_after(self, nominal: datetime) -> datetime | None:
        if nominal not in self.following:
            if len(self.following) > 8:
                self.following.clear()
            self.following[nominal] = tr.next_fire(self.spec, nominal)
        return self.following[nominal]


@dataclass(frozen=True)
class _ScheduleRef:
    id: str
    script_name: str


@dataclass
class _Quick:
    """One fire inserted in bulk: its rows and events."""

    schedule_id: str
    nominal: datetime
    created_at: datetime
    run: dict[str, Any]
    fire: dict[str, Any]
    advance: dict[str, Any]
    messages: list[OutboxMessage]


async def _insert_quick(session: AsyncSession, quick: list[_Quick]) -> None:
    """Insert the runs and fire records and advance the schedules of a round's bulk fires,
    a statement each (several rows per statement). The schedules were read in this
    transaction (locked on servers; SQLite's writers take turns), so the advance is
    conditional only as a guard."""
    await session.execute(insert(_RUNS_ENCODED), [q.run for q in quick])
    await session.execute(insert(_FIRES), [q.fire for q in quick])
    await session.execute(
        update(_SCHEDULES)
        .where(
            _SCHEDULES.c.id == bindparam("b_id"),
            _SCHEDULES.c.next_fire_at == bindparam("b_nominal"),
        )
        .values(
            next_fire_at=bindparam("n_next"),
            last_fire_at=bindparam("n_last"),
            updated_at=bindparam("n_updated"),
            state=bindparam("n_state"),
        ),
        [q.advance for q in quick],
    )


class FiresFirst:
    """Lets fires due now go before the scheduler's other background work: while firing
    records a burst, dispatch rounds and event batches wait before starting (at most
    `max_wait_s`, so they are never starved)."""

    def __init__(self, max_wait_s: float = 2.0) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        self._max_wait_s = max_wait_s

    def busy(self) -> None:
        self._idle.clear()

    def idle(self) -> None:
        self._idle.set()

    def is_idle(self) -> bool:
        """No burst of fires is being recorded now."""
        return self._idle.is_set()

    async def wait(self) -> None:
        if self._idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self._max_wait_s)


class Firing(WakeableLoop):
    """Background loop firing due schedules, and the run-end hook for queued fires and
    failure actions."""

    name = "firing"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runs: Runs,
        schedules: Schedules,
        events: ScheduleEvents,
        executors: Mapping[str, Any],
        metrics: SchedulerMetrics,
        settings: FiringSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        first: FiresFirst | None = None,
    ) -> None:
        super().__init__(settings.tick_s)
        self._sessions = sessions
        self._runs = runs
        self._schedules = schedules
        self._events = events
        self._executors = executors
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._warmed_until: datetime | None = None
        # The earliest fire the lookahead saw coming (the loop wakes for it).
        self._next_due: datetime | None = None
        self._bases: LRUCache[tuple[str, str, datetime], _Base] = LRUCache(
            maxsize=PARSED_CACHE_ENTRIES
        )
        self.first = first or FiresFirst()
        self._parsed_cache: LRUCache[tuple[str, str, datetime], tuple[pb.Schedule, tr.Spec]] = (
            LRUCache(maxsize=PARSED_CACHE_ENTRIES)
        )

    async def step(self) -> int:
        return await self.tick()

    def wait_s(self) -> float:
        """Until the next tick: at most the tick interval, less when the lookahead saw a
        fire due sooner (so a burst starts on its second, not up to a tick after)."""
        if self._next_due is None:
            return self._interval
        left = (self._next_due - self._clock()).total_seconds()
        return min(self._interval, max(left, 0.0))

    async def tick(self) -> int:
        """Handle what is due now, in rounds of up to `batch` schedules, one nominal time
        each; returns how many fires were recorded. While rounds find due schedules, the
        loops that yield to firing (dispatch, applying events) wait: fires go first."""
        steps = 0
        try:
            for _ in range(self._settings.per_schedule):
                if self._stopping:
                    break
                try:
                    recorded = await self._round(self._clock())
                except OperationalError as exc:
                    # SQLite: another writer committed since this transaction's snapshot.
                    if "locked" not in str(exc):
                        raise
                    break
                steps += recorded
                if not recorded:
                    break
                self.first.busy()
        finally:
            self.first.idle()
        if not self._stopping:
            await self._warm(self._clock())
        return steps

    async def _warm(self, now: datetime) -> None:
        """Ahead of the fires due in the next `lookahead`: parse their schedules, compute
        the time after, have the catalogue check their script and parameters and build the
        runs' common column values, so the round that records them finds all of it ready.
        Each schedule once, as it enters the window; a failure here only means a colder
        round."""
        horizon = now + self._settings.lookahead
        start = max(self._warmed_until or now, now)
        if self._next_due is not None and self._next_due <= now:
            self._next_due = None
        if horizon <= start:
            return
        query = (
            select(*_due_columns())
            .where(ScheduleRow.state == SS.SCHEDULE_STATE_ACTIVE)
            .where(ScheduleRow.next_fire_at > start, ScheduleRow.next_fire_at <= horizon)
            .limit(WARM_LIMIT)
        )
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        self._warmed_until = horizon
        gate = asyncio.Semaphore(PREPARE_CONCURRENCY)

        async def one(row: Row[Any]) -> None:
            with contextlib.suppress(Exception):
                async with gate:
                    base = await self._base(row)
                base.next_after(_aware(row.next_fire_at))

        await asyncio.gather(*(one(row) for row in rows))
        for row in rows:
            due = _aware(row.next_fire_at)
            if self._next_due is None or due < self._next_due:
                self._next_due = due

    async def _base(self, row: Row[Any]) -> _Base:
        """The shared part of the fires of one version of a schedule (`_due_columns` of its
        row), cached until the definition or the catalogue's answer for it changes. Raises
        Unavailable when the catalogue cannot be reached."""
        key = (row.id, row.definition, _aware(row.created_at))
        base = self._bases.get(key)
        if base is None:
            schedule = json_format_parse(row.definition)
            spec = schedule_spec.check_timing(schedule, anchor=_aware(row.created_at))
            base = self._bases[key] = _Base(schedule, spec)
        schedule = base.schedule
        if schedule.concurrency != pb.CONCURRENCY_POLICY_ALLOW:
            return base  # fires look at the schedule's active runs: the general way
        catalogue = self._runs.catalogue
        now = time.monotonic()
        if base.generation == catalogue.generation and now < base.fresh_until:
            return base  # the catalogue's answer it was built from is still current
        generation = catalogue.generation
        try:
            checked = await catalogue.check(schedule.script, schedule.parameters)
        except (InvalidArgument, NotFound, FailedPrecondition):
            base.checked = base.values = None
            base.generation, base.fresh_until = generation, now + catalogue.cache_ttl_s
            return base  # recorded SKIPPED, with the reason, the general way
        if base.checked is not checked:
            request = _fire_request(schedule)
            run, secrets = await self._runs.prepare(
                request, actor=f"schedule:{row.id}", fresh=False
            )
            base.checked, base.request, base.values = checked, request, None
            if not (secrets or run.secret_names):
                run.schedule_id = row.id
                self._build(base, run, _ScheduleRef(row.id, row.script_name))
        base.generation, base.fresh_until = generation, now + catalogue.cache_ttl_s
        return base

    def _build(self, base: _Base, run: RunRow, ref: _ScheduleRef) -> None:
        """The parts of a base that every fire copies (see _Base)."""
        assert base.request is not None
        values = base.values = column_values(run)
        base.insert = {
            name: json.dumps(value) if name in _JSON_COLUMNS else value
            for name, value in values.items()
        }
        request = base.request
        before, after = pb.SubmitRunRequest(), pb.SubmitRunRequest()
        before.CopyFrom(request)
        for name in _AFTER_KEY:
            before.ClearField(name)  # type: ignore[arg-type]
        after.labels.update(request.labels)
        if request.HasField("limits"):
            after.limits.CopyFrom(request.limits)
        base.digest_parts = (
            before.SerializeToString(deterministic=True),
            after.SerializeToString(deterministic=True),
        )
        message = self._runs.event_message(
            {**values, "id": ""}, events_pb2.RUN_EVENT_TYPE_SUBMITTED, "submitted"
        )
        event = events_pb2.RunEvent.FromString(message.payload)
        for name in ("event_id", "run_id", "occurred_at"):
            event.ClearField(name)  # type: ignore[arg-type]
        base.run_event, base.run_headers = event.SerializeToString(), message.headers
        fired = self._events.message(SE.SCHEDULE_EVENT_TYPE_FIRED, ref, key="")
        scheduled = events_pb2.ScheduleEvent.FromString(fired.payload)
        for name in ("event_id", "occurred_at"):
            scheduled.ClearField(name)  # type: ignore[arg-type]
        base.fired_event, base.fired_headers = scheduled.SerializeToString(), fired.headers

    async def _round(self, now: datetime) -> int:
        """Record the next due nominal time of up to `batch` due schedules in one
        transaction. The schedules are locked (SKIP LOCKED: replicas take different ones)
        while their fires are prepared, which seldom leaves this process: the catalogue's
        answers are cached. A schedule whose fire cannot be prepared (the catalogue is
        unreachable) stays due and never holds up the others. If any fire was recorded
        meanwhile by another loop (SQLite has no row locks), the transaction fails on its
        key and the schedules are fired one by one.

        Fires on time of ALLOW schedules whose run needs no secrets (the common case) are
        inserted in bulk from their schedule's cached base; the others (misses, skips,
        other concurrency policies) go the general way, through ORM rows."""
        messages: list[OutboxMessage] = []
        done: list[tuple[str, _Prepared, int]] = []
        quick: list[_Quick] = []
        try:
            async with self._sessions() as session, session.begin():
                due = await self._due(session, now)
                if not due:
                    return 0
                general: list[str] = []
                for row in due:
                    try:
                        base = await self._base(row)
                    except Unavailable as exc:
                        log.warning("schedule %s not fired yet: %s", row.id, exc.message)
                        continue
                    except Exception:
                        general.append(row.id)  # the general way logs why
                        continue
                    nominal = _aware(row.next_fire_at)
                    if base.values is None or nominal < now - self._settings.grace:
                        general.append(row.id)
                    else:
                        quick.append(self._quick(row, nominal, base))
                if general:
                    await self._record_general(session, general, now, messages, done)
                if not done and not quick:
                    return 0
                await session.flush()
                if quick:
                    await _insert_quick(session, quick)
                    messages.extend(m for q in quick for m in q.messages)
                await self._events.outbox.add_many(session, messages)
        except IntegrityError:
            log.info("a fire of this round was recorded meanwhile: firing one by one")
            ids = [schedule_id for schedule_id, _, _ in done] + [q.schedule_id for q in quick]
            return sum([await self._step(schedule_id) for schedule_id in ids])
        await self._committed(done, messages, now)
        for q in quick:
            self._metrics.fires.labels("fired").inc()
            self._metrics.fire_lateness.observe((q.created_at - q.nominal).total_seconds())
            self._runs.submitted_id(q.run["id"], {}, relay=False)
        return len(done) + len(quick)

    def _quick(self, row: Row[Any], nominal: datetime, base: _Base) -> _Quick:
        """One fire on time of an ALLOW schedule: its run, fire record, the schedule's
        advance and the two events, from the schedule's base."""
        schedule_id, created = row.id, self._clock()
        key = run_key(schedule_id, nominal)
        run_id = uuid.uuid4().hex
        before, after = base.digest_parts
        digest = hashlib.sha256(
            before + pb.SubmitRunRequest(idempotency_key=key).SerializeToString() + after
        ).hexdigest()
        run = dict(base.insert)
        run.update(
            id=run_id,
            idempotency_key=key,
            request_sha256=digest,
            created_at=created,
            updated_at=created,
            next_dispatch_at=nominal
            + jitter(schedule_id, nominal, base.schedule.jitter.ToTimedelta()),
        )
        following = base.next_after(nominal)
        occurred = _timestamp(created)
        fire_time = _timestamp(nominal)
        prefix = self._events.prefix
        return _Quick(
            schedule_id=schedule_id,
            nominal=nominal,
            created_at=created,
            run=run,
            fire={
                "schedule_id": schedule_id,
                "nominal_at": nominal,
                "outcome": FO.FIRE_OUTCOME_FIRED,
                "run_id": run_id,
                "reason": "",
                "recorded_at": created,
            },
            advance={
                "b_id": schedule_id,
                "b_nominal": nominal,
                "n_next": following,
                "n_last": nominal,
                "n_updated": created,
                "n_state": SS.SCHEDULE_STATE_ACTIVE
                if following is not None
                else SS.SCHEDULE_STATE_COMPLETED,
            },
            messages=[
                OutboxMessage(
                    f"{prefix}.run.{run_id}",
                    f"{run_id}:scheduler:submitted",
                    base.run_event
                    + events_pb2.RunEvent(
                        event_id=f"{run_id}:scheduler:submitted",
                        run_id=run_id,
                        occurred_at=occurred,
                    ).SerializeToString(),
                    base.run_headers,
                ),
                OutboxMessage(
                    f"{prefix}.schedule.{schedule_id}",
                    f"schedule:{schedule_id}:{iso(nominal)}:FIRED",
                    base.fired_event
                    + events_pb2.ScheduleEvent(
                        event_id=f"schedule:{schedule_id}:{iso(nominal)}:FIRED",
                        run_id=run_id,
                        occurred_at=occurred,
                        fire_time=fire_time,
                    ).SerializeToString(),
                    base.fired_headers,
                ),
            ],
        )

    async def _record_general(
        self,
        session: AsyncSession,
        schedule_ids: list[str],
        now: datetime,
        messages: list[OutboxMessage],
        done: list[tuple[str, _Prepared, int]],
    ) -> None:
        """The general way: load the rows (already locked by this transaction), prepare
        and record each fire through the ORM."""
        rows = (
            await session.scalars(
                select(ScheduleRow)
                .where(ScheduleRow.id.in_(schedule_ids))
                .order_by(ScheduleRow.next_fire_at)
            )
        ).all()
        prepared = await self._prepare_all(rows, now)
        for row in rows:
            ready = prepared.get(row.id)
            if ready is None:
                continue
            outcome = await self._record(session, row, ready, now, messages)
            done.append((row.id, ready, outcome))

    async def _due(self, session: AsyncSession, now: datetime) -> Sequence[Row[Any]]:
        query = (
            select(*_due_columns())
            .where(ScheduleRow.state == SS.SCHEDULE_STATE_ACTIVE)
            .where(ScheduleRow.next_fire_at <= now)
            .order_by(ScheduleRow.next_fire_at)
            .limit(self._settings.batch)
        )
        if session.get_bind().dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=True)
        return (await session.execute(query)).all()

    async def _prepare_all(
        self, rows: Sequence[ScheduleRow], now: datetime
    ) -> dict[str, _Prepared]:
        prepared: dict[str, _Prepared] = {}
        gate = asyncio.Semaphore(PREPARE_CONCURRENCY)

        async def one(row: ScheduleRow) -> None:
            try:
                async with gate:
                    prepared[row.id] = await self._prepare(row, now)
            except Unavailable as exc:
                log.warning("schedule %s not fired yet: %s", row.id, exc.message)
            except Exception:
                log.exception("schedule %s not fired", row.id)

        await asyncio.gather(*(one(row) for row in rows))
        return prepared

    async def _step(self, schedule_id: str) -> int:
        """Record one schedule's next due nominal time on its own; 1 if it was recorded."""
        now = self._clock()
        messages: list[OutboxMessage] = []
        try:
            async with self._sessions() as session:
                peek = await session.get(ScheduleRow, schedule_id)
            if peek is None or not _is_due(peek, now):
                return 0
            prepared = await self._prepare(peek, now)
            async with self._sessions() as session, session.begin():
                row = await self._claim(session, schedule_id)
                if row is None or not _is_due(row, now):
                    return 0
                if _aware(row.next_fire_at) != prepared.nominal:  # type: ignore[arg-type]
                    return 0  # moved since the peek: the next round looks again
                outcome = await self._record(session, row, prepared, now, messages)
                await session.flush()
                await self._events.outbox.add_many(session, messages)
        except IntegrityError:
            log.info("fire of %s already recorded", schedule_id)
            return 0
        except Unavailable as exc:
            log.warning("schedule %s not fired yet: %s", schedule_id, exc.message)
            return 0
        await self._committed([(schedule_id, prepared, outcome)], messages, now)
        return 1

    async def _committed(
        self,
        done: list[tuple[str, _Prepared, int]],
        messages: list[OutboxMessage],
        now: datetime,
    ) -> None:
        """After the commit that recorded `done`: relay its events, count the fires, and
        cancel what REPLACE fires replace."""
        self._events.outbox.committed(messages)
        for schedule_id, ready, outcome in done:
            self._after_commit(schedule_id, ready, outcome, now)
        for _, ready, _ in done:
            await self._replace(ready.replaced)

    def _parsed(self, row: ScheduleRow) -> tuple[pb.Schedule, tr.Spec]:
        """The schedule's definition and trigger, parsed once per version of the row (read
        only: shared by every fire until the definition changes)."""
        key = (row.id, json.dumps(row.definition, sort_keys=True), _aware(row.created_at))
        parsed = self._parsed_cache.get(key)
        if parsed is None:
            schedule = definition(row)
            spec = schedule_spec.check_timing(schedule, anchor=_aware(row.created_at))
            parsed = self._parsed_cache[key] = (schedule, spec)
        return parsed

    async def _prepare(self, row: ScheduleRow, now: datetime) -> _Prepared:
        schedule, spec = self._parsed(row)
        nominal = _aware(row.next_fire_at)  # type: ignore[arg-type]
        window = self._settings.default_window
        if schedule.HasField("catch_up_deadline") and schedule.catch_up_deadline.ToTimedelta():
            window = schedule.catch_up_deadline.ToTimedelta()
        following = tr.next_fire(spec, nominal)
        decided = plan(
            nominal,
            following,
            now=now,
            grace=self._settings.grace,
            window=window,
            policy=schedule.catch_up,
        )
        prepared = _Prepared(nominal, following, decided)
        if decided is Plan.EXPIRED:
            count, last, prepared.following = count_expired(spec, nominal, now - window)
            prepared.expired = (count, last)
        elif decided is Plan.FIRE:
            request = _fire_request(schedule)
            request.idempotency_key = run_key(row.id, nominal)
            try:
                run, secrets = await self._runs.prepare(
                    request, actor=f"schedule:{row.id}", fresh=False
                )
            except (InvalidArgument, NotFound, FailedPrecondition) as exc:
                bad = (
                    exc.violations if isinstance(exc, InvalidArgument | FailedPrecondition) else []
                )
                details = "".join(f"; {v.field}: {v.description}" for v in bad)
                prepared.invalid = (
                    f"the schedule's script or parameters no longer validate: {exc.message}"
                    f"{details}"
                )
            else:
                run.schedule_id = row.id
                run.next_dispatch_at = nominal + jitter(
                    row.id, nominal, schedule.jitter.ToTimedelta()
                )
                prepared.run, prepared.secrets = run, secrets
        return prepared

    async def _replace(self, run_ids: list[str]) -> None:
        """Cancel the runs a committed REPLACE fire replaces, as CancelRun would. They were
        read under the claim, so a fire that lost its claim cancels nothing."""
        for run_id in run_ids:
            try:
                await cancel_run(self._runs, self._executors, run_id, "replaced by a new fire")
            except (FailedPrecondition, NotFound):
                pass  # ended meanwhile
            except grpc.aio.AioRpcError as exc:
                log.warning("could not cancel replaced run %s: %s", run_id, exc.code().name)

    async def _claim(self, session: AsyncSession, schedule_id: str) -> ScheduleRow | None:
        query = select(ScheduleRow).where(ScheduleRow.id == schedule_id)
        if session.get_bind().dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=True)
        return await session.scalar(query)

    @staticmethod
    async def _active(session: AsyncSession, schedule_id: str) -> list[str]:
        """Ids of the schedule's runs that are pending, queued or running (held runs of
        QUEUE fires are not)."""
        query = (
            select(RunRow.id)
            .where(RunRow.schedule_id == schedule_id)
            .where(RunRow.state.in_(ACTIVE_STATES))
            .where(RunRow.next_dispatch_at.is_(None) | (RunRow.next_dispatch_at < HELD_UNTIL))
            .order_by(RunRow.created_at)
        )
        return list((await session.scalars(query)).all())

    async def _record(
        self,
        session: AsyncSession,
        row: ScheduleRow,
        prepared: _Prepared,
        now: datetime,
        messages: list[OutboxMessage],
    ) -> int:
        """Add the fire (and its run) to the session, advance the schedule, and append the
        events to `messages`, for the caller to flush and stage; the outcome."""
        schedule, _ = self._parsed(row)
        nominal, run, reason = prepared.nominal, None, ""
        outcome: int
        if prepared.expired is not None:
            count, last = prepared.expired
            outcome = FO.FIRE_OUTCOME_MISSED
            more = "at least " if count >= EXPIRED_COUNT_CAP else ""
            reason = (
                f"{more}{count} fire(s) from {iso(nominal)} to {iso(last)} were missed and are "
                "older than the catch-up deadline"
            )
        elif prepared.plan is Plan.MISS:
            outcome = FO.FIRE_OUTCOME_MISSED
            late = (now - nominal).total_seconds()
            policy = pb.CatchUpPolicy.Name(schedule.catch_up).removeprefix("CATCH_UP_POLICY_")
            reason = (
                f"missed: reached {late:.1f}s after its time, past the grace (no scheduler was "
                f"running or able to fire it); catch-up policy {policy}"
            )
        elif prepared.run is None:
            outcome, reason = FO.FIRE_OUTCOME_SKIPPED, prepared.invalid
        else:
            outcome, run, reason = await self._concurrency(session, row, schedule, prepared)
        session.add(
            FireRow(
                schedule_id=row.id,
                nominal_at=nominal,
                outcome=outcome,
                run_id=run.id if run is not None else None,
                reason=reason,
                recorded_at=now,
            )
        )
        if run is not None:
            session.add(run)
            messages.append(
                self._runs.event_message(run, events_pb2.RUN_EVENT_TYPE_SUBMITTED, "submitted")
            )
            row.last_fire_at = nominal
        row.next_fire_at, row.updated_at = prepared.following, now
        if prepared.following is None:
            row.state = SS.SCHEDULE_STATE_COMPLETED
        kind = _EVENT_OF.get(outcome)
        if kind is not None:
            messages.append(
                self._events.message(
                    kind,
                    row,
                    key=iso(nominal),
                    nominal=nominal,
                    run_id=run.id if run is not None else "",
                    reason=reason,
                )
            )
        return outcome

    async def _concurrency(
        self, session: AsyncSession, row: ScheduleRow, schedule: pb.Schedule, prepared: _Prepared
    ) -> tuple[int, RunRow | None, str]:
        policy, run = schedule.concurrency, prepared.run
        assert run is not None
        if policy == pb.CONCURRENCY_POLICY_ALLOW:
            return FO.FIRE_OUTCOME_FIRED, run, ""
        active = await self._active(session, row.id)
        if policy == pb.CONCURRENCY_POLICY_REPLACE:
            prepared.replaced = active
            reason = f"replaces run(s) {', '.join(active)}" if active else ""
            return FO.FIRE_OUTCOME_FIRED, run, reason
        if not active:
            return FO.FIRE_OUTCOME_FIRED, run, ""
        if policy == pb.CONCURRENCY_POLICY_QUEUE:
            run.next_dispatch_at = HELD_UNTIL
            return FO.FIRE_OUTCOME_QUEUED, run, f"waiting for run {active[0]} to end"
        return FO.FIRE_OUTCOME_SKIPPED, None, f"previous run still active ({active[0]})"

    def _after_commit(
        self, schedule_id: str, prepared: _Prepared, outcome: int, now: datetime
    ) -> None:
        name = FO.Name(outcome).removeprefix("FIRE_OUTCOME_").lower()
        count = prepared.expired[0] if prepared.expired is not None else 1
        self._metrics.fires.labels(name).inc(count)
        if outcome in (FO.FIRE_OUTCOME_FIRED, FO.FIRE_OUTCOME_QUEUED):
            self._metrics.fire_lateness.observe((now - prepared.nominal).total_seconds())
            assert prepared.run is not None and prepared.secrets is not None
            self._runs.submitted(prepared.run, prepared.secrets, relay=False)
        if outcome != FO.FIRE_OUTCOME_FIRED:
            log.info("fire %s of schedule %s %s", iso(prepared.nominal), schedule_id, name)

    async def schedule_deleted(self, schedule_id: str) -> None:
        """Cancel the held runs of a deleted schedule's queued fires: nothing would release
        them any more."""
        async with self._sessions() as session:
            held = (
                await session.scalars(
                    select(RunRow.id).where(
                        RunRow.schedule_id == schedule_id,
                        RunRow.state == RS.RUN_STATE_PENDING,
                        RunRow.next_dispatch_at >= HELD_UNTIL,
                    )
                )
            ).all()
        for run_id in held:
            with contextlib.suppress(FailedPrecondition, NotFound):
                await self._runs.cancel_pending(run_id)

    async def runs_ended(self, session: AsyncSession, runs: Sequence[RunRow]) -> None:
        """Runs.on_terminal_many hook: `run_ended` for the runs of scheduled fires that one
        transaction ends, without a query per run in the common case. The schedules are
        locked (in id order) and read at once with their held runs; a run that only resets
        its schedule's failure count (it succeeded, nothing of its schedule is held, the
        schedule does not queue fires) joins one UPDATE; the schedules of any other run go
        the general way, each of their runs in order."""
        scheduled = [run for run in runs if run.schedule_id is not None]
        if not scheduled:
            return
        ids = sorted({run.schedule_id for run in scheduled if run.schedule_id})
        query = (
            select(*_due_columns(), ScheduleRow.consecutive_failures)
            .where(ScheduleRow.id.in_(ids))
            .order_by(ScheduleRow.id)
            .with_for_update()
        )
        rows = {row.id: row for row in (await session.execute(query)).all()}
        holding: set[str] = set(
            (
                await session.scalars(
                    select(RunRow.schedule_id)
                    .where(RunRow.state == RS.RUN_STATE_PENDING)
                    .where(RunRow.next_dispatch_at >= HELD_UNTIL)
                    .where(RunRow.schedule_id.in_(ids))
                    .distinct()
                )
            ).all()
        ) - {None}  # type: ignore[assignment]
        general = set(holding)
        for run in scheduled:
            row = rows.get(run.schedule_id or "")
            if row is None:
                continue
            try:
                queues = self._schedule_of(row).concurrency == pb.CONCURRENCY_POLICY_QUEUE
            except Exception:
                queues = True  # unreadable here: the general way decides
            if queues or run.state != RS.RUN_STATE_SUCCEEDED or _held(run):
                general.add(row.id)
        reset = [
            sid
            for sid in ids
            if sid in rows and sid not in general and rows[sid].consecutive_failures
        ]
        if reset:
            await session.execute(
                update(_SCHEDULES).where(_SCHEDULES.c.id.in_(reset)).values(consecutive_failures=0)
            )
        for run in scheduled:
            if run.schedule_id in general:
                await self.run_ended(session, run)

    def _schedule_of(self, row: Any) -> pb.Schedule:
        key = (row.id, row.definition, _aware(row.created_at))
        base = self._bases.get(key)
        if base is not None:
            return base.schedule
        return json_format_parse(row.definition)

    async def run_ended(self, session: AsyncSession, run: RunRow) -> None:
        """Runs.on_terminal hook, inside the transaction that ends the run: release the
        oldest queued fire of its schedule, and count failures for the failure action. The
        schedule row is locked first, so runs of one schedule ending together serialise."""
        if run.schedule_id is None:
            return
        row = await session.get(ScheduleRow, run.schedule_id, with_for_update=True)
        if row is None:
            return
        await self._release(session, row, run)
        await self._failure_action(session, row, run)

    async def _release(self, session: AsyncSession, row: ScheduleRow, ended: RunRow) -> None:
        own = await session.scalar(
            select(FireRow).where(
                FireRow.schedule_id == row.id,
                FireRow.run_id == ended.id,
                FireRow.outcome == FO.FIRE_OUTCOME_QUEUED,
            )
        )
        if own is not None:  # a held run ended (cancelled) before its turn
            own.outcome = FO.FIRE_OUTCOME_SKIPPED
            ended_as = RS.Name(ended.state).removeprefix("RUN_STATE_")
            own.reason = f"queued run ended {ended_as} before it was released"
            await self._events.stage(
                session,
                SE.SCHEDULE_EVENT_TYPE_FIRE_SKIPPED,
                row,
                key=iso(_aware(own.nominal_at)),
                nominal=_aware(own.nominal_at),
                run_id=ended.id,
                reason=own.reason,
            )
            await session.flush()
        if [r for r in await self._active(session, row.id) if r != ended.id]:
            return
        queued = await session.scalar(
            select(FireRow)
            .where(FireRow.schedule_id == row.id, FireRow.outcome == FO.FIRE_OUTCOME_QUEUED)
            .order_by(FireRow.nominal_at)
            .limit(1)
        )
        if queued is None or queued.run_id is None:
            return
        held = await session.get(RunRow, queued.run_id, with_for_update=True)
        if held is None or held.state != RS.RUN_STATE_PENDING:
            return
        held.next_dispatch_at = held.updated_at = self._clock()
        queued.outcome = FO.FIRE_OUTCOME_FIRED
        queued.reason = f"released when run {ended.id} ended"
        nominal = _aware(queued.nominal_at)
        await self._events.stage(
            session,
            SE.SCHEDULE_EVENT_TYPE_FIRED,
            row,
            key=iso(nominal),
            nominal=nominal,
            run_id=held.id,
            reason=queued.reason,
        )

    async def _failure_action(self, session: AsyncSession, row: ScheduleRow, run: RunRow) -> None:
        if run.state == RS.RUN_STATE_SUCCEEDED:
            row.consecutive_failures = 0
            return
        if run.state not in FAILED_STATES or run.retry_run_id:
            # A cancelled run says nothing about the script's health, and an attempt being
            # retried (the retry hook ran first) has not failed the schedule yet.
            return
        row.consecutive_failures += 1
        schedule = definition(row)
        action = schedule.failure_action
        if action == pb.FAILURE_ACTION_CONTINUE or row.consecutive_failures < max(
            schedule.failure_threshold, 1
        ):
            return
        reason = (
            f"{row.consecutive_failures} consecutive failed run(s), the last {run.id} "
            f"{RS.Name(run.state).removeprefix('RUN_STATE_')}"
        )
        kind = SE.SCHEDULE_EVENT_TYPE_FAILING
        if action == pb.FAILURE_ACTION_PAUSE and row.state == SS.SCHEDULE_STATE_ACTIVE:
            row.state, kind = SS.SCHEDULE_STATE_PAUSED, SE.SCHEDULE_EVENT_TYPE_PAUSED
        elif action == pb.FAILURE_ACTION_DISABLE and row.state in (
            SS.SCHEDULE_STATE_ACTIVE,
            SS.SCHEDULE_STATE_PAUSED,
        ):
            row.state, kind = SS.SCHEDULE_STATE_DISABLED, SE.SCHEDULE_EVENT_TYPE_DISABLED
        name = pb.FailureAction.Name(action).removeprefix("FAILURE_ACTION_").lower()
        self._metrics.failure_actions.labels(name).inc()
        if kind == SE.SCHEDULE_EVENT_TYPE_FAILING:
            # NOTIFY (or a PAUSE / DISABLE that already happened): the schedule goes on; the
            # event tells whoever follows it (alert rules) that it is failing.
            log.warning("schedule %s: %s (failure action %s)", row.id, reason, name)
            await self._events.stage(
                session, kind, row, key=f"failing:{run.id}", run_id=run.id, reason=reason
            )
            return
        row.next_fire_at, row.updated_at = None, self._clock()
        row.pause_reason = f"{name}d by its failure action: {reason}"
        await self._events.stage(
            session, kind, row, key=f"failure:{run.id}", run_id=run.id, reason=row.pause_reason
        )


def _held(run: RunRow) -> bool:
    """Whether the run is (or ended as) a queued fire's held run."""
    return run.next_dispatch_at is not None and _aware(run.next_dispatch_at) >= HELD_UNTIL


def _is_due(row: ScheduleRow, now: datetime) -> bool:
    return (
        row.state == SS.SCHEDULE_STATE_ACTIVE
        and row.next_fire_at is not None
        and _aware(row.next_fire_at) <= now
    )
