"""ExecutorService: proto <-> domain translation only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf import timestamp_pb2

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from services.executor.batch import execute_batch
from services.executor.events import timestamp
from services.executor.link import Links
from services.executor.pool import WarmPool
from services.executor.runs import RunManager

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    return timestamp(value)


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(
        self,
        runs: RunManager,
        backend: str,
        pool: WarmPool | None = None,
        links: Links | None = None,
    ) -> None:
        self._runs = runs
        self._links = links
        self._backend = backend
        self._pool = pool

    async def Execute(
        self, request: executor_pb2.ExecuteRequest, context: Ctx
    ) -> executor_pb2.ExecuteResponse:
        accepted_at, new = await self._runs.accept(request)
        return executor_pb2.ExecuteResponse(
            run_id=request.run_id,
            executor_id=self._runs.executor_id,
            newly_accepted=new,
            accepted_at=_ts(accepted_at),
        )

    async def Link(
        self, requests: AsyncIterator[executor_pb2.LinkRequest], context: Ctx
    ) -> AsyncIterator[executor_pb2.LinkResponse]:
        if self._links is None:
            raise NotImplementedError("no run links on this executor")
        async for response in self._links.serve(
            requests, self._runs.accept, self._runs.executor_id
        ):
            yield response

    async def ExecuteBatch(
        self, request: executor_pb2.ExecuteBatchRequest, context: Ctx
    ) -> executor_pb2.ExecuteBatchResponse:
        return await execute_batch(self._runs.accept, self._runs.executor_id, request)

    async def Cancel(
        self, request: executor_pb2.CancelRequest, context: Ctx
    ) -> executor_pb2.CancelResponse:
        cancelled = await self._runs.cancel(request.run_id)
        return executor_pb2.CancelResponse(run_id=request.run_id, cancelled=cancelled)

    async def ListActiveRuns(
        self, request: executor_pb2.ListActiveRunsRequest, context: Ctx
    ) -> executor_pb2.ListActiveRunsResponse:
        return executor_pb2.ListActiveRunsResponse(
            executor_id=self._runs.executor_id,
            runs=[
                executor_pb2.ActiveRun(
                    run_id=r.request.run_id,
                    state=common_pb2.RunState.ValueType(r.state),  # type: ignore[arg-type]
                    since=_ts(r.accepted_at),
                )
                for r in self._runs.active()
            ],
        )

    async def GetPoolStatus(
        self, request: executor_pb2.GetPoolStatusRequest, context: Ctx
    ) -> executor_pb2.GetPoolStatusResponse:
        classes = [
            executor_pb2.PoolClass(
                image=c["class"].image,
                runtime=c["class"].proto_runtime,
                resource_class=c["class"].name,
                idle=c["idle"],
                busy=c["busy"],
                starting=c["starting"],
                min_size=c["min"],
                max_size=c["max"],
            )
            for c in (self._pool.status() if self._pool is not None else [])
        ]
        return executor_pb2.GetPoolStatusResponse(
            executor_id=self._runs.executor_id,
            backend=self._backend,
            capacity=self._runs.capacity,
            active_runs=len(self._runs.active()),
            classes=classes,
        )
