"""Fires recorded ahead of their time against the changes that withdraw them, in the
interleavings that once left a stale fire behind (a 1 s schedule missing nominal times
after a pause and a resume): a bulk round that read a schedule just before another
scheduler on the same SQLite file paused it, and a failure action pausing a schedule.
The interleaving is made deterministic by pausing the schedule from inside the round,
between its read and its first write, as a scheduler on the same file could."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import update

from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler.firing import loop, run_key
from services.scheduler.models import FireRow, ScheduleRow
from tests.integration.scheduler.test_firing import (
    FO,
    HOURLY,
    RS,
    Db,
    _starting_in,
    assert_one_run_per_fire,
    aware,
    db,
    due_fires,
    finish,
    path,
    run_state,
    schedule,
    until,
)
from tests.integration.stack import RunPath

__all__ = ["db", "path"]  # the fixtures
FORBID = pb.CONCURRENCY_POLICY_FORBID


async def _pause_elsewhere(db: Db, schedule_id: str) -> None:
    """What another scheduler's PauseSchedule commits (nothing recorded ahead to withdraw)."""
    async with db.sessions() as session, session.begin():
        await session.execute(
            update(ScheduleRow)
            .where(ScheduleRow.id == schedule_id)
            .values(state=pb.SCHEDULE_STATE_PAUSED, next_fire_at=None, updated_at=datetime.now(UTC))
        )


