"""What the fires of a schedule share (firing/bases.py) and who builds it: two replicas on a
server database build each schedule's base once between them (the ahead round that claims
a schedule builds it; neither warms every schedule), and record each fire once; a catalogue
answer renewed with the same content keeps a base as built (no rebuild every
`catalogue_cache_ttl_s`), while a changed one (a new version published) is built anew and
its fires take it. Real schedulers, catalogue and NATS; no executor (runs stay PENDING)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import select

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler.firing import Firing
from services.scheduler.models import FireRow, RunRow
from shared.runtime import Running
from tests.integration.dialects import fresh_database
from tests.integration.scheduler.test_firing import (
    FAST,
    Db,
    _starting_in,
    aware,
    path,  # noqa: F401  (fixture)
    schedule,
    start_second_scheduler,
    until,
)
from tests.integration.stack import RunPath

FO = pb.FireOutcome
SCHEDULES = 24


def firing_of(running: Running) -> Firing:
    """A scheduler's firing loop (the object of its stop hook)."""
    for hook in [*running.bundle.on_shutdown, *running.runtime.on_shutdown]:
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, Firing):
            return owner
    raise AssertionError("the scheduler has no firing loop")


def built(firing: Firing) -> set[str]:
    """Schedule ids whose base (with run values: fires recorded in bulk) this loop built."""
    bases = firing._bases._bases
    return {key[0] for key, base in bases.items() if base.values is not None}


def once_at(index: int, at: datetime) -> pb.CreateScheduleRequest:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(at)
    return pb.CreateScheduleRequest(
        schedule=pb.Schedule(
            name=f"once-{index}",
            script=common_pb2.ScriptRef(name="nightly"),
            trigger=pb.Trigger(once=pb.OnceSpec(at=when)),
            concurrency=pb.CONCURRENCY_POLICY_ALLOW,
        )
    )


@pytest.mark.parametrize("dialect", ["postgres"])
async def test_two_replicas_build_each_base_once_and_record_each_fire_once(
    path: RunPath,  # noqa: F811
    tmp_path: Path,
    dialect: str,
) -> None:
    """Schedules due together, recorded ahead by two replicas in small rounds: each fire
    once, and each schedule's base built by one replica only (the one whose round claimed
    it), where both used to warm every schedule of the window."""
    replica = {
        **FAST,
        "fire_tick_s": 0.05,
        "fire_batch": 3,
        "fire_lookahead_s": 8.0,
        "fire_ahead_s": 6.0,
    }
    async with fresh_database(dialect, tmp_path, "scheduler_bases") as url:
        await path.scheduler.stop()
        first = await start_second_scheduler(path, replica, url)
        second = await start_second_scheduler(path, replica, url)
        path.scheduler = first
        database = Db(url)
        try:
            stub = path.scheduler_stub()
            # Far enough ahead that every schedule exists before the window reaches it.
            at = (datetime.now(UTC) + timedelta(seconds=12)).replace(microsecond=0)
            ids = [(await stub.CreateSchedule(once_at(i, at))).id for i in range(SCHEDULES)]

            async def recorded() -> list[FireRow]:
                async with database.sessions() as session:
                    fires = (
                        await session.scalars(select(FireRow).where(FireRow.schedule_id.in_(ids)))
                    ).all()
                return list(fires) if len(fires) >= SCHEDULES else []

            fires = await until(recorded, timeout_s=30)
            assert sorted(f.schedule_id for f in fires) == sorted(ids)
            assert {f.outcome for f in fires} == {FO.FIRE_OUTCOME_FIRED}
            assert all(aware(f.recorded_at) < at for f in fires), "recorded ahead"
            async with database.sessions() as session:
                runs = (
                    await session.scalars(select(RunRow).where(RunRow.schedule_id.in_(ids)))
                ).all()
            assert sorted(r.schedule_id or "" for r in runs) == sorted(ids)
            assert sorted(r.id for r in runs) == sorted(f.run_id or "" for f in fires)
            by_first, by_second = built(firing_of(first)), built(firing_of(second))
            assert not by_first & by_second, "a base built by both replicas"
            assert by_first | by_second == set(ids)
        finally:
            await second.stop()
            await database.engine.dispose()
            await path.scheduler.stop()
            path.scheduler = await start_second_scheduler(path, FAST)


