"""Dispatch with several scheduler replicas and several executors: a run is handed to one
executor only, whatever the replicas race on; a run handed over without an answer stays with
that executor until a lease has passed."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2_grpc
from services.scheduler.models import RunRow
from shared.clients import open_channel
from tests.integration.dialects import fresh_database
from tests.integration.scheduler.test_runs import submit_request, wait_terminal
from tests.integration.stack import start_executor, start_run_path, start_scheduler

RS = common_pb2
STARTED = events_pb2.RUN_EVENT_TYPE_STARTED


async def test_two_replicas_two_executors_each_run_starts_once(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """Two schedulers on one PostgreSQL database (replicas are for a server database; SQLite
    runs one) dispatch 60 runs submitted to both over two executors: every run succeeds and
    started exactly once, on one executor."""
    async with fresh_database("postgres", tmp_path, "replicas") as url:
        path = await start_run_path(
            tmp_path, nats_server.url, tokens, scheduler={"database": {"url": url}}
        )
        second_executor = await start_executor(
            tmp_path, nats_server.url, tokens, path.catalogue, name="executor2"
        )
        executors = [path.executor.address, second_executor.address]  # type: ignore[union-attr]
        replica = None
        nc = await nats.connect(nats_server.url)
        started: dict[str, list[str]] = {}

        async def on_event(msg: Any) -> None:
            event = events_pb2.RunEvent.FromString(msg.data)
            if event.type == STARTED:
                started.setdefault(event.run_id, []).append(event.executor_id)

        try:
            await path.restart_scheduler_with(executors=executors, dispatch_interval_s=0.05)
            replica = await start_scheduler(
                tmp_path,
                nats_server.url,
                tokens,
                path.catalogue,
                None,
                database={"url": url},
                executors=executors,
                dispatch_interval_s=0.05,
            )
            await nc.jetstream().subscribe(
                "runbox.events.run.>", cb=on_event, ordered_consumer=True
            )
            await path.publish("quick", "print('ok')\n")
            stubs = [path.scheduler_stub()]
            channel = open_channel(replica.address, token=tokens.admin)
            path.channels.append(channel)
            stubs.append(scheduler_pb2_grpc.SchedulerServiceStub(channel))
            ids = [(await stubs[i % 2].SubmitRun(submit_request("quick"))).id for i in range(60)]
            finals = [await wait_terminal(stubs[0], run_id, 120) for run_id in ids]
            assert {f.state for f in finals} == {RS.RUN_STATE_SUCCEEDED}
            for _ in range(100):
                if all(run_id in started for run_id in ids):
                    break
                await asyncio.sleep(0.05)
            assert {run_id: len(started.get(run_id, [])) for run_id in ids} == dict.fromkeys(ids, 1)
            assert {f.executor_id for f in finals} == {"executor-test", "executor2-test"}
        finally:
            await nc.close()
            if replica is not None:
                await replica.stop()
            await second_executor.stop()
            await path.close()


async def test_a_run_without_an_answer_stays_with_its_executor_until_a_lease_passed(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """Handed to an executor that never answered (down), the run goes to no other executor
    while that one may still report it; after a lease it goes to the live one."""
    path = await start_run_path(tmp_path, nats_server.url, tokens)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'scheduler.db'}")
    try:
        assert path.executor is not None
        dead = "127.0.0.1:9"  # nothing listens: no answer
        await path.restart_scheduler_with(executors=[dead], dispatch_interval_s=0.05)
        await path.publish("quick", "print('ok')\n")
        stub = path.scheduler_stub()
        run = await stub.SubmitRun(submit_request("quick"))

        async def attempted() -> RunRow:
            while True:
                async with engine.connect() as conn:
                    row = (await conn.execute(select(RunRow).where(RunRow.id == run.id))).one()
                if row.dispatch_attempted_at is not None:
                    return row  # type: ignore[no-any-return]
                await asyncio.sleep(0.05)

        row = await asyncio.wait_for(attempted(), 30)
        assert row.executor_address == dead
        await path.restart_scheduler_with(
            executors=[path.executor.address, dead], lease_s=3, dispatch_interval_s=0.05
        )
        final = await wait_terminal(path.scheduler_stub(), run.id, 60)  # a new port
        assert final.state == RS.RUN_STATE_SUCCEEDED
        assert final.executor_id == "executor-test"
        attempted_at = row.dispatch_attempted_at
        assert final.queue_time.ToDatetime() >= attempted_at.replace(tzinfo=None) + timedelta(
            seconds=3
        )
    finally:
        await engine.dispose()
        await path.close()
