"""What one RPC costs the server and the client through Runbox's gRPC stack.

A real grpc.aio server (built by shared.runtime.start_server, as every service builds it:
auth, permissions, metrics, deadline and tracing interceptors) runs in a child process on
loopback; this process calls it through shared.clients.open_channel. Printed: CPU
microseconds per call of the server (the child's utime + stime) and of the client (this
process), and the wall p50, for a unary call (GetRun) and for a server stream of
`--stream-messages` messages (WatchRun), each against a bare grpc.aio server and channel
(no interceptor) measured in the same run. Tracing is as the environment says (no
OTEL_EXPORTER_OTLP_ENDPOINT: off).

    .venv/bin/python benchmarks/rpc.py --calls 3000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402

TOKEN = "rbx_benchmark-token"
METHOD_PERMISSIONS = {
    "/runbox.scheduler.v1.SchedulerService/GetRun": "script_execution:read",
    "/runbox.scheduler.v1.SchedulerService/WatchRun": "script_execution:read",
}


class Servicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """GetRun answers a fixed run; WatchRun streams it `messages` times."""

    def __init__(self, messages: int) -> None:
        self._run = scheduler_pb2.Run(id="run-1", script_version="v1")
        self._messages = messages

    async def GetRun(self, request: Any, context: Any) -> scheduler_pb2.Run:
        return self._run

    async def WatchRun(
        self, request: Any, context: Any
    ) -> AsyncIterator[scheduler_pb2.WatchRunResponse]:
        for _ in range(self._messages):
            yield scheduler_pb2.WatchRunResponse(run=self._run)


async def serve(stack: str, messages: int) -> None:
    """The child: serve until stdin closes, printing the port first."""
    registration = (
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
        Servicer(messages),
        "runbox.scheduler.v1.SchedulerService",
    )
    if stack == "bare":
        server = grpc.aio.server()
        registration[0](registration[1], server)
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        from shared.runtime import Service, build_runtime, start_server
        from shared.settings import ServiceSettings

        os.environ["RUNBOX_AUTH__PRINCIPALS"] = json.dumps(
            [
                {
                    "name": "bench",
                    "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                    "permissions": ["*"],
                }
            ]
        )
        os.environ["RUNBOX_LOG__LEVEL"] = "WARNING"
        runtime = build_runtime("scheduler", ServiceSettings())
        bundle = start_server(
            runtime, Service(registrations=[registration], permissions=METHOD_PERMISSIONS)
        )
        server, port = bundle.server, bundle.port
    await server.start()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(0)


def cpu_of(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def channel_for(stack: str, address: str) -> grpc.aio.Channel:
    if stack == "bare":
        return grpc.aio.insecure_channel(address)
    from shared.clients import open_channel
    from shared.telemetry import setup_tracing

    return open_channel(address, token=TOKEN, tracer_provider=setup_tracing("bench").spans)


async def measure(stack: str, calls: int, messages: int) -> dict[str, float]:
    """Start a server of `stack`, call it `calls` times each way, return per-call figures."""
    child = await asyncio.create_subprocess_exec(
        *[sys.executable, __file__, "--serve", stack, "--stream-messages", str(messages)],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdout is not None and child.stdin is not None
    port = int(await child.stdout.readline())
    out: dict[str, float] = {}
    try:
        async with channel_for(stack, f"127.0.0.1:{port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            request = scheduler_pb2.GetRunRequest(id="run-1")
            watch = scheduler_pb2.WatchRunRequest(id="run-1")

            async def unary() -> None:
                await stub.GetRun(request, timeout=10)

            async def stream() -> None:
                async for _ in stub.WatchRun(watch, timeout=10):
                    pass

            for name, call in (("unary", unary), ("stream", stream)):
                for _ in range(calls // 10):  # warm up
                    await call()
                server0, client0 = cpu_of(child.pid), time.process_time()
                walls = []
                for _ in range(calls):
                    began = time.perf_counter()
                    await call()
                    walls.append(time.perf_counter() - began)
                server1, client1 = cpu_of(child.pid), time.process_time()
                walls.sort()
                out[f"{name}_server_cpu_us"] = round(1e6 * (server1 - server0) / calls, 1)
                out[f"{name}_client_cpu_us"] = round(1e6 * (client1 - client0) / calls, 1)
                out[f"{name}_p50_us"] = round(1e6 * walls[len(walls) // 2], 1)
    finally:
        child.stdin.close()
        await asyncio.wait_for(child.wait(), 10)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for stack in ("bare", "runbox"):
        results[stack] = await measure(stack, args.calls, args.stream_messages)
    results["runbox_over_bare"] = {
        key: round(results["runbox"][key] - results["bare"][key], 1) for key in results["bare"]
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per kind and stack")
    parser.add_argument("--stream-messages", type=int, default=3)
    parser.add_argument("--serve", choices=["bare", "runbox"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    grpc.aio.init_grpc_aio()
    if args.serve:
        asyncio.run(serve(args.serve, args.stream_messages))
        return
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