async def test_a_round_that_read_a_schedule_before_it_was_paused_records_nothing(
    path: RunPath, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round of fires recorded ahead reads the schedule (SQLite: a plain read, no lock),
    another scheduler pauses it, then the round writes: its advance finds the schedule
    moved and nothing is recorded, so no fire of the paused schedule is left to run. On
    resume the same nominal time is recorded once and runs once."""
    created = await path.scheduler_stub().CreateSchedule(_starting_in(6))
    nominal = created.next_fire_time.ToDatetime(UTC)
    paused: list[str] = []
    after_pause = [0]
    real_due = loop.due

    async def due_then_paused(*args: Any, **kwargs: Any) -> Any:
        rows = await real_due(*args, **kwargs)
        if paused:
            after_pause[0] += 1  # a later read: the round that saw the pause has ended
        elif kwargs.get("ids") and any(row.id == created.id for row in rows):
            paused.append(created.id)
            await _pause_elsewhere(db, created.id)
        return rows

    monkeypatch.setattr(loop, "due", due_then_paused)

    async def round_ended() -> bool:
        return after_pause[0] >= 2

    await until(round_ended)
    assert await db.fires(created.id) == []
    assert await db.runs(created.id, withdrawn=True) == []
    row = await db.schedule(created.id)
    assert (row.state, row.next_fire_at) == (pb.SCHEDULE_STATE_PAUSED, None)

    monkeypatch.setattr(loop, "due", real_due)
    stub = path.scheduler_stub()
    resumed = await stub.ResumeSchedule(pb.ResumeScheduleRequest(id=created.id))
    assert resumed.next_fire_time.ToDatetime(UTC) == nominal
    runs = await until(lambda: _pending_runs(db, created.id))
    fires = await db.fires(created.id)
    assert [(aware(f.nominal_at), f.outcome) for f in fires] == [(nominal, FO.FIRE_OUTCOME_FIRED)]
    assert_one_run_per_fire(created.id, fires, runs)


async def _pending_runs(db: Db, schedule_id: str) -> list[Any]:
    runs = await db.runs(schedule_id, withdrawn=True)
    return runs if runs and all(r.state == RS.RUN_STATE_PENDING for r in runs) else []


async def test_a_failure_action_pause_withdraws_fires_recorded_ahead(path: RunPath, db: Db) -> None:
    """A 1 s schedule paused by its failure action: its fires recorded ahead and not yet due
    are withdrawn as PauseSchedule withdraws them (none of them runs), and after a resume
    it fires every second again, each nominal time once (the schedule does not stop on a
    leftover fire's key)."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(
        schedule(failure_action=pb.FAILURE_ACTION_PAUSE, failure_threshold=1)
    )

    async def first_pending() -> Any:
        for run in await db.runs(created.id):
            if run.state == RS.RUN_STATE_PENDING:
                return run
        return None

    first = await until(first_pending)
    await finish(path.nats_url, first.id, RS.RUN_STATE_FAILED)

    async def paused() -> ScheduleRow | None:
        row = await db.schedule(created.id)
        return row if row.state == pb.SCHEDULE_STATE_PAUSED else None

    row = await until(paused)
    at = aware(row.updated_at)
    withdrawn = [r for r in await db.runs(created.id, withdrawn=True) if r.idempotency_key is None]
    assert withdrawn, "fires were recorded ahead, so some were withdrawn"
    for run in withdrawn:
        assert run.state == RS.RUN_STATE_CANCELLED
        assert "failure action" in run.exit_message
    fires = await db.fires(created.id)
    assert all(aware(f.nominal_at) <= at for f in fires), "a fire after the pause was kept"
    assert_one_run_per_fire(created.id, fires, await db.runs(created.id))

    resumed = await stub.ResumeSchedule(pb.ResumeScheduleRequest(id=created.id))
    after = resumed.next_fire_time.ToDatetime(UTC)

    async def fired_after_resume() -> list[FireRow]:
        late = [f for f in await db.fires(created.id) if aware(f.nominal_at) >= after]
        due = [f for f in late if aware(f.nominal_at) <= datetime.now(UTC)]
        return late if len(due) >= 3 else []

    late = await until(fired_after_resume)
    assert {f.outcome for f in late} == {FO.FIRE_OUTCOME_FIRED}
    assert [aware(f.nominal_at) for f in late] == [
        after + timedelta(seconds=i) for i in range(len(late))
    ]
    await stub.PauseSchedule(pb.PauseScheduleRequest(id=created.id))  # no fire between reads
    assert_one_run_per_fire(created.id, await db.fires(created.id), await db.runs(created.id))
    assert await run_state(db, first.id, RS.RUN_STATE_FAILED)


@pytest.mark.parametrize("change", ["pause", "update"])
async def test_fires_withdrawn_by_a_change_are_fired_again_each_once(
    path: RunPath, db: Db, change: str
) -> None:
    """A 1 s schedule paused and resumed (or updated) while fires are recorded ahead: the
    withdrawn nominal times that come after the resume (update) are recorded again, each
    FIRED once with one run, every second, none missed (their FIRED events do not collide
    with the withdrawn fires' ones)."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(schedule())

    async def ahead() -> bool:
        runs = await db.runs(created.id)
        return await due_fires(db, created.id, 1) and any(
            r.state == RS.RUN_STATE_SCHEDULED for r in runs
        )

    await until(ahead)
    if change == "pause":
        await stub.PauseSchedule(pb.PauseScheduleRequest(id=created.id))
        changed = await stub.ResumeSchedule(pb.ResumeScheduleRequest(id=created.id))
    else:
        changed = await stub.UpdateSchedule(
            pb.UpdateScheduleRequest(
                schedule=pb.Schedule(id=created.id, priority=3),
                update_mask=field_mask_pb2.FieldMask(paths=["priority"]),
            )
        )
    after = changed.next_fire_time.ToDatetime(UTC)
    withdrawn = [r for r in await db.runs(created.id, withdrawn=True) if not r.idempotency_key]
    assert withdrawn and {r.state for r in withdrawn} == {RS.RUN_STATE_CANCELLED}

    async def fired_again() -> list[FireRow]:
        late = [f for f in await db.fires(created.id) if aware(f.nominal_at) >= after]
        due = [f for f in late if aware(f.nominal_at) <= datetime.now(UTC)]
        return late if len(due) >= 4 else []

    late = await until(fired_again)
    assert {f.outcome for f in late} == {FO.FIRE_OUTCOME_FIRED}
    assert [aware(f.nominal_at) for f in late] == [
        after + timedelta(seconds=i) for i in range(len(late))
    ]
    await stub.PauseSchedule(pb.PauseScheduleRequest(id=created.id))  # no fire between reads
    fires, runs = await db.fires(created.id), await db.runs(created.id)
    assert_one_run_per_fire(created.id, fires, runs)
    kept = [f for f in fires if aware(f.nominal_at) >= after]  # the due ones stay
    assert len(kept) >= 4
    again = {r.idempotency_key for r in runs} & {
        run_key(created.id, aware(f.nominal_at)) for f in kept
    }
    assert len(again) == len(kept)


async def test_a_schedule_pointing_at_a_recorded_fire_moves_past_it(path: RunPath, db: Db) -> None:
    """A schedule whose next fire already has its record (left by the races above in a
    database written before they were closed) is moved past it when due: the record stays
    the only one of that nominal time, and the schedule is not stuck failing on its key."""
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(
        schedule(HOURLY, start_time=_starting_in(2).schedule.start_time, concurrency=FORBID)
    )
    nominal = created.next_fire_time.ToDatetime(UTC)
    async with db.sessions() as session, session.begin():
        session.add(
            FireRow(
                schedule_id=created.id,
                nominal_at=nominal,
                outcome=FO.FIRE_OUTCOME_FIRED,
                run_id=None,
                reason="left behind",
                recorded_at=datetime.now(UTC),
            )
        )

    async def moved_on() -> bool:
        row = await db.schedule(created.id)
        return row.next_fire_at is not None and aware(row.next_fire_at) > nominal

    await until(moved_on)
    fires = await db.fires(created.id)
    assert [(aware(f.nominal_at), f.reason) for f in fires] == [(nominal, "left behind")]
    assert aware((await db.schedule(created.id)).next_fire_at) == nominal + timedelta(hours=1)
