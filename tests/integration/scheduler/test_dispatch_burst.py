"""A burst of due runs handed over in large rounds: the runs waiting behind a held round
go in one round of a few ExecuteBatch calls (up to 250 runs each), each run sent exactly
once, oldest first; under a concurrency limit the runs beyond it wait PENDING. A real
scheduler and catalogue; the executor is a stub that accepts every run and never reports
(so the runs stay held by it)."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import pytest

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.batches import BATCH_SIZE
from tests.integration.scheduler.test_dispatch_batch import serve
from tests.integration.scheduler.test_runs import submit_request
from tests.integration.stack import start_run_path

RS = common_pb2
BURST = 2 * BATCH_SIZE + 20


class Acceptor(executor_pb2_grpc.ExecutorServiceServicer):
    """Accepts every run and records the calls; the first Execute waits until `gate` is
    set (the dispatch round that sent it waits too)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.held = asyncio.Event()
        self.executes: list[str] = []
        self.batch_calls: list[list[str]] = []
        self.expect = 0
        self.reached = asyncio.Event()  # set once `expect` runs were sent

    def _count(self) -> None:
        if len(self.sent()) >= self.expect:
            self.reached.set()

    def sent(self) -> list[str]:
        return self.executes + [run_id for call in self.batch_calls for run_id in call]

    @staticmethod
    def _accepted(run_id: str) -> executor_pb2.ExecuteResponse:
        return executor_pb2.ExecuteResponse(run_id=run_id, executor_id="stub", newly_accepted=True)

    async def Execute(self, request: executor_pb2.ExecuteRequest, context: Any) -> Any:
        self.executes.append(request.run_id)
        self._count()
        if len(self.executes) == 1:
            self.held.set()
            await self.gate.wait()
        return self._accepted(request.run_id)

    async def ExecuteBatch(self, request: executor_pb2.ExecuteBatchRequest, context: Any) -> Any:
        self.batch_calls.append([run.run_id for run in request.runs])
        self._count()
        return executor_pb2.ExecuteBatchResponse(
            results=[
                executor_pb2.ExecuteResult(run_id=run.run_id, accepted=self._accepted(run.run_id))
                for run in request.runs
            ]
        )


async def _held_burst(stub: Any, stub_executor: Acceptor) -> list[str]:
    """One run whose round the executor holds, BURST - 1 submitted meanwhile, then the gate
    opened; the ids of all, in submit order."""
    first = (await stub.SubmitRun(submit_request("quick"))).id
    await asyncio.wait_for(stub_executor.held.wait(), 30)
    rest = [(await stub.SubmitRun(submit_request("quick"))).id for _ in range(BURST - 1)]
    stub_executor.gate.set()
    return [first, *rest]


async def _settled(stub_executor: Acceptor, expected: int) -> None:
    """Until `expected` runs were sent, then a few more rounds' time for any extra."""
    await asyncio.wait_for(stub_executor.reached.wait(), 60)
    await asyncio.sleep(1.0)


@pytest.mark.parametrize("limit", [0, 200], ids=["no-limit", "limit-200"])
async def test_a_burst_goes_in_one_round_of_few_batches_each_run_once(
    tmp_path: Path, nats_server: Any, tokens: Any, limit: int
) -> None:
    """Without a limit the burst behind the held round goes in ceil(n / 250) ExecuteBatch
    calls and every run is sent once; with a limit of 200 only the 200 oldest are sent
    (once each), the others stay PENDING."""
    stub_executor = Acceptor()
    server, port = await serve(stub_executor)
    path = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        with_executor=False,
        # Under a concurrency limit runs go through dispatch rounds (no direct hand-off).
        scheduler={
            "executors": [f"127.0.0.1:{port}"],
            "max_active_runs": limit or 100_000,
            "dispatch_interval_s": 0.1,
        },
    )
    try:
        await path.publish("quick", "print('ok')\n")
        stub = path.scheduler_stub()
        stub_executor.expect = min(limit, BURST) if limit else BURST
        ids = await _held_burst(stub, stub_executor)
        expected = stub_executor.expect
        await _settled(stub_executor, expected)
        sent = stub_executor.sent()
        assert [n for n in collections.Counter(sent).values() if n > 1] == []
        assert sorted(sent) == sorted(ids[:expected])
        assert all(len(call) <= BATCH_SIZE for call in stub_executor.batch_calls)
        if not limit:
            assert len(stub_executor.batch_calls) == -(-(BURST - 1) // BATCH_SIZE)
        else:
            waiting = await stub.GetRun(scheduler_pb2.GetRunRequest(id=ids[-1]))
            assert waiting.state == RS.RUN_STATE_PENDING
        held = await stub.GetRun(scheduler_pb2.GetRunRequest(id=ids[expected - 1]))
        assert held.state == RS.RUN_STATE_QUEUED
    finally:
        await path.close()
        await server.stop(None)
