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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cachetools import LRUCache
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import schedule_spec
from services.scheduler import triggers as tr
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import FireRow, RunRow, ScheduleRow
from services.scheduler.runs import Runs, cancel_run
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
        self._parsed_cache: LRUCache[tuple[str, str, datetime], tuple[pb.Schedule, tr.Spec]] = (
            LRUCache(maxsize=PARSED_CACHE_ENTRIES)
        )

    async def step(self) -> int:
        return await self.tick()

    async def tick(self) -> int:
        """Handle what is due now, in rounds of up to `batch` schedules, one nominal time
        each; returns how many fires were recorded."""
        steps = 0
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
        if not self._stopping:
            await self._warm(self._clock())
        return steps

    async def _warm(self, now: datetime) -> None:
        """Ahead of the fires due in the next `lookahead`: parse their schedules, compute
        the time after, and have the catalogue check their script and parameters, so the
        round that records them finds all of it cached. Each schedule once, as it enters
        the window; a failure here only means a colder round."""
        horizon = now + self._settings.lookahead
        start = max(self._warmed_until or now, now)
        if horizon <= start:
            return
        query = (
            select(ScheduleRow)
            .where(ScheduleRow.state == SS.SCHEDULE_STATE_ACTIVE)
            .where(ScheduleRow.next_fire_at > start, ScheduleRow.next_fire_at <= horizon)
            .limit(WARM_LIMIT)
        )
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        self._warmed_until = horizon
        gate = asyncio.Semaphore(PREPARE_CONCURRENCY)

        async def one(row: ScheduleRow) -> None:
            with contextlib.suppress(Exception):
                schedule, spec = self._parsed(row)
                tr.next_fire(spec, _aware(row.next_fire_at))  # type: ignore[arg-type]
                async with gate:
                    await self._runs.catalogue.check(schedule.script, schedule.parameters)

        await asyncio.gather(*(one(row) for row in rows))

    async def _round(self, now: datetime) -> int:
        """Record the next due nominal time of up to `batch` due schedules in one
        transaction. The schedules are locked (SKIP LOCKED: replicas take different ones)
        while their fires are prepared, which seldom leaves this process: the catalogue's
        answers are cached. A schedule whose fire cannot be prepared (the catalogue is
        unreachable) stays due and never holds up the others. If any fire was recorded
        meanwhile by another loop (SQLite has no row locks), the transaction fails on its
        key and the schedules are fired one by one."""
        messages: list[OutboxMessage] = []
        done: list[tuple[str, _Prepared, int]] = []
        try:
            async with self._sessions() as session, session.begin():
                rows = await self._due(session, now)
                if not rows:
                    return 0
                prepared = await self._prepare_all(rows, now)
                for row in rows:
                    ready = prepared.get(row.id)
                    if ready is None:
                        continue
                    outcome = await self._record(session, row, ready, now, messages)
                    done.append((row.id, ready, outcome))
                if not done:
                    return 0
                await session.flush()
                await self._events.outbox.add_many(session, messages)
        except IntegrityError:
            log.info("a fire of this round was recorded meanwhile: firing one by one")
            return sum([await self._step(schedule_id) for schedule_id, _, _ in done])
        await self._committed(done, messages, now)
        return len(done)

    async def _due(self, session: AsyncSession, now: datetime) -> Sequence[ScheduleRow]:
        query = (
            select(ScheduleRow)
            .where(ScheduleRow.state == SS.SCHEDULE_STATE_ACTIVE)
            .where(ScheduleRow.next_fire_at <= now)
            .order_by(ScheduleRow.next_fire_at)
            .limit(self._settings.batch)
        )
        if session.get_bind().dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=True)
        return (await session.scalars(query)).all()

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
            request = pb.SubmitRunRequest(
                script=schedule.script,
                parameters=schedule.parameters,
                priority=schedule.priority,
                labels=schedule.labels,
                idempotency_key=run_key(row.id, nominal),
            )
            if schedule.HasField("retry"):
                request.retry.CopyFrom(schedule.retry)
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
        self._metrics.fires.labels(schedule_id, name).inc(count)
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
        self._metrics.failure_actions.labels(row.id, name).inc()
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


def _is_due(row: ScheduleRow, now: datetime) -> bool:
    return (
        row.state == SS.SCHEDULE_STATE_ACTIVE
        and row.next_fire_at is not None
        and _aware(row.next_fire_at) <= now
    )
