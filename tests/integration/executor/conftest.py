"""An executor on a real gRPC server with a real nats-server; helpers to
execute a script and collect its RunEvents from JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from google.protobuf import duration_pb2, struct_pb2

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from services.executor.config import ExecutorSettings
from services.executor.server import build
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.integration.helpers import settings_for

TERMINAL = {
    common_pb2.RUN_STATE_SUCCEEDED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_TIMED_OUT,
    common_pb2.RUN_STATE_CANCELLED,
}


class ExecutorHarness:
    """Drives one executor and reads back the events of its runs."""

    def __init__(
        self, running: Running, stub: executor_pb2_grpc.ExecutorServiceStub, js: Any
    ) -> None:
        self.running = running
        self.stub = stub
        self.js = js

    def request(
        self,
        script: str | bytes,
        *,
        kind: int = common_pb2.EXECUTION_TYPE_PYTHON,
        timeout_s: float = 30,
        memory: int = 0,
        params: dict[str, Any] | None = None,
        secrets: dict[str, str] | None = None,
        sha256: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> executor_pb2.ExecuteRequest:
        content = script.encode() if isinstance(script, str) else script
        parameters = struct_pb2.Struct()
        parameters.update(params or {})
        execution_config = struct_pb2.Struct()
        execution_config.update(config or {})
        limits = common_pb2.ResourceLimits(
            memory_bytes=memory, timeout=duration_pb2.Duration(seconds=int(timeout_s))
        )
        return executor_pb2.ExecuteRequest(
            run_id=uuid.uuid4().hex,
            attempt=1,
            script_name="t",
            script_version="1.0.0",
            sha256=sha256 if sha256 is not None else hashlib.sha256(content).hexdigest(),
            execution_type=kind,
            content=content,
            parameters=parameters,
            secret_parameters=secrets or {},
            limits=limits,
            config=execution_config,
        )

    async def events(self, run_id: str, wait_s: float = 60) -> list[events_pb2.RunEvent]:
        """Every event of the run up to and including FINISHED."""
        sub = await self.js.subscribe(f"runbox.events.run.{run_id}.>", ordered_consumer=True)
        seen: list[events_pb2.RunEvent] = []
        try:

            async def collect() -> None:
                while not seen or seen[-1].type != events_pb2.RUN_EVENT_TYPE_FINISHED:
                    msg = await sub.next_msg(timeout=wait_s)
                    seen.append(events_pb2.RunEvent.FromString(msg.data))

            await asyncio.wait_for(collect(), wait_s)
        finally:
            await sub.unsubscribe()
        return seen

    async def run(
        self, request: executor_pb2.ExecuteRequest
    ) -> tuple[events_pb2.RunEvent, list[events_pb2.RunEvent]]:
        await self.stub.Execute(request)
        events = await self.events(request.run_id)
        return events[-1], events


async def start_executor(
    tmp_path: Path, nats_url: str, tokens: Any, backend: str, **extra: Any
) -> Running:
    settings = settings_for(
        ExecutorSettings,
        tmp_path,
        "executor",
        nats_url=nats_url,
        principals_file=tokens.principals_file,
        # Local-backend tests run scripts unsandboxed on purpose (the operator's opt-in).
        sandbox={"backend": backend, "timeout_s": 30, "allow_unsandboxed": True},
        work_dir=str(tmp_path / "work"),
        **extra,
    )
    return await launch(build_runtime("executor", settings), build)


@contextlib.asynccontextmanager
async def open_harness(
    tmp_path: Path, nats_url: str, tokens: Any, backend: str, **extra: Any
) -> AsyncIterator[ExecutorHarness]:
    """An executor (extra: more of its settings) with a client and a JetStream reader."""
    running = await start_executor(tmp_path, nats_url, tokens, backend, **extra)
    try:
        nc = await nats.connect(nats_url)
        try:
            async with open_channel(running.address, token=tokens.service) as channel:
                yield ExecutorHarness(
                    running, executor_pb2_grpc.ExecutorServiceStub(channel), nc.jetstream()
                )
        finally:
            await nc.close()
    finally:
        await running.stop()


def harness_fixture(backend: str) -> Callable[..., Any]:
    @pytest.fixture
    async def fixture(tmp_path: Path, nats_server, tokens) -> AsyncIterator[ExecutorHarness]:  # type: ignore[no-untyped-def]
        async with open_harness(tmp_path, nats_server.url, tokens, backend) as harness:
            yield harness

    return fixture