async def test_a_renewed_catalogue_answer_keeps_the_base_and_a_new_version_rebuilds_it(
    path: RunPath,  # noqa: F811
) -> None:
    """The catalogue client answers anew every `catalogue_cache_ttl_s` (here 0.5 s): the
    base of a schedule firing every second stays the one built first while the answer says
    the same; publishing a version the schedule resolves to builds it again, and the fires
    after it run that version."""
    await path.scheduler.stop()
    path.scheduler = await start_second_scheduler(
        path, {**FAST, "catalogue_cache_ttl_s": 0.5, "fire_ahead_s": 2.0}
    )
    firing = firing_of(path.scheduler)
    stub = path.scheduler_stub()
    created = await stub.CreateSchedule(schedule(1.0))
    database = Db(f"sqlite+aiosqlite:///{path.tmp / 'scheduler.db'}")
    try:

        def base_values() -> dict[str, Any] | None:
            bases = firing._bases._bases
            found = [b.values for k, b in bases.items() if k[0] == created.id]
            return found[0] if found else None

        async def has_base() -> dict[str, Any] | None:
            return base_values()

        first = await until(has_base)
        started = datetime.now(UTC)

        async def fired_for_a_while() -> bool:
            """Fires recorded after several answers renewed (ttl 0.5 s)."""
            later = [
                f
                for f in await database.fires(created.id)
                if aware(f.recorded_at) > started + timedelta(seconds=2.5)
            ]
            return len(later) >= 2

        await until(fired_for_a_while)
        assert base_values() is first, "the base was built again for the same answer"
        assert first["script_version"] == "1.0.0"

        await path.publish("nightly", "print('night, v2')\n", version="2.0.0")

        async def rebuilt() -> bool:
            values = base_values()
            return values is not None and values["script_version"] == "2.0.0"

        await until(rebuilt)
        published = datetime.now(UTC)

        async def new_runs() -> bool:
            runs = await database.runs(created.id)
            return any(
                aware(r.created_at) > published and r.script_version == "2.0.0" for r in runs
            )

        await until(new_runs)
    finally:
        await stub.PauseSchedule(pb.PauseScheduleRequest(id=created.id))
        await database.engine.dispose()


async def test_the_warm_builds_nothing_and_the_ahead_rounds_yield_to_a_due_second(
    path: RunPath,  # noqa: F811
) -> None:
    """With fires recorded ahead, the lookahead's warm only notes the next fire (the ahead
    rounds build what they claim): it no longer builds every schedule of the window before
    the tick gets to a due second. And after its first round (here of one schedule), a
    tick's ahead rounds stop when a due second of this replica's is under a second away,
    leaving the rest to the next ticks. The loop is stopped and its steps called by hand,
    so the interleaving is the test's."""
    await path.scheduler.stop()
    path.scheduler = await start_second_scheduler(path, {**FAST, "fire_batch": 1})
    firing = firing_of(path.scheduler)
    await firing.stop()
    stub = path.scheduler_stub()
    created = [await stub.CreateSchedule(_starting_in(6)) for _ in range(2)]
    ids = {c.id for c in created}
    nominal = created[0].next_fire_time.ToDatetime(UTC)
    database = Db(f"sqlite+aiosqlite:///{path.tmp / 'scheduler.db'}")

    async def fires() -> list[FireRow]:
        return [f for c in created for f in await database.fires(c.id)]

    try:
        now = datetime.now(UTC)
        firing._warmed_until = None  # the window again, with the schedules in it
        await firing._warm(now)
        assert built(firing) == set(), "the warm built a base"
        assert firing._next_due is not None and firing._next_due <= nominal

        firing._next_run_due = datetime.now(UTC) + timedelta(seconds=0.5)
        assert await firing._ahead(datetime.now(UTC)) == 1  # its first round, then it yields
        [first] = await fires()
        assert first.outcome == FO.FIRE_OUTCOME_FIRED and first.schedule_id in ids

        firing._next_run_due = None  # the due second has passed
        assert await firing._ahead(datetime.now(UTC)) == 1
        assert sorted(f.schedule_id for f in await fires()) == sorted(ids)
        assert built(firing) == ids
    finally:
        await database.engine.dispose()
