"""Tracing benchmark: what exporting spans costs a run, against tracing off.

For each mode, fresh catalogue, executor (backend local, the allow-listed /bin/true) and
scheduler processes on one nats-server: --runs no-op runs one after another, SubmitRun ->
SUCCEEDED seen on WatchRun, after --runs / 10 (at least 10) warm-up runs. Measured per
mode: the round trip's p50 and p99, and the CPU seconds (utime + stime from /proc) each
service process spent during the measured runs, per run. Modes:

- off: no OTEL_* variable (the default): only RPC server spans are made, the rest of the
  trace context is carried without recording (docs/tracing.md);
- on: OTEL_EXPORTER_OTLP_ENDPOINT names an OTLP/gRPC receiver in this process (it counts
  what it receives), OTEL_BSP_SCHEDULE_DELAY as the services' default (5 s) unless
  --bsp-delay-ms says otherwise; every span recorded and exported.

The last line on stdout is one JSON object; progress goes to stderr.

    .venv/bin/python benchmarks/tracing.py [--runs 300]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import (  # noqa: E402
    trace_service_pb2,
    trace_service_pb2_grpc,
)

from benchmarks.children import preexec  # noqa: E402
from cli import natsd  # noqa: E402
from cli.stack import ensure_tokens, wait_healthy  # noqa: E402
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc  # noqa: E402
from runbox.common.v1 import common_pb2  # noqa: E402
from runbox.scheduler.v1 import scheduler_pb2 as pb  # noqa: E402
from runbox.scheduler.v1 import scheduler_pb2_grpc  # noqa: E402
from services.scheduler import state as sm  # noqa: E402
from shared.clients import open_channel  # noqa: E402

SCRIPT = "noop"
SERVICES = ("catalogue", "executor", "scheduler")


def log(message: str) -> None:
    print(f"[tracing-bench] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that counts spans."""

    def __init__(self) -> None:
        self.spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans += len(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def spawn(
    name: str, tmp: Path, nats_url: str, token: str, extra: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m services.<name>`, healthy, on a free loopback port."""
    port = natsd.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOX_", "OTEL_"))}
    env |= {
        "RUNBOX_INSTANCE_ID": f"{name}-bench",
        "RUNBOX_GRPC__HOST": "127.0.0.1",
        "RUNBOX_GRPC__PORT": str(port),
        "RUNBOX_METRICS__PORT": "-1",
        "RUNBOX_DATABASE__URL": f"sqlite+aiosqlite:///{tmp / (name + '.db')}",
        "RUNBOX_NATS__URL": nats_url,
        "RUNBOX_AUTH__PRINCIPALS_FILE": str(tmp / "principals.json"),
        "RUNBOX_AUTH__SERVICE_TOKEN": token,
        "RUNBOX_LOG__LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    log_file = tmp / f"{name}.log"
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env=env,
            stdout=out,
            stderr=out,
            cwd=ROOT,
            preexec_fn=preexec(),
        )
    address = f"127.0.0.1:{port}"
    wait_healthy(address, proc, log_file, 60)
    return proc, address


async def publish_noop(address: str, token: str) -> None:
    """The no-op script: execution type local, the allow-listed command `true`."""
    async with open_channel(address, token=token) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        config = catalogue_pb2.ExecutionConfig(local=catalogue_pb2.LocalConfig(command="true"))
        await stub.CreateScript(
            catalogue_pb2.CreateScriptRequest(
                script=catalogue_pb2.Script(
                    name=SCRIPT, execution_type=common_pb2.EXECUTION_TYPE_LOCAL, config=config
                )
            )
        )
        content = b"# runs /bin/true\n"
        await stub.PublishVersion(
            catalogue_pb2.PublishVersionRequest(
                script_name=SCRIPT,
                version="1.0.0",
                content=content,
                sha256=hashlib.sha256(content).hexdigest(),
            )
        )


async def round_trip(stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub) -> float:
    started = time.perf_counter()
    run = await stub.SubmitRun(pb.SubmitRunRequest(script=common_pb2.ScriptRef(name=SCRIPT)))
    async for reply in stub.WatchRun(pb.WatchRunRequest(id=run.id), timeout=60):
        if reply.HasField("run") and sm.is_terminal(reply.run.state):
            if reply.run.state != common_pb2.RUN_STATE_SUCCEEDED:
                raise RuntimeError(
                    f"run {run.id} ended {common_pb2.RunState.Name(reply.run.state)}"
                )
            return time.perf_counter() - started
    raise RuntimeError(f"run {run.id}: WatchRun ended before the run did")


async def measure(mode: str, args: argparse.Namespace, nats_url: str) -> dict[str, Any]:
    """One mode on fresh service processes."""
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    otel = {}
    if mode == "on":
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "OTEL_BSP_SCHEDULE_DELAY": str(args.bsp_delay_ms),
        }
    tmp = Path(tempfile.mkdtemp(prefix=f"tracing-bench-{mode}-"))
    _, token = ensure_tokens(tmp)
    admin = (tmp / "admin.token").read_text().strip()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    warm = max(10, args.runs // 10)
    try:
        procs["catalogue"], catalogue = await asyncio.to_thread(
            spawn, "catalogue", tmp, nats_url, token, {**otel, "RUNBOX_BLOB_DIR": str(tmp / "b")}
        )
        await publish_noop(catalogue, admin)
        procs["executor"], executor = await asyncio.to_thread(
            spawn,
            "executor",
            tmp,
            nats_url,
            token,
            {
                **otel,
                "RUNBOX_CATALOGUE__ADDRESS": catalogue,
                "RUNBOX_SANDBOX__BACKEND": "local",
                "RUNBOX_LOCAL__COMMANDS": json.dumps({"true": "/bin/true"}),
                "RUNBOX_WORK_DIR": str(tmp / "work"),
            },
        )
        procs["scheduler"], scheduler = await asyncio.to_thread(
            spawn,
            "scheduler",
            tmp,
            nats_url,
            token,
            {
                **otel,
                "RUNBOX_CATALOGUE__ADDRESS": catalogue,
                "RUNBOX_EXECUTORS": json.dumps([executor]),
            },
        )
        async with open_channel(scheduler, token=admin) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            for _ in range(warm):
                await round_trip(stub)
            before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
            samples = [await round_trip(stub) for _ in range(args.runs)]
            after = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(30)
        await server.stop(None)
    ordered = sorted(samples)
    cpu = {n: round((after[n] - before[n]) / args.runs * 1000, 3) for n in SERVICES}
    result = {
        "mode": mode,
        "runs": args.runs,
        "round_trip_p50_ms": round(statistics.median(ordered) * 1000, 2),
        "round_trip_p99_ms": round(ordered[round(0.99 * (len(ordered) - 1))] * 1000, 2),
        "cpu_ms_per_run": cpu,
        "cpu_ms_per_run_total": round(sum(cpu.values()), 3),
        # Every span received, the warm-up's and the setup's too, once the services stopped
        # (they flush on the way out), over every run.
        "spans_per_run": round(receiver.spans / (warm + args.runs), 1),
    }
    log(json.dumps(result))
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--bsp-delay-ms", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tracing-bench-nats-") as nats_dir:
        server = natsd.start(Path(nats_dir), preexec_fn=preexec())
        try:
            off = await measure("off", args, server.url)
            on = await measure("on", args, server.url)
        finally:
            server.stop()
    ratio = on["cpu_ms_per_run_total"] / off["cpu_ms_per_run_total"]
    print(json.dumps({"off": off, "on": on, "cpu_on_over_off": round(ratio, 3)}))


if __name__ == "__main__":
    asyncio.run(main())
