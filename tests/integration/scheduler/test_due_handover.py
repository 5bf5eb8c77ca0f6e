"""The due second of a fire recorded ahead: the promotion claims the run for the replica
that recorded it and its request, built when the fire was recorded, goes in an ExecuteBatch
at once (firing/due.py), no dispatch round in between. A withdrawn fire is never sent,
and a fire whose request the scheduler no longer holds (recorded before a restart) is
still handed over, by a round. A real scheduler and catalogue; the executor is a stub that
accepts every run and records what it was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler.batches import request_of
from tests.integration.scheduler.test_dispatch_batch import serve
from tests.integration.scheduler.test_firing import (
    FAST,
    RS,
    Db,
    _scheduled_run,
    _starting_in,
    run_state,
    until,
)
from tests.integration.scheduler.test_schedules import ScheduleTokens
from tests.integration.stack import RunPath, start_run_path


class Recorder(executor_pb2_grpc.ExecutorServiceServicer):
    """Accepts every run; keeps each request and the wall time it came, by call kind."""

    def __init__(self) -> None:
        self.executes: list[tuple[executor_pb2.ExecuteRequest, datetime]] = []
        self.batched: list[tuple[executor_pb2.ExecuteRequest, datetime]] = []

    def sent(self) -> list[str]:
        return [r.run_id for r, _ in self.executes + self.batched]

    @staticmethod
    def _accepted(run_id: str) -> executor_pb2.ExecuteResponse:
        return executor_pb2.ExecuteResponse(run_id=run_id, executor_id="stub", newly_accepted=True)

    async def Execute(self, request: executor_pb2.ExecuteRequest, context: Any) -> Any:
        self.executes.append((request, datetime.now(UTC)))
        return self._accepted(request.run_id)

    async def ExecuteBatch(self, request: executor_pb2.ExecuteBatchRequest, context: Any) -> Any:
        now = datetime.now(UTC)
        self.batched.extend((run, now) for run in request.runs)
        return executor_pb2.ExecuteBatchResponse(
            results=[
                executor_pb2.ExecuteResult(run_id=run.run_id, accepted=self._accepted(run.run_id))
                for run in request.runs
            ]
        )


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, int]]:
    servicer = Recorder()
    server, port = await serve(servicer)
    yield servicer, port
    await server.stop(None)


@pytest.fixture
async def path(
    tmp_path: Path, nats_server: Any, recorder: tuple[Recorder, int]
) -> AsyncIterator[RunPath]:
    # Rounds only when woken: a run sent at its due second was not sent by one.
    settings = {**FAST, "executors": [f"127.0.0.1:{recorder[1]}"], "dispatch_interval_s": 3600}
    stack = await start_run_path(
        tmp_path, nats_server.url, ScheduleTokens(tmp_path), with_executor=False, scheduler=settings
    )
    await stack.publish("nightly", "print('night')\n")
    yield stack
    await stack.close()


@pytest.fixture
async def db(path: RunPath) -> AsyncIterator[Db]:
    database = Db(f"sqlite+aiosqlite:///{path.tmp / 'scheduler.db'}")
    yield database
    await database.engine.dispose()


async def test_a_fire_recorded_ahead_is_sent_at_its_due_time_as_a_round_would_send_it(
    path: RunPath, db: Db, recorder: tuple[Recorder, int]
) -> None:
    """The run of a fire recorded ahead reaches the executor in an ExecuteBatch, not before
    its due time, with the request a dispatch round builds from its row, and is QUEUED on
    that executor."""
    stub_executor, _ = recorder
    created = await path.scheduler_stub().CreateSchedule(_starting_in(4))
    nominal = created.next_fire_time.ToDatetime(UTC)
    run = await _scheduled_run(db, created.id)
    await until(lambda: run_state(db, run.id, RS.RUN_STATE_QUEUED))
    assert stub_executor.executes == []
    [(request, received)] = stub_executor.batched
    assert received >= nominal
    stored = (await db.runs(created.id))[0]
    # The trace context is the dispatch span's, as a round's would be.
    assert request == request_of(stored, {}, dict(request.trace_context))
    assert (stored.executor_id, stored.executor_address) == (
        "stub",
        f"127.0.0.1:{recorder[1]}",
    )


async def test_a_withdrawn_fire_is_never_sent(
    path: RunPath, db: Db, recorder: tuple[Recorder, int]
) -> None:
    """A fire recorded ahead and withdrawn (the schedule paused) is not sent when its due
    time passes, although its request was built when it was recorded."""
    stub_executor, _ = recorder
    created = await path.scheduler_stub().CreateSchedule(_starting_in(3))
    nominal = created.next_fire_time.ToDatetime(UTC)
    run = await _scheduled_run(db, created.id)
    await path.scheduler_stub().PauseSchedule(pb.PauseScheduleRequest(id=created.id))
    await asyncio.sleep(max(0.0, (nominal - datetime.now(UTC)).total_seconds()) + 3)
    assert run.id not in stub_executor.sent()
    assert await run_state(db, run.id, RS.RUN_STATE_CANCELLED)


async def test_a_fire_recorded_before_a_restart_is_still_handed_over_once(
    path: RunPath, db: Db, recorder: tuple[Recorder, int]
) -> None:
    """The scheduler that recorded a fire ahead restarts before its due time (its request
    was in memory only): the run still becomes PENDING and goes to the executor, once."""
    stub_executor, _ = recorder
    created = await path.scheduler_stub().CreateSchedule(_starting_in(5))
    run = await _scheduled_run(db, created.id)
    await path.restart_scheduler()
    await until(lambda: run_state(db, run.id, RS.RUN_STATE_QUEUED))
    await asyncio.sleep(1.0)
    assert stub_executor.sent() == [run.id]
