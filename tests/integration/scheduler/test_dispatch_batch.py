"""Due runs handed over in bulk: a dispatch round sends its runs to an executor in one
ExecuteBatch, and falls back to Execute per run when the executor predates ExecuteBatch
(0.2.0 answers UNIMPLEMENTED), through a real scheduler, catalogue and executor with a
counting proxy in front of the executor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from shared.clients import open_channel
from tests.integration.scheduler.test_runs import submit_request, wait_terminal
from tests.integration.stack import RunPath, start_run_path

RS = common_pb2


class Proxy(executor_pb2_grpc.ExecutorServiceServicer):
    """Forwards to the real executor and counts the calls; the first Execute waits until
    `gate` is set (the dispatch round that sent it waits too). With `batches` False it
    answers ExecuteBatch UNIMPLEMENTED, as an executor of 0.2.0 does."""

    def __init__(self, *, batches: bool) -> None:
        self.target: Any = None
        self._batches = batches
        self.gate = asyncio.Event()
        self.held = asyncio.Event()  # set while the first Execute waits at the gate
        self.executes: list[str] = []
        self.batch_calls: list[list[str]] = []

    async def Execute(self, request: executor_pb2.ExecuteRequest, context: Any) -> Any:
        self.executes.append(request.run_id)
        if len(self.executes) == 1:
            self.held.set()
            await self.gate.wait()
        return await self.target.Execute(request)

    async def ExecuteBatch(self, request: executor_pb2.ExecuteBatchRequest, context: Any) -> Any:
        self.batch_calls.append([run.run_id for run in request.runs])
        if not self._batches:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        return await self.target.ExecuteBatch(request)

    async def Cancel(self, request: executor_pb2.CancelRequest, context: Any) -> Any:
        return await self.target.Cancel(request)

    async def ListActiveRuns(self, request: Any, context: Any) -> Any:
        return await self.target.ListActiveRuns(request)


async def serve(servicer: executor_pb2_grpc.ExecutorServiceServicer) -> tuple[Any, int]:
    """A started gRPC server on loopback answering ExecutorService with `servicer`; its port."""
    server = grpc.aio.server()
    executor_pb2_grpc.add_ExecutorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _burst(path: RunPath, proxy: Proxy) -> list[str]:
    """One run that the proxy holds in its round, seven submitted meanwhile (taken together
    by the next round), then the gate opened; the ids of all eight."""
    stub = path.scheduler_stub()
    first = (await stub.SubmitRun(submit_request("quick"))).id
    await asyncio.wait_for(proxy.held.wait(), 30)
    rest = [(await stub.SubmitRun(submit_request("quick"))).id for _ in range(7)]
    proxy.gate.set()
    ids = [first, *rest]
    for run_id in ids:
        run = await wait_terminal(stub, run_id)
        assert run.state == RS.RUN_STATE_SUCCEEDED, run.exit
    return ids


@pytest.mark.parametrize("batches", [True, False], ids=["batch", "upgrade-from-0.2.0"])
async def test_round_hands_its_runs_over_in_one_batch_or_falls_back_to_execute(
    tmp_path: Path, nats_server: Any, tokens: Any, batches: bool
) -> None:
    """Seven runs due together go in one ExecuteBatch and succeed; an executor without
    ExecuteBatch gets them one Execute each, is asked for a batch once only, and runs
    every run exactly once."""
    proxy = Proxy(batches=batches)
    server, port = await serve(proxy)
    # Under a concurrency limit runs go through dispatch rounds (no direct hand-off).
    path = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        scheduler={"executors": [f"127.0.0.1:{port}"], "max_active_runs": 100},
    )
    assert path.executor is not None
    channel = open_channel(path.executor.address, token=tokens.service)
    proxy.target = executor_pb2_grpc.ExecutorServiceStub(channel)
    try:
        await path.publish("quick", "print('ok')\n")
        ids = await _burst(path, proxy)
        if batches:
            assert sorted(proxy.batch_calls[0]) == sorted(ids[1:])
            assert proxy.executes == ids[:1]
        else:
            assert len(proxy.batch_calls) == 1
            assert sorted(proxy.executes) == sorted(ids)
            proxy.gate.clear()
            proxy.held.clear()
            proxy.executes.clear()
            again = await _burst(path, proxy)
            assert len(proxy.batch_calls) == 1  # not asked again
            assert sorted(proxy.executes) == sorted(again)
    finally:
        await path.close()
        await server.stop(None)
        await channel.close(None)
