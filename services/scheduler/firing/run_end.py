"""Run-end handling of scheduled runs, inside the transaction that ends them: release the
oldest queued fire of a QUEUE schedule, and count failures for the schedule's failure
action (continue, pause, notify, disable after N consecutive failures)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler.firing.bases import Bases, due_columns
from services.scheduler.firing.events import FireMessages
from services.scheduler.firing.planning import FAILED_STATES, HELD_UNTIL, aware, held, iso
from services.scheduler.firing.records import SCHEDULES, active_runs, withdraw_staged
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import FireRow, RunRow, ScheduleRow
from services.scheduler.run_listeners import EndWrites
from services.scheduler.runs import Runs
from services.scheduler.schedules import definition
from shared.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)
RS = common_pb2.RunState
SS = pb.ScheduleState
FO = pb.FireOutcome
SE = events_pb2.ScheduleEventType


class RunEnd:
    """The run-end hooks of scheduled runs (Runs.on_terminal_many) and the clean-up of a
    deleted schedule's held runs."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runs: Runs,
        bases: Bases,
        messages: FireMessages,
        metrics: SchedulerMetrics,
        clock: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._runs = runs
        self._bases = bases
        self._messages = messages
        self._metrics = metrics
        self._clock = clock

    async def schedule_deleted(self, schedule_id: str) -> None:
        """Cancel the held runs of a deleted schedule's queued fires: nothing would release
        them any more."""
        async with self._sessions() as session:
            held_ids = (
                await session.scalars(
                    select(RunRow.id).where(
                        RunRow.schedule_id == schedule_id,
                        RunRow.state == RS.RUN_STATE_PENDING,
                        RunRow.next_dispatch_at >= HELD_UNTIL,
                    )
                )
            ).all()
        for run_id in held_ids:
            with contextlib.suppress(FailedPrecondition, NotFound):
                await self._runs.cancel_pending(run_id)

    def plan(self, conn: Connection, runs: Sequence[RunRow]) -> EndWrites | None:
        """`runs_ended` on a Core transaction's connection (an applied batch of events,
        run_store.py), in the case most scheduled runs end in: no run goes the general way
        (`_general`), so all that can change is each schedule's failure count, reset: the
        writes returned. None, having written nothing, in every other case: the batch goes
        through the ORM and `runs_ended` decides. The schedules are locked as `runs_ended`
        locks them, so a fire round of theirs waits for this transaction."""
        scheduled = [run for run in runs if run.schedule_id is not None]
        if any(run.state != RS.RUN_STATE_SUCCEEDED or held(run) for run in scheduled):
            return None  # the general way, known without a read
        ids = _schedule_ids(scheduled)
        if not ids:
            return _write_nothing
        rows = {row.id: row for row in conn.execute(_locked_schedules(ids)).all()}
        holding = set(conn.execute(_holding(ids)).scalars().all())
        if self._general(scheduled, rows, holding):
            return None
        reset = _to_reset(ids, rows, set())
        if not reset:
            return _write_nothing

        def write(conn: Connection) -> None:
            conn.execute(_reset(reset))

        return write

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
        ids = _schedule_ids(scheduled)
        rows = {row.id: row for row in (await session.execute(_locked_schedules(ids))).all()}
        holding = set((await session.scalars(_holding(ids))).all())
        general = self._general(scheduled, rows, holding)
        reset = _to_reset(ids, rows, general)
        if reset:
            await session.execute(_reset(reset))
        for run in scheduled:
            if run.schedule_id in general:
                await self.run_ended(session, run)

    def _general(
        self, scheduled: Sequence[RunRow], rows: Mapping[str, Any], holding: set[str]
    ) -> set[str]:
        """The schedules (of `rows`, locked) whose ended runs go the general way (run_ended):
        those holding a run (`holding`), those that queue fires, those of a run that did not
        succeed or was a held run."""
        general = set(holding)
        for run in scheduled:
            row = rows.get(run.schedule_id or "")
            if row is None:
                continue
            try:
                queues = self._bases.schedule_of(row).concurrency == pb.CONCURRENCY_POLICY_QUEUE
            except Exception:
                queues = True  # unreadable here: the general way decides
            if queues or run.state != RS.RUN_STATE_SUCCEEDED or held(run):
                general.add(row.id)
        return general

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
            await self._messages.stage(
                session,
                SE.SCHEDULE_EVENT_TYPE_FIRE_SKIPPED,
                row,
                key=iso(aware(own.nominal_at)),
                nominal=aware(own.nominal_at),
                run_id=ended.id,
                reason=own.reason,
            )
            await session.flush()
        if [r for r in await active_runs(session, row.id) if r != ended.id]:
            return
        queued = await session.scalar(
            select(FireRow)
            .where(FireRow.schedule_id == row.id, FireRow.outcome == FO.FIRE_OUTCOME_QUEUED)
            .order_by(FireRow.nominal_at)
            .limit(1)
        )
        if queued is None or queued.run_id is None:
            return
        waiting = await session.get(RunRow, queued.run_id, with_for_update=True)
        if waiting is None or waiting.state != RS.RUN_STATE_PENDING:
            return
        waiting.next_dispatch_at = waiting.updated_at = self._clock()
        queued.outcome = FO.FIRE_OUTCOME_FIRED
        queued.reason = f"released when run {ended.id} ended"
        nominal = aware(queued.nominal_at)
        await self._messages.stage(
            session,
            SE.SCHEDULE_EVENT_TYPE_FIRED,
            row,
            key=iso(nominal),
            nominal=nominal,
            run_id=waiting.id,
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
            await self._messages.stage(
                session, kind, row, key=f"failing:{run.id}", run_id=run.id, reason=reason
            )
            return
        row.next_fire_at, row.updated_at = None, self._clock()
        row.pause_reason = f"{name}d by its failure action: {reason}"
        # As PauseSchedule does: its fires recorded ahead and not yet due are withdrawn.
        await withdraw_staged(
            session,
            self._runs,
            row.id,
            f"the schedule was {name}d by its failure action",
            row.updated_at,
        )
        await self._messages.stage(
            session, kind, row, key=f"failure:{run.id}", run_id=run.id, reason=row.pause_reason
        )


def _schedule_ids(runs: Sequence[RunRow]) -> list[str]:
    return sorted({run.schedule_id for run in runs if run.schedule_id})


def _locked_schedules(ids: Sequence[str]) -> Any:
    """The schedules' due columns and failure counts, locked in id order."""
    return (
        select(*due_columns(), ScheduleRow.consecutive_failures)
        .where(ScheduleRow.id.in_(ids))
        .order_by(ScheduleRow.id)
        .with_for_update()
    )


def _holding(ids: Sequence[str]) -> Any:
    """Which of these schedules hold a queued fire's run."""
    return (
        select(RunRow.schedule_id)
        .where(RunRow.state == RS.RUN_STATE_PENDING)
        .where(RunRow.next_dispatch_at >= HELD_UNTIL)
        .where(RunRow.schedule_id.in_(ids))
        .distinct()
    )


def _to_reset(ids: Sequence[str], rows: Mapping[str, Any], general: set[str]) -> list[str]:
    """The schedules whose failure count a success resets (the others go the general way)."""
    return [
        sid for sid in ids if sid in rows and sid not in general and rows[sid].consecutive_failures
    ]


def _reset(ids: Sequence[str]) -> Any:
    return update(SCHEDULES).where(SCHEDULES.c.id.in_(ids)).values(consecutive_failures=0)


def _write_nothing(conn: Connection) -> None:
    """The planned writes when a run's end changes nothing of its schedule."""
