"""Waiting for a service process the e2e tests started to serve."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def wait_serving(
    address: str, proc: asyncio.subprocess.Process, log: Path, name: str
) -> None:
    """Poll the gRPC health service until SERVING (bounded); fail with the log's tail if the
    process exits or never gets there."""
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            if proc.returncode is not None:
                break
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.2)
    tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-3000:]
    raise AssertionError(f"{name} did not start serving; log tail:\n{tail}")
