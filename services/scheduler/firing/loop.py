"""The firing loop: each tick records the due nominal times of due schedules in rounds
(records.py), then warms the caches for the fires coming in the next `lookahead`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import Row, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler.batches import chunks
from services.scheduler.executors import Executor
from services.scheduler.firing.bases import Base, Bases, due_columns, execute_request
from services.scheduler.firing.due import DueRuns, Handover, promote_claimed, promote_due
from services.scheduler.firing.events import FireMessages
from services.scheduler.firing.planning import FiringSettings, Prepared, aware, iso
from services.scheduler.firing.records import (
    Moved,
    Quick,
    Records,
    claim,
    due,
    insert_quick,
    withdraw_staged,
)
from services.scheduler.firing.run_end import RunEnd
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import FireRow, RunRow, ScheduleRow
from services.scheduler.run_listeners import EndWrites
from services.scheduler.runs import Runs, cancel_run
from services.scheduler.schedules import ScheduleEvents, Schedules
from shared.errors import FailedPrecondition, NotFound, Unavailable
from shared.outbox import OutboxMessage
from shared.tasks import WakeableLoop

log = logging.getLogger(__name__)
SS = pb.ScheduleState
FO = pb.FireOutcome
# Schedules warmed per tick at most.
WARM_LIMIT = 20_000
# The ahead rounds stop this long before a due second (see Firing._ahead).
AHEAD_YIELD_S = 1.0
PREPARE_CONCURRENCY = 16


class FiresFirst:
    """Lets fires due now go before the scheduler's other background work: while firing
    records a burst, dispatch rounds and event batches wait before starting, for at most
    `max_wait_s` from the start of the burst (not per wait: a burst that outlasts it, e.g.
    late fires recorded the general way on a loaded machine, would otherwise hold every
    batch of RunEvents that long, and the runs' leases would expire before their events
    are applied)."""

    def __init__(
        self, max_wait_s: float = 2.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._since = 0.0

    def busy(self) -> None:
        if self._idle.is_set():
            self._since = self._clock()
        self._idle.clear()

    def idle(self) -> None:
        self._idle.set()

    def is_idle(self) -> bool:
        """No burst of fires is being recorded now."""
        return self._idle.is_set()

    async def wait(self) -> None:
        if self._idle.is_set():
            return
        left = self._max_wait_s - (self._clock() - self._since)
        if left <= 0:
            return  # the burst has had its head start
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), left)


class Firing(WakeableLoop):
    """Background loop firing due schedules; its `run_end` holds the run-end hooks for
    queued fires and failure actions."""

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
        on_due: Callable[[], None] = lambda: None,
        handover: Handover | None = None,
    ) -> None:
        super().__init__(settings.tick_s)
        # The dispatcher, which due runs recorded ahead here are claimed for and handed to
        # at their due second (due.py); without it they go through dispatch rounds.
        self._handover = handover
        self._due = DueRuns()
        # Called when SCHEDULED runs became PENDING (dispatch wakes).
        self._on_due = on_due
        # The earliest due time of a SCHEDULED run this replica recorded.
        self._next_run_due: datetime | None = None
        self._sessions = sessions
        self._runs = runs
        self._schedules = schedules
        self._executors = executors
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._outbox = events.outbox
        self._warmed_until: datetime | None = None
        # The earliest fire the lookahead saw coming (the loop wakes for it).
        self._next_due: datetime | None = None
        self.first = first or FiresFirst()
        messages = FireMessages(runs, events)
        self._messages = messages
        self._bases = Bases(runs, messages)
        self._records = Records(runs, self._bases, messages, settings, clock)
        self.run_end = RunEnd(sessions, runs, self._bases, messages, metrics, clock)

    @staticmethod
    def concerns(run: RunRow) -> bool:
        """Whether the run-end hooks act on the end of `run`: those of scheduled runs only."""
        return run.schedule_id is not None

    async def runs_ended(self, session: AsyncSession, runs: Sequence[RunRow]) -> None:
        """Runs.on_terminal_many hook (run_end.py)."""
        await self.run_end.runs_ended(session, runs)

    def plan_ended(self, conn: Connection, runs: Sequence[RunRow]) -> EndWrites | None:
        """The same on a Core transaction, when it can (run_end.py)."""
        return self.run_end.plan(conn, runs)

    async def run_ended(self, session: AsyncSession, run: RunRow) -> None:
        """Runs.on_terminal hook (run_end.py)."""
        await self.run_end.run_ended(session, run)

    async def schedule_deleted(self, schedule_id: str) -> None:
        """Schedules.on_delete hook (run_end.py)."""
        await self.run_end.schedule_deleted(schedule_id)

    async def step(self) -> int:
        return await self.tick()

    def wait_s(self) -> float:
        """Until the next tick: at most the tick interval, less when the lookahead saw a
        fire due sooner (so a burst starts on its second, not up to a tick after)."""
        soonest = [at for at in (self._next_due, self._next_run_due) if at is not None]
        if not soonest:
            return self._interval
        left = (min(soonest) - self._clock()).total_seconds()
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
        await self._promote(self._clock())
        if not self._stopping:
            await self._warm(self._clock())
        if not self._stopping:
            steps += await self._ahead(self._clock())
        return steps

    async def withdraw(self, session: AsyncSession, schedule_id: str, why: str) -> None:
        """Schedules' hook, in the transaction pausing, changing or deleting a schedule: its
        fires recorded ahead and not yet due are withdrawn (records.withdraw), their runs'
        CANCELLED events staged."""
        await withdraw_staged(session, self._runs, schedule_id, why, self._clock())

    async def _promote(self, now: datetime) -> int:
        """The SCHEDULED runs due by now become PENDING. Those this replica recorded ahead
        are claimed for its dispatcher by the same statement and their requests (built when
        recorded) sent at once (due.py); the rest (recorded by another replica, or before a
        restart) are promoted a grace later, unclaimed, and dispatch is woken for them."""
        if self._next_run_due is not None and self._next_run_due <= now:
            self._next_run_due = None
        taken = self._due.take(now)
        executors = self._handover.due_executors() if self._handover is not None else []
        if self._handover is None or not executors:
            promoted = await promote_due(self._sessions, now)
            if promoted:
                self._on_due()
            return promoted
        groups: dict[str, list[str]] = {}
        going: dict[str, Executor] = {}
        for i, run_id in enumerate(taken):
            executor = going[run_id] = executors[i % len(executors)]
            groups.setdefault(executor.address, []).append(run_id)
        claimed, promoted = await promote_claimed(
            self._sessions,
            now,
            groups,
            until=now + timedelta(seconds=self._handover.claim_s),
            others_by=now - self._settings.handover_grace,
        )
        if claimed:
            self._handover.send_due([(taken[run_id], going[run_id]) for run_id in claimed])
        if promoted:
            self._on_due()
        return len(claimed) + promoted

    async def _ahead(self, now: datetime) -> int:
        """Record the fires of ALLOW schedules due in the next `ahead` before their time
        (records.py, `ahead`), in rounds of up to `batch` schedules; each fire's run waits
        SCHEDULED until due. The schedules are read again, locked (SKIP LOCKED) on servers,
        in each round's transaction, so a schedule changed or taken by another replica
        meanwhile is left alone, and their bases are built there: replicas split the
        building with the recording. Fires of other policies are recorded at their time
        (they decide on the state of earlier runs). After its first round, a tick's ahead
        rounds stop for a due second of this replica's (`AHEAD_YIELD_S` before it): its
        promotion and the fires due then go first; what is left is recorded by the next
        ticks (a round each while the due second is near), or at its time."""
        if self._settings.ahead <= timedelta(0):
            return 0
        until = now + min(self._settings.ahead, self._settings.lookahead)
        async with self._sessions() as session:
            rows = await due(session, until, WARM_LIMIT, after=now, lock=False)
        ready: list[str] = []
        for row in rows:
            base = self._bases.cached(row)
            if base is None or base.values is not None:  # not known to go the general way
                ready.append(row.id)
        recorded = 0
        for i, chunk in enumerate(chunks(ready, self._settings.batch)):
            if i and self._due_soon():
                break
            recorded += await self._ahead_round(list(chunk), self._clock(), until)
        return recorded

    def _due_soon(self) -> bool:
        """Whether a due second (a fire coming, or a run recorded ahead here) is less than
        `AHEAD_YIELD_S` away: the tick should end, for `_round` and `_promote`."""
        soonest = [at for at in (self._next_due, self._next_run_due) if at is not None]
        return bool(soonest) and (min(soonest) - self._clock()).total_seconds() < AHEAD_YIELD_S

    async def _ahead_round(self, ids: list[str], now: datetime, until: datetime) -> int:
        messages: list[OutboxMessage] = []
        quick: list[Quick] = []
        bases: list[Base] = []
        try:
            async with self._sessions() as session, session.begin():
                rows = await due(session, until, len(ids), after=now, ids=ids)
                built = await self._build(rows)
                for row in rows:
                    base = built.get(row.id)
                    if base is not None and base.values is not None:
                        nominal = aware(row.next_fire_at)
                        quick.append(self._records.quick(row, nominal, base, ahead=True))
                        bases.append(base)
                if not quick:
                    return 0
                await insert_quick(session, quick)
                messages.extend(m for q in quick for m in q.messages)
                await self._outbox.add_many(session, messages)
        except (IntegrityError, Moved):
            log.info("a schedule recorded ahead changed or fired meanwhile: left to its time")
            return 0
        self._outbox.committed(messages)
        for q, base in zip(quick, bases, strict=True):
            self._metrics.fires.labels("fired").inc()
            at = q.run["next_dispatch_at"]
            if self._next_run_due is None or at < self._next_run_due:
                self._next_run_due = at
            if self._handover is not None:
                self._due.add(at, execute_request(base, q.run["id"]))
        return len(quick)

    async def _warm(self, now: datetime) -> None:
        """Ahead of the fires due in the next `lookahead`: note the earliest (the loop wakes
        for it) and, when fires are not recorded ahead, parse their schedules, compute the
        time after, have the catalogue check their script and parameters and build the
        runs' common column values, so the round that records them finds all of it ready.
        (Recorded ahead, the ahead rounds build what they record, each replica what it
        claimed.) Each schedule once, as it enters the window; a failure here only means a
        colder round."""
        horizon = now + self._settings.lookahead
        start = max(self._warmed_until or now, now)
        if self._next_due is not None and self._next_due <= now:
            self._next_due = None
        if horizon <= start:
            return
        window = (
            (ScheduleRow.state == SS.SCHEDULE_STATE_ACTIVE)
            & (ScheduleRow.next_fire_at > start)
            & (ScheduleRow.next_fire_at <= horizon)
        )
        if self._settings.ahead > timedelta(0):
            async with self._sessions() as session:
                soonest = await session.scalar(
                    select(func.min(ScheduleRow.next_fire_at)).where(window)
                )
            self._warmed_until = horizon
            if soonest is not None:
                self._next_soon(aware(soonest))
            return
        query = select(*due_columns()).where(window).limit(WARM_LIMIT)
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        self._warmed_until = horizon
        await self._build(rows)
        for row in rows:
            self._next_soon(aware(row.next_fire_at))

    async def _build(self, rows: Sequence[Row[Any]]) -> dict[str, Base]:
        """The bases of `rows` (`due_columns`) by schedule id, those not cached built
        concurrently (a cold catalogue cache waits for one call per script); a schedule
        whose base cannot be built is left out (its fire goes the general way)."""
        bases: dict[str, Base] = {}
        cold: list[Row[Any]] = []
        for row in rows:
            base = self._bases.cached(row)
            if base is None:
                cold.append(row)
            else:
                bases[row.id] = base
        gate = asyncio.Semaphore(PREPARE_CONCURRENCY)

        async def one(row: Row[Any]) -> None:
            try:
                async with gate:
                    base = await self._bases.get(row)
                base.next_after(aware(row.next_fire_at))
                bases[row.id] = base
            except Exception as exc:
                log.debug("schedule %s: no base: %r", row.id, exc)

        await asyncio.gather(*(one(row) for row in cold))
        return bases

    def _next_soon(self, at: datetime) -> None:
        if self._next_due is None or at < self._next_due:
            self._next_due = at

    async def _round(self, now: datetime) -> int:
        """Record the next due nominal time of up to `batch` due schedules in one
        transaction. The schedules are locked (SKIP LOCKED: replicas take different ones)
        while their fires are prepared, which seldom leaves this process: the catalogue's
        answers are cached. A schedule whose fire cannot be prepared (the catalogue is
        unreachable) stays due and never holds up the others. If any fire was recorded
        meanwhile by another loop (SQLite has no row locks), the transaction fails on its
        key and the schedules are fired one by one."""
        messages: list[OutboxMessage] = []
        done: list[tuple[str, Prepared, int]] = []
        quick: list[Quick] = []
        try:
            async with self._sessions() as session, session.begin():
                rows = await due(session, now, self._settings.batch)
                if not rows:
                    return 0
                general: list[str] = []
                for row in rows:
                    try:
                        base = await self._bases.get(row)
                    except Unavailable as exc:
                        log.warning("schedule %s not fired yet: %s", row.id, exc.message)
                        continue
                    except Exception:
                        general.append(row.id)  # the general way logs why
                        continue
                    nominal = aware(row.next_fire_at)
                    if base.values is None or nominal < now - self._settings.grace:
                        general.append(row.id)
                    else:
                        quick.append(self._records.quick(row, nominal, base))
                if general:
                    done = await self._records.general(session, general, now, messages)
                if not done and not quick:
                    return 0
                await session.flush()
                if quick:
                    await insert_quick(session, quick)
                    messages.extend(m for q in quick for m in q.messages)
                await self._outbox.add_many(session, messages)
        except (IntegrityError, Moved):
            log.info("a schedule of this round changed or fired meanwhile: firing one by one")
            ids = [schedule_id for schedule_id, _, _ in done] + [q.schedule_id for q in quick]
            return sum([await self._step(schedule_id) for schedule_id in ids])
        await self._committed(done, messages, now)
        for q in quick:
            self._metrics.fires.labels("fired").inc()
            self._metrics.fire_lateness.observe((q.created_at - q.nominal).total_seconds())
            self._runs.submitted_id(q.run["id"], {}, relay=False)
        return len(done) + len(quick)

    async def _step(self, schedule_id: str) -> int:
        """Record one schedule's next due nominal time on its own; 1 if it was recorded."""
        now = self._clock()
        messages: list[OutboxMessage] = []
        try:
            async with self._sessions() as session:
                peek = await session.get(ScheduleRow, schedule_id)
            if peek is None or not _is_due(peek, now):
                return 0
            prepared = await self._records.prepare(peek, now)
            async with self._sessions() as session, session.begin():
                row = await claim(session, schedule_id)
                if row is None or not _is_due(row, now):
                    return 0
                if aware(row.next_fire_at) != prepared.nominal:  # type: ignore[arg-type]
                    return 0  # moved since the peek: the next round looks again
                outcome = await self._records.record(session, row, prepared, now, messages)
                await session.flush()
                await self._outbox.add_many(session, messages)
        except IntegrityError:
            log.info("fire of %s already recorded", schedule_id)
            await self._past_recorded(schedule_id, prepared)
            return 0
        except Unavailable as exc:
            log.warning("schedule %s not fired yet: %s", schedule_id, exc.message)
            return 0
        await self._committed([(schedule_id, prepared, outcome)], messages, now)
        return 1

    async def _past_recorded(self, schedule_id: str, prepared: Prepared) -> None:
        """A nominal time already has its fire record but the schedule still points at it
        (its fire was recorded ahead and the schedule was moved back onto it, e.g. resumed
        before a fire that should have been withdrawn): it has fired, so the schedule is
        moved past it rather than retry it, and fail on its key, every tick. A schedule
        already advanced (the usual case: another loop recorded it) is left alone."""
        nominal, following = prepared.nominal, prepared.following
        async with self._sessions() as session, session.begin():
            moved = await session.execute(
                update(ScheduleRow)
                .where(ScheduleRow.id == schedule_id, ScheduleRow.next_fire_at == nominal)
                .where(ScheduleRow.state == SS.SCHEDULE_STATE_ACTIVE)
                .where(
                    select(FireRow.nominal_at)
                    .where(FireRow.schedule_id == schedule_id, FireRow.nominal_at == nominal)
                    .exists()
                )
                .values(
                    next_fire_at=following,
                    updated_at=self._clock(),
                    state=SS.SCHEDULE_STATE_ACTIVE
                    if following is not None
                    else SS.SCHEDULE_STATE_COMPLETED,
                )
            )
        if getattr(moved, "rowcount", 0):
            log.warning(
                "schedule %s pointed at %s, which already has its fire: moved past it",
                schedule_id,
                iso(nominal),
            )

    async def _committed(
        self,
        done: list[tuple[str, Prepared, int]],
        messages: list[OutboxMessage],
        now: datetime,
    ) -> None:
        """After the commit that recorded `done`: relay its events, count the fires, and
        cancel what REPLACE fires replace."""
        self._outbox.committed(messages)
        for schedule_id, ready, outcome in done:
            self._after_commit(schedule_id, ready, outcome, now)
        for _, ready, _ in done:
            await self._replace(ready.replaced)

    def _after_commit(
        self, schedule_id: str, prepared: Prepared, outcome: int, now: datetime
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


def _is_due(row: ScheduleRow, now: datetime) -> bool:
    return (
        row.state == SS.SCHEDULE_STATE_ACTIVE
        and row.next_fire_at is not None
        and aware(row.next_fire_at) <= now
    )
