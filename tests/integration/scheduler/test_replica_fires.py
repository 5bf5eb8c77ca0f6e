"""Two scheduler replicas on one PostgreSQL database fire thousands of nominal times: every
(schedule, nominal time) is one FIRED fire row and one run, none missed, none twice, both
replicas take part, and the survivor carries on alone when one replica stops half-way.

No executor: the runs stay PENDING. Running them (50 script processes a second) would
measure the executor on this machine, not firing. The replicas' dispatchers still run and
find no executor, as when every executor is down or busy: fires must still be recorded on
time while the PENDING backlog grows.

The test prints its figures (lateness, CPU of the test process, which holds both replicas
and the catalogue) for the record; it asserts none of them."""

from __future__ import annotations

import asyncio
import collections
import math
import os
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from runbox.scheduler.v1 import scheduler_pb2_grpc
from services.scheduler.firing import run_key
from services.scheduler.models import FireRow, RunRow, ScheduleRow
from shared.clients import open_channel
from shared.runtime import Running
from tests.integration.dialects import fresh_database
from tests.integration.stack import RunPath, start_run_path, start_scheduler

FO = pb.FireOutcome
SCHEDULES = 200
# Nominal times per schedule: one a second in [start, start + SECONDS): 2,200 in all (a
# margin of 200 for schedules whose creation outlasts the lead on a very busy machine).
SECONDS = 11
# Time to create the schedules before the first nominal time.
LEAD_S = 10
GRACE_S = 15.0
# A short firing tick (the brief allows it); the rest as deployed (dispatch every 1 s).
# Fires are recorded at most 2 s ahead (not the default 25 s): a window longer than half the
# run would have every fire recorded before replica B stops, and the survivor nothing to take
# over.
REPLICA: dict[str, Any] = {
    "fire_tick_s": 0.2,
    "misfire_grace_s": GRACE_S,
    "dispatch_interval_s": 1.0,
    "fire_ahead_s": 2.0,
}


def schedule_request(index: int, start: datetime) -> pb.CreateScheduleRequest:
    """Every second from `start` for SECONDS seconds: 6-field cron for even indexes, a 1 s
    interval (anchored at the start) for odd ones; ALLOW, so every nominal time is a run."""
    begin, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    begin.FromDatetime(start)
    end.FromDatetime(start + timedelta(seconds=SECONDS))
    trigger = (
        pb.Trigger(cron=pb.CronSpec(expression="* * * * * *"))
        if index % 2 == 0
        else pb.Trigger(interval=pb.IntervalSpec(every=duration_pb2.Duration(seconds=1)))
    )
    return pb.CreateScheduleRequest(
        schedule=pb.Schedule(
            name=f"every-second-{index}",
            script=common_pb2.ScriptRef(name="tick"),
            trigger=trigger,
            start_time=begin,
            end_time=end,
            concurrency=pb.CONCURRENCY_POLICY_ALLOW,
        )
    )


def fires_counted(registry: CollectorRegistry) -> collections.Counter[str]:
    """This replica's runbox_scheduler_fires_total per outcome."""
    counted: collections.Counter[str] = collections.Counter()
    for metric in registry.collect():
        if metric.name == "runbox_scheduler_fires":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counted[sample.labels["outcome"]] += int(sample.value)
    return counted


@dataclass
class Usage:
    """CPU seconds of this process and of the whole machine, and wall seconds, since start."""

    cpu: float
    machine: float
    wall: float

    @staticmethod
    def now() -> Usage:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            line = Path("/proc/stat").read_text().split("\n")[0].split()[1:9]
            ticks = [int(v) for v in line]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        except OSError:
            busy = 0.0
        return Usage(usage.ru_utime + usage.ru_stime, busy, time.monotonic())

    def since(self, start: Usage) -> Usage:
        return Usage(self.cpu - start.cpu, self.machine - start.machine, self.wall - start.wall)


