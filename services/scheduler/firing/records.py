"""The materialisation path: a due nominal time of a schedule becomes its fire record
(primary key (schedule id, nominal time)), the run it creates (idempotency key
`schedule:<id>:<nominal>`, also unique), the schedule's advanced `next_fire_at` and the
events, all in the caller's transaction.

Two ways to write, one outcome: fires on time of ALLOW schedules whose run needs no
secrets (the common case) are inserted in bulk from their schedule's cached base
(`Quick`, a statement per table for the whole round); the others (misses, skips, other
concurrency policies) go the general way, one ORM row each. Both build their events
with the same FireMessages."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import triggers as tr
from services.scheduler.firing.bases import RUNS_ENCODED, Base, Bases, due_columns
from services.scheduler.firing.events import FireMessages
from services.scheduler.firing.planning import (
    ACTIVE_STATES,
    EXPIRED_COUNT_CAP,
    HELD_UNTIL,
    FiringSettings,
    Plan,
    Prepared,
    aware,
    catch_up_window,
    count_expired,
    fire_request,
    iso,
    jitter,
    plan,
    run_key,
)
from services.scheduler.models import FireRow, RunRow, ScheduleRow
from services.scheduler.runs import Runs
from shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from shared.outbox import OutboxMessage

log = logging.getLogger(__name__)
RS = common_pb2.RunState
SS = pb.ScheduleState
FO = pb.FireOutcome
# Fires of one round prepared at once (each may wait for the catalogue on a cache miss).
PREPARE_CONCURRENCY = 16
FIRES = cast(Table, FireRow.__table__)
SCHEDULES = cast(Table, ScheduleRow.__table__)


@dataclass
class Quick:
    """One fire inserted in bulk: its rows and events."""

    schedule_id: str
    nominal: datetime
    created_at: datetime
    run: dict[str, Any]
    fire: dict[str, Any]
    advance: dict[str, Any]
    messages: list[OutboxMessage]


class Moved(Exception):
    """A schedule of a bulk round changed (paused, updated, deleted, fired by another
    scheduler) after the round read it: nothing of the round was written."""


async def insert_quick(session: AsyncSession, quick: list[Quick]) -> None:
    """Advance the schedules of a round's bulk fires, then insert their runs and fire
    records, a statement each (several rows per statement). The advance comes first and
    is the claim: it matches only a schedule still ACTIVE, at the nominal time and at the
    version (`updated_at`) the round read. On servers the round read the schedules locked,
    so it always matches; on SQLite a read takes no lock and the transaction begins at its
    first write, so a scheduler on the same file may have paused, changed or fired a
    schedule in between: the advance, the first write, sees that, and raises Moved (the
    caller's transaction rolls back) rather than record a fire the schedule no longer
    has. Drivers that do not count the rows of a many-row UPDATE (asyncpg) are on servers."""
    result = await session.execute(
        update(SCHEDULES)
        .where(
            SCHEDULES.c.id == bindparam("b_id"),
            SCHEDULES.c.state == SS.SCHEDULE_STATE_ACTIVE,
            SCHEDULES.c.next_fire_at == bindparam("b_nominal"),
            SCHEDULES.c.updated_at == bindparam("b_updated"),
        )
        .values(
            next_fire_at=bindparam("n_next"),
            last_fire_at=bindparam("n_last"),
            updated_at=bindparam("n_updated"),
            state=bindparam("n_state"),
        ),
        [q.advance for q in quick],
    )
    dialect = session.get_bind().dialect
    matched = getattr(result, "rowcount", -1)
    if dialect.supports_sane_multi_rowcount and matched != len(quick):
        raise Moved(f"{len(quick) - matched} of {len(quick)} schedules changed since read")
    await session.execute(insert(RUNS_ENCODED), [q.run for q in quick])
    await session.execute(insert(FIRES), [q.fire for q in quick])


async def due(
    session: AsyncSession,
    now: datetime,
    limit: int,
    *,
    after: datetime | None = None,
    ids: Sequence[str] = (),
    lock: bool = True,
) -> Sequence[Row[Any]]:
    """Up to `limit` ACTIVE schedules whose next fire is due by `now` (and later than
    `after`; among `ids` when given), oldest fire first; locked (SKIP LOCKED: replicas take
    different ones) on servers."""
    query = (
        select(*due_columns())
        .where(ScheduleRow.state == SS.SCHEDULE_STATE_ACTIVE)
        .where(ScheduleRow.next_fire_at <= now)
        .order_by(ScheduleRow.next_fire_at)
        .limit(limit)
    )
    if after is not None:
        query = query.where(ScheduleRow.next_fire_at > after)
    if ids:
        query = query.where(ScheduleRow.id.in_(list(ids)))
    if lock and session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    return (await session.execute(query)).all()


async def withdraw(
    session: AsyncSession, schedule_id: str, why: str, now: datetime
) -> list[RunRow]:
    """In the caller's transaction (a schedule paused, changed or deleted): its fires
    recorded ahead whose nominal time is still to come are withdrawn, so a stale fire never runs:
    the run ends CANCELLED (its idempotency key freed) and the fire record is removed, so the
    nominal time can be fired again by what the schedule is now. The runs, for their
    events."""
    runs = list(
        (
            await session.scalars(
                select(RunRow)
                .join(FireRow, FireRow.run_id == RunRow.id)
                .where(FireRow.schedule_id == schedule_id, FireRow.nominal_at > now)
                .where(RunRow.state == RS.RUN_STATE_SCHEDULED)
                .with_for_update(of=RunRow)
            )
        ).all()
    )
    if not runs:
        return []
    for run in runs:
        run.state, run.failure_reason = RS.RUN_STATE_CANCELLED, common_pb2.FAILURE_REASON_CANCELLED
        run.exit_message = f"withdrawn before its time: {why}"
        run.finished_at = run.updated_at = now
        run.idempotency_key = None
    await session.execute(
        delete(FIRES).where(
            FIRES.c.schedule_id == schedule_id, FIRES.c.run_id.in_([r.id for r in runs])
        )
    )
    schedule = await session.get(ScheduleRow, schedule_id)
    if schedule is not None:  # its last fire is the last one that stays
        schedule.last_fire_at = await session.scalar(
            select(func.max(FireRow.nominal_at)).where(
                FireRow.schedule_id == schedule_id, FireRow.run_id.is_not(None)
            )
        )
    return runs


async def withdraw_staged(
    session: AsyncSession, runs: Runs, schedule_id: str, why: str, now: datetime
) -> None:
    """`withdraw`, and the withdrawn runs' CANCELLED (FINISHED) events staged."""
    for run in await withdraw(session, schedule_id, why, now):
        await runs.events.stage_event(session, run, events_pb2.RUN_EVENT_TYPE_FINISHED, "cancelled")


async def claim(session: AsyncSession, schedule_id: str) -> ScheduleRow | None:
    query = select(ScheduleRow).where(ScheduleRow.id == schedule_id)
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    return await session.scalar(query)


async def active_runs(session: AsyncSession, schedule_id: str) -> list[str]:
    """Ids of the schedule's runs that are pending, queued or running (held runs of QUEUE
    fires are not)."""
    query = (
        select(RunRow.id)
        .where(RunRow.schedule_id == schedule_id)
        .where(RunRow.state.in_(ACTIVE_STATES))
        .where(RunRow.next_dispatch_at.is_(None) | (RunRow.next_dispatch_at < HELD_UNTIL))
        .order_by(RunRow.created_at)
    )
    return list((await session.scalars(query)).all())


class Records:
    """Writes fires (see the module docstring)."""

    def __init__(
        self,
        runs: Runs,
        bases: Bases,
        messages: FireMessages,
        settings: FiringSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self._runs = runs
        self._bases = bases
        self._messages = messages
        self._settings = settings
        self._clock = clock

    def quick(self, row: Row[Any], nominal: datetime, base: Base, *, ahead: bool = False) -> Quick:
        """One fire on time of an ALLOW schedule: its run, fire record, the schedule's
        advance and the two events, from the schedule's base. `ahead`: recorded before its
        nominal time, the run SCHEDULED (made PENDING when due, see loop.py)."""
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
        if ahead:
            run["state"] = RS.RUN_STATE_SCHEDULED
        following = base.next_after(nominal)
        return Quick(
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
                "b_updated": row.updated_at,
                "n_next": following,
                "n_last": nominal,
                "n_updated": created,
                "n_state": SS.SCHEDULE_STATE_ACTIVE
                if following is not None
                else SS.SCHEDULE_STATE_COMPLETED,
            },
            messages=self._messages.fired(
                base.template,
                schedule_id=schedule_id,
                run_id=run_id,
                nominal=nominal,
                created=created,
                state=RS.RUN_STATE_SCHEDULED if ahead else 0,
            ),
        )

    async def general(
        self,
        session: AsyncSession,
        schedule_ids: list[str],
        now: datetime,
        messages: list[OutboxMessage],
    ) -> list[tuple[str, Prepared, int]]:
        """The general way: load the rows (already locked by this transaction), prepare
        and record each fire through the ORM; (schedule id, prepared, outcome) of each."""
        rows = (
            await session.scalars(
                select(ScheduleRow)
                .where(ScheduleRow.id.in_(schedule_ids))
                .order_by(ScheduleRow.next_fire_at)
            )
        ).all()
        prepared = await self.prepare_all(rows, now)
        done = []
        for row in rows:
            ready = prepared.get(row.id)
            if ready is None:
                continue
            outcome = await self.record(session, row, ready, now, messages)
            done.append((row.id, ready, outcome))
        return done

    async def prepare_all(self, rows: Sequence[ScheduleRow], now: datetime) -> dict[str, Prepared]:
        prepared: dict[str, Prepared] = {}
        gate = asyncio.Semaphore(PREPARE_CONCURRENCY)

        async def one(row: ScheduleRow) -> None:
            try:
                async with gate:
                    prepared[row.id] = await self.prepare(row, now)
            except Unavailable as exc:
                log.warning("schedule %s not fired yet: %s", row.id, exc.message)
            except Exception:
                log.exception("schedule %s not fired", row.id)

        await asyncio.gather(*(one(row) for row in rows))
        return prepared

    async def prepare(self, row: ScheduleRow, now: datetime) -> Prepared:
        """Plan the schedule's due nominal time and, for a fire, build its run (the
        catalogue checks script and parameters; a fire that no longer validates is
        recorded SKIPPED with the reason)."""
        schedule, spec = self._bases.parsed(row)
        nominal = aware(row.next_fire_at)  # type: ignore[arg-type]
        window = catch_up_window(schedule, self._settings.default_window)
        following = tr.next_fire(spec, nominal)
        decided = plan(
            nominal,
            following,
            now=now,
            grace=self._settings.grace,
            window=window,
            policy=schedule.catch_up,
        )
        prepared = Prepared(nominal, following, decided)
        if decided is Plan.EXPIRED:
            count, last, prepared.following = count_expired(spec, nominal, now - window)
            prepared.expired = (count, last)
        elif decided is Plan.FIRE:
            request = fire_request(schedule)
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

    async def record(
        self,
        session: AsyncSession,
        row: ScheduleRow,
        prepared: Prepared,
        now: datetime,
        messages: list[OutboxMessage],
    ) -> int:
        """Add the fire (and its run) to the session, advance the schedule, and append the
        events to `messages`, for the caller to flush and stage; the outcome."""
        nominal, run = prepared.nominal, None
        outcome, reason = self._missed(row, prepared, now)
        if outcome == FO.FIRE_OUTCOME_UNSPECIFIED:
            if prepared.run is None:
                outcome, reason = FO.FIRE_OUTCOME_SKIPPED, prepared.invalid
            else:
                outcome, run, reason = await self._concurrency(session, row, prepared)
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
            row.last_fire_at = nominal
        row.next_fire_at, row.updated_at = prepared.following, now
        if prepared.following is None:
            row.state = SS.SCHEDULE_STATE_COMPLETED
        messages.extend(self._messages.recorded(row, nominal, outcome, run, reason))
        return outcome

    def _missed(self, row: ScheduleRow, prepared: Prepared, now: datetime) -> tuple[int, str]:
        """MISSED and why, for a fire planned as missed or expired; else UNSPECIFIED."""
        nominal = prepared.nominal
        if prepared.expired is not None:
            count, last = prepared.expired
            more = "at least " if count >= EXPIRED_COUNT_CAP else ""
            return FO.FIRE_OUTCOME_MISSED, (
                f"{more}{count} fire(s) from {iso(nominal)} to {iso(last)} were missed and are "
                "older than the catch-up deadline"
            )
        if prepared.plan is Plan.MISS:
            schedule, _ = self._bases.parsed(row)
            late = (now - nominal).total_seconds()
            policy = pb.CatchUpPolicy.Name(schedule.catch_up).removeprefix("CATCH_UP_POLICY_")
            return FO.FIRE_OUTCOME_MISSED, (
                f"missed: reached {late:.1f}s after its time, past the grace (no scheduler was "
                f"running or able to fire it); catch-up policy {policy}"
            )
        return FO.FIRE_OUTCOME_UNSPECIFIED, ""

    async def _concurrency(
        self, session: AsyncSession, row: ScheduleRow, prepared: Prepared
    ) -> tuple[int, RunRow | None, str]:
        schedule, _ = self._bases.parsed(row)
        policy, run = schedule.concurrency, prepared.run
        assert run is not None
        if policy == pb.CONCURRENCY_POLICY_ALLOW:
            return FO.FIRE_OUTCOME_FIRED, run, ""
        active = await active_runs(session, row.id)
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