async def completed(engine: AsyncEngine) -> int:
    """Schedules past their last nominal time (COMPLETED in the claim of that fire)."""
    query = (
        select(func.count())
        .select_from(ScheduleRow)
        .where(ScheduleRow.state == pb.SCHEDULE_STATE_COMPLETED)
    )
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def wait_completed(engine: AsyncEngine, timeout_s: float) -> None:
    """Poll until every schedule completed or the time is up (the assertions that follow
    then say what is missing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await completed(engine) == SCHEDULES or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.5)


def report(fires: list[Any], start: datetime, counts: Mapping[str, int], usage: Usage) -> None:
    """Print lateness (claim time minus nominal time) and CPU, for the record."""
    late = [(f.recorded_at - f.nominal_at).total_seconds() for f in fires] or [0.0]
    worst: dict[int, float] = {}
    for fire, seconds in zip(fires, late, strict=False):
        bucket = int((fire.nominal_at - start).total_seconds()) // 10 * 10
        worst[bucket] = max(worst.get(bucket, 0.0), seconds)
    outcomes = collections.Counter(FO.Name(f.outcome).removeprefix("FIRE_OUTCOME_") for f in fires)
    print(
        f"\nreplica fires: {len(fires)} fire rows {dict(outcomes)}; fired by "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; lateness mean {sum(late) / len(late):.2f}s max {max(late):.2f}s (worst per 10 s"
        " of nominal time: "
        + ", ".join(f"+{k}s {v:.1f}s" for k, v in sorted(worst.items()))
        + f"); firing {usage.wall:.1f}s wall, test process (2 replicas + catalogue) "
        f"{usage.cpu:.1f}s CPU = {usage.cpu / usage.wall:.0%} of a core, machine "
        f"{usage.machine / usage.wall:.0%} of a core busy"
    )


def assert_each_nominal_time_once(
    fires: list[Any], runs: list[Any], expected: set[tuple[str, datetime]]
) -> None:
    """One FIRED fire row per expected nominal time and nothing else; one run per fire,
    keyed schedule:<id>:<nominal time>."""
    recorded = {(f.schedule_id, f.nominal_at) for f in fires}
    missing = expected - recorded
    origin = min(at for _, at in expected)
    by_second = collections.Counter(int((at - origin).total_seconds()) for _, at in missing)
    assert not missing, (
        f"{len(missing)} nominal times without a fire row, (seconds after the first: "
        f"schedules) {sorted(by_second.items())}"
    )
    assert recorded == expected and len(fires) == len(expected)
    not_fired = [f for f in fires if f.outcome != FO.FIRE_OUTCOME_FIRED]
    assert not not_fired, (
        f"{len(not_fired)} fires not FIRED, e.g. {FO.Name(not_fired[0].outcome)}: "
        f"{not_fired[0].reason}"
    )
    by_id = {r.id: r for r in runs}
    assert len(by_id) == len(runs) == len(fires)
    assert len({r.idempotency_key for r in runs}) == len(runs)
    for fire in fires:
        run = by_id[fire.run_id]
        assert run.schedule_id == fire.schedule_id
        assert run.idempotency_key == run_key(fire.schedule_id, fire.nominal_at)


async def fires_and_runs(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    """Every fire row, and every run's id, schedule and idempotency key."""
    async with engine.connect() as conn:
        fires = (await conn.execute(select(FireRow))).all()
        query = select(RunRow.id, RunRow.schedule_id, RunRow.idempotency_key)
        runs = (await conn.execute(query)).all()
    return list(fires), list(runs)


async def start_replica_b(path: RunPath, url: str) -> Running:
    return await start_scheduler(
        path.tmp,
        path.nats_url,
        path.tokens,
        path.catalogue,
        None,
        **REPLICA,
        database={"url": url},
        instance_id="scheduler-b",
    )


async def create_schedules(
    path: RunPath, replica_b: Running
) -> tuple[datetime, dict[str, datetime]]:
    """The schedules, created at once through both replicas: the start of their window, and
    each one's first nominal time (the start, unless creating it took longer than LEAD_S:
    times before a schedule exists are not its fires)."""
    stubs = [path.scheduler_stub()]
    channel = open_channel(replica_b.address, token=path.tokens.admin)
    path.channels.append(channel)
    stubs.append(scheduler_pb2_grpc.SchedulerServiceStub(channel))
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=LEAD_S)
    created = await asyncio.gather(  # type: ignore[call-overload]
        *(stubs[i % 2].CreateSchedule(schedule_request(i, start)) for i in range(SCHEDULES))
    )
    return start, {s.id: s.next_fire_time.ToDatetime(UTC) for s in created}


async def stop_at(replica: Running, at: datetime) -> None:
    await asyncio.sleep(max((at - datetime.now(UTC)).total_seconds(), 0))
    await replica.stop()  # graceful: its firing loop finishes the fire in flight


@pytest.mark.timeout(240)
async def test_two_replicas_fire_each_nominal_time_once_when_one_stops_half_way(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """2,200 nominal times (200 schedules firing every second for 11 s) on two PostgreSQL
    replicas, one stopped half-way: each is exactly one FIRED fire row and one run, nothing
    MISSED or SKIPPED, and the replicas' fire counters (both non-zero) add up to the total."""
    async with fresh_database("postgres", tmp_path, "replica_fires") as url:
        path = await start_run_path(
            tmp_path,
            nats_server.url,
            tokens,
            with_executor=False,
            scheduler={**REPLICA, "database": {"url": url}, "instance_id": "scheduler-a"},
        )
        engine = create_async_engine(url, poolclass=NullPool)
        replica_b: Running | None = None
        try:
            replica_b = await start_replica_b(path, url)
            await path.publish("tick", "print('tick')\n")
            creating = time.monotonic()
            start, first = await create_schedules(path, replica_b)
            print(f"\ncreating {SCHEDULES} schedules took {time.monotonic() - creating:.1f}s")
            end = start + timedelta(seconds=SECONDS)
            expected = {
                (schedule_id, at + timedelta(seconds=s))
                for schedule_id, at in first.items()
                for s in range(int((end - at).total_seconds()))
            }
            late = {
                i: f"+{(at - start).total_seconds():.0f}s" for i, at in first.items() if at != start
            }
            assert len(expected) >= 2_000, f"creating the schedules outlasted the lead: {late}"
            await asyncio.sleep(max((start - datetime.now(UTC)).total_seconds(), 0))
            before = Usage.now()

            await stop_at(replica_b, start + timedelta(seconds=SECONDS // 2))
            b_counted = fires_counted(replica_b.runtime.registry)
            a_at_stop = fires_counted(path.scheduler.runtime.registry)["fired"]
            replica_b = None
            # A nominal time claimed later than its grace would be MISSED: wait past that.
            last = start + timedelta(seconds=SECONDS - 1)
            await wait_completed(
                engine, math.ceil((last - datetime.now(UTC)).total_seconds() + GRACE_S + 30)
            )
            usage = Usage.now().since(before)

            fires, runs = await fires_and_runs(engine)
            a_counted = fires_counted(path.scheduler.runtime.registry)
            counts = {"scheduler-a": a_counted["fired"], "scheduler-b": b_counted["fired"]}
            report(fires, start, counts, usage)

            assert_each_nominal_time_once(fires, runs, expected)
            # Both took part, the survivor went on alone, and each fire was counted once, by
            # the replica whose transaction recorded it.
            assert b_counted["fired"] > 0 and 0 < a_at_stop < a_counted["fired"]
            assert a_counted["fired"] + b_counted["fired"] == len(expected)
            assert set(a_counted) | set(b_counted) == {"fired"}
        finally:
            if replica_b is not None:
                await replica_b.stop()
            await engine.dispose()
            await path.close()
