"""The floor of one durable run (issue 15): what each primitive a run needs costs on this
machine, in this repo's stack and versions, and what a run costs if it did nothing else.

Issue 15 asks for SubmitRun -> SUCCEEDED p50 <= 15 ms at 1 in flight and <= 4 ms of CPU per
run summed over catalogue + scheduler + executor (utime + stime), and, against Celery + Redis
measured in the same run (benchmarks/scheduler.py --only roundtrip), p50 at 4 in flight <= 2x
Celery's and runs/s at 32 in flight >= 0.5x Celery's, a miss accepted only at a physical limit
that profiles show. This benchmark measures the primitives the services are built from, each
alone, then multiplies them by how many of each a run uses, to tell which part of today's
cost is a library / kernel floor and which is the design's, and whether the Celery-relative
targets are within reach of any design built from these primitives on this machine.

Every process of the benchmark runs on the services' event loop (shared.entrypoint's
loop_factory: uvloop where installed; `--loop asyncio` for the standard one).

Primitives (each measured `--rounds` times, the median of the rounds reported):

- grpc_unary_<variant>: one unary call on loopback (SchedulerService/SubmitRun with a real
  Run in the answer), client in this process, server a child process (python, grpc.aio).
  CPU per call of each side separately. Variants: `plain` (no interceptors either side),
  `service_interceptor` (the server has shared/interceptors.py's ServiceInterceptor: auth,
  permission, deadline, error mapping, metrics; the client sends the bearer token by hand),
  `runbox` (the services' own setup: shared.server.create_server, i.e. the OpenTelemetry
  aio server interceptor with an SDK TracerProvider (server spans recorded, not exported)
  and the ServiceInterceptor, health and reflection; the client is shared.clients.open_channel
  with the services' context-only tracer provider).
- grpc_stream_<variant>: a server-streaming call delivering one message (WatchRun with one
  WatchRunResponse), open -> message -> end, same variants.
- grpc_bidi_exchange_<variant>: one request and its answer on a bidirectional stream opened
  once (a generic bytes handler: a SubmitRunRequest-sized message in, a Run out), same
  server variants; for `runbox` the client is the run link's: shared.clients.
  open_stream_channel (no client interceptors) with the bearer token in the call's metadata.
  What a message costs each side on a long-lived stream: the run link (ExecutorService.Link)
  carries a run's Execute to the executor and its answer and events back this way.
- jetstream_publish: JetStream publish of a RunEvent-sized message with Nats-Msg-Id, awaiting
  its ack (nats-py publish_async + the ack future, as the outbox relay does), one at a time;
  the publisher's CPU (this process) and nats-server's (file storage, sync_interval always,
  as cli/natsd.py starts it) per message.
- jetstream_consume: the same publishes, paced (one at a time, CONSUME_GAP_S apart), delivered
  to shared.jetstream.DurableConsumer (the scheduler's consumer: an open pull request, ack
  after the handler) in a child process; the consumer's CPU per message (its idle wake-ups
  between messages included: they are real), nats-server's (the publish included) and
  publish -> handler latency.
- sqlite_<path>: one small row (5 columns, one secondary index) inserted and committed in a
  WAL file with synchronous=NORMAL, one transaction at a time: `raw` (sqlite3, caller's
  thread: the executor's outbox commits made on its loop), `raw_thread` (sqlite3 in one
  worker thread, awaited from asyncio: the outbox writer's thread), `core_loop` (the
  scheduler's per-run path: shared.db_transactions' write on the loop's own Core
  connection, the INSERT on the sqlite3 driver under it as shared/sqlite_rows.py runs
  them), `core_sync` (SQLAlchemy Core, sync engine), `core_async` (SQLAlchemy Core through
  aiosqlite, engine from shared.db.create_engine) and `orm_async` (an ORM object added in a
  session of shared.db.sessionmaker: the services' background loops).
- spawn_<path>: start /bin/true and reap it: `asyncio` (asyncio.create_subprocess_exec),
  `asyncio_limited` (the same through `setpriv --pdeathsig KILL -- prlimit ... --`, when both
  tools are on PATH), `posix_spawn` (os.posix_spawn + os.waitpid, no asyncio), `helper` (a
  small pre-started Python process that posix_spawns on request over a pipe) and
  `forkserver` (the executor's own local fork server, services/executor/runners/
  forkserver.py: a request with the output pipes over its socket, a fork, rlimits, exec;
  what the local runner does today). Parent CPU, the helper's / fork server's, and the
  started process's (getrusage RUSAGE_CHILDREN, or the fork server's wait4 rusage).

CPU is utime + stime: getrusage(RUSAGE_SELF) for this process, the sum of
/proc/<pid>/task/*/schedstat run times (the same time at ns resolution; /proc/<pid>/stat
counts 10 ms ticks) for child processes. Latency is wall time per operation, p50.

Per-run counts (RUN_COUNTS) are measured by benchmarks/floor_counts.py (a real round trip:
benchmarks/scheduler.py's setup, backend local, SQLite, the services on uvloop; the services'
/metrics deltas, JetStream stream and consumer counts, the executor's outbox writer calls and
run link messages counted by a probe, the streamed messages the client got). Per run at 4
in flight (RUN_COUNTS, after s7-watch; docs/benchmarks.md, "Floor of a run, recounted for the
run link", has s7-floor's counts at 1, 4 and 32 in flight with SubmitRun + WatchRun): one
SubmitAndWatchRun stream (~3.4 messages: the submitted run, then its states); no
ResolveVersion (a warm submit of "latest" asks the catalogue nothing)
and no unary Execute; over the run link ~1 message to the executor (the Execute, earlier
runs' acks riding with it) and 1.7-2 back (the answer; STARTED and FINISHED, together when
they fall in one loop turn); 4 RunEvents published (SUBMITTED by the scheduler, QUEUED,
STARTED, FINISHED by the executor), none consumed by the scheduler's durable consumer (it
applies STARTED and FINISHED from the link); ~2.9 per-run transactions of the scheduler, all
on the loop's connection (with SubmitRun + WatchRun 3.8, WatchRun's first read), and < 0.1
session transactions of its background loops; in the executor 1.7 outbox commits on the
loop (3 rows; 2 at 1 in flight) and 1 lookup in the writer's thread; one spawn. `--counts
FILE` takes a floor_counts.py line instead (and puts its measured CPU per service,
nats-server and client beside the floor).

Composition (assumptions):

- floor_cpu_ms_per_run (and _by_service): the three services' side of every primitive at
  those counts, each service using the path it uses today (`today_paths`): SubmitRun's and
  WatchRun's server side (the one-message stream once, plus half a bidi exchange of the same
  setup per further message: a message on an open stream), unary client calls at
  their counts (ResolveVersion, a fallback Execute: ~0 now), each run link message at half
  a bidi exchange of the `runbox` setup on each side (an exchange is a message each way),
  the publishes (publisher side) and consumptions, the scheduler's per-run transactions at
  `core_loop` and its session ones at `orm_async`, the executor's outbox commits at `raw`
  (on the loop) and `raw_thread` (commits and lookups in the writer's thread), and the
  spawn's parent side (the executor's end of the fork server). Everything a service does
  besides these primitives (protobuf <-> domain, state machine, building events, asyncio
  tasks, logging, metrics outside the interceptor) is what the floor leaves out: the
  measured total minus the floor is the design's share.
- floor_cpu_ms_per_run_one_call: the same with SubmitRun folded into the stream
  (SubmitAndWatchRun): no unary call, one stream; the same as floor_cpu_ms_per_run at counts
  measured with that call (RUN_COUNTS), different at counts with SubmitRun + WatchRun.
- floor_cpu_ms_per_run_lean: the same counts, each kind of work at the measured path with
  the least CPU (gRPC setup, link setup, SQLite path; the spawn with the least CPU of the
  machine; `lean_paths`): what the counts alone cost.
- floor_cpu_ms_per_run_minimal (and _one_call): the fewest primitives a durable run through
  two services, the run link and JetStream needs (MINIMAL_COUNTS), at those cheapest paths.
- floor_machine: per composition (today, today_one_call, lean, minimal, minimal_one_call),
  the machine's CPU per run: the services' floor, plus the client's side of SubmitRun and the
  stream (same setup, the stream's further messages at half a bidi exchange each),
  nats-server's side (each publish's, and each delivery's: the consume primitive's less the
  publish's), and the run's process with the fork server (or helper) that started it; and
  `max_runs_per_s`, the machine's cores (os.sched_getaffinity) over it: the throughput no
  build of these primitives passes on this machine, whatever the concurrency.
  `floor_machine_cpu_ms_per_run` / `floor_max_runs_per_s` are today's. The benchmark's own
  overhead (its NATS tap) and the services' idle timers are not in it. With `--counts`,
  `today_outside_measured` too: the services at today's floor, the client, nats-server and
  the executor's children as that round trip measured them (what the services' floor leaves
  when the rest stays as it is).
- floor_latency_ms_c1: the critical path at 1 in flight, p50s added: SubmitRun's request
  half (unary / 2), the submit commit, the Execute down the link (exchange / 2), the
  acceptance commit (QUEUED), the spawn (to its reaping), the FINISHED commit, FINISHED up
  the link (exchange / 2), the apply commit, the stream's push (unary / 2); the paths as
  today. The stream's opening, STARTED, the dispatch mark and the publishes overlap the run
  or follow it and are left out. `_lean` the same at the cheapest paths.
- celery_requirements / celery_verdicts (with `--celery FILE`, a benchmarks/scheduler.py
  line with 4 and 32 in flight): runs/s >= 0.5x Celery's at 32 in flight needs a machine CPU
  per run <= cores / (0.5 x Celery's tasks/s); p50 <= 2x Celery's at 4 in flight needs, the
  machine saturated (p50 ~= in flight / throughput = 4 x CPU per run / cores), a CPU per run
  <= 2 x Celery's p50 x cores / 4, and a critical path <= 2 x Celery's p50. Each floor's p50
  at 4 in flight is max(latency_ms_c1, 4 x cpu_ms_per_run / cores); a target is out of reach
  for a composition when its floor already misses it.

Progress and the verdicts in words on stderr; one JSON line on stdout. Default ~1-2 minutes;
--smoke ~15 s. `--primitives FILE` composes an earlier line's primitives again (other counts,
other Celery figures) without measuring.

    .venv/bin/python benchmarks/floor_counts.py --in-flight 4 > counts.json   # ~30 s
    .venv/bin/python benchmarks/scheduler.py --only roundtrip --runs 600 > celery.json
    .venv/bin/python benchmarks/floor.py [--counts counts.json] [--celery celery.json]
        [--rounds 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Before grpc is imported: no fork handlers (why: benchmarks/children.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
import nats  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column  # noqa: E402

from benchmarks.children import preexec  # noqa: E402
from cli import natsd  # noqa: E402
from runbox.common.v1 import common_pb2  # noqa: E402
from runbox.events.v1 import events_pb2  # noqa: E402
from runbox.scheduler.v1 import scheduler_pb2 as pb  # noqa: E402
from runbox.scheduler.v1 import scheduler_pb2_grpc  # noqa: E402
from services.executor.runners.forkserver import ForkServer  # noqa: E402
from shared import db, db_transactions, jetstream  # noqa: E402
from shared.auth import Authenticator, hash_token, new_token  # noqa: E402
from shared.clients import bearer, open_channel, open_stream_channel  # noqa: E402
from shared.entrypoint import loop_factory  # noqa: E402
from shared.interceptors import RpcMetrics, ServiceInterceptor  # noqa: E402
from shared.server import create_server  # noqa: E402
from shared.settings import DatabaseSettings, GrpcSettings, NatsSettings  # noqa: E402
from shared.telemetry import setup_tracing  # noqa: E402

SERVICE = pb.DESCRIPTOR.services_by_name["SchedulerService"].full_name
BIDI_METHOD = "/floor.Bidi/Exchange"
PERMISSIONS = {
    f"/{SERVICE}/SubmitRun": "script:execute",
    f"/{SERVICE}/WatchRun": "script_execution:read",
    BIDI_METHOD: "script_execution:manage",  # the run link's (ExecutorService.Link)
}
GRPC_VARIANTS = ("plain", "service_interceptor", "runbox")
SQLITE_PATHS = ("raw", "raw_thread", "core_loop", "core_sync", "core_async", "orm_async")
STREAM = "FLOOR"
PREFIX = "floor.events"
CONSUME_GAP_S = 0.003
T = TypeVar("T")

# Per run, measured as the module docstring says (floor_counts.py --in-flight 4 --runs 400 on
# main after s7-watch and s7-floor, 2026-12-05 19:20 UTC: the client's one SubmitAndWatchRun
# stream, so no SubmitRun; s7-floor's count with SubmitRun + WatchRun at 18:46 had 3.865
# scheduler transactions, WatchRun's first read among them).
RUN_COUNTS: dict[str, float] = {
    "rpc_submitrun": 0,
    "rpc_watchrun_streams": 1.0,
    "rpc_watchrun_messages": 3.355,
    "rpc_resolveversion": 0,
    "rpc_execute": 0,
    "link_messages_to_executor": 0.993,
    "link_messages_to_scheduler": 1.83,
    "jetstream_publishes_scheduler": 1.0,
    "jetstream_publishes_executor": 3.0,
    "jetstream_consumptions_scheduler": 0.0,
    "sqlite_transactions_scheduler_core": 2.895,
    "sqlite_transactions_scheduler_orm": 0.072,
    "sqlite_transactions_executor_raw": 1.718,
    "sqlite_transactions_executor_raw_thread": 1.0,
    "sqlite_transactions_executor_orm": 0.005,
    "spawns": 1.0,
}
# The fewest a durable run through scheduler, executor, the run link and JetStream needs: the
# submit and the end committed in the scheduler, the acceptance and the end in the executor
# (its outbox), the Execute down the link and one message up (its answer and FINISHED), one
# event to JetStream (FINISHED; applied from the link, so not consumed), one spawn, SubmitRun
# and a one-message WatchRun (`one_call`: a single streaming call); no catalogue call (a
# cached version).
MINIMAL_COUNTS: dict[str, float] = {
    "rpc_submitrun": 1,
    "rpc_watchrun_streams": 1,
    "rpc_watchrun_messages": 1,
    "rpc_resolveversion": 0,
    "rpc_execute": 0,
    "link_messages_to_executor": 1,
    "link_messages_to_scheduler": 1,
    "jetstream_publishes_scheduler": 0,
    "jetstream_publishes_executor": 1,
    "jetstream_consumptions_scheduler": 0,
    "sqlite_transactions_scheduler_core": 2,
    "sqlite_transactions_scheduler_orm": 0,
    "sqlite_transactions_executor_raw": 2,
    "sqlite_transactions_executor_raw_thread": 0,
    "sqlite_transactions_executor_orm": 0,
    "spawns": 1,
}


def log(message: str) -> None:
    print(f"[floor-bench] {message}", file=sys.stderr, flush=True)


# --- measuring ------------------------------------------------------------------------------


def self_cpu() -> float:
    """This process's CPU seconds (every thread, exited ones included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    """CPU seconds of this process's reaped children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pid_cpu(pid: int) -> float:
    """CPU seconds of another live process: its threads' run time (ns) from schedstat."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def p50_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def per_op_us(seconds: float, ops: int) -> float:
    return round(seconds * 1e6 / ops, 1)


@dataclass
class Sizes:
    """Operations per primitive and round."""

    unary: int
    stream: int
    publish: int
    consume: int
    commit: int
    spawn: int
    warmup: int


def sizes(smoke: bool, scale: float) -> Sizes:
    if smoke:
        return Sizes(unary=100, stream=60, publish=100, consume=60, commit=100, spawn=30, warmup=10)

    def n(base: int) -> int:
        return max(10, int(base * scale))

    return Sizes(
        unary=n(2000),
        stream=n(1000),
        publish=n(1500),
        consume=n(600),
        commit=n(1500),
        spawn=n(300),
        warmup=n(50),
    )


async def timed(count: int, op: Callable[[], Awaitable[Any]]) -> list[float]:
    """`count` calls of op one after another; each one's wall time."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await op()
        samples.append(time.perf_counter() - started)
    return samples


# --- children: a gRPC server, a JetStream consumer, a spawn helper ---------------------------


class Servicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """SubmitRun answers a fixed Run; WatchRun sends it once and ends."""

    def __init__(self) -> None:
        self.run = sample_run()

    async def SubmitRun(self, request: pb.SubmitRunRequest, context: Any) -> pb.Run:
        return self.run

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Any
    ) -> AsyncIterator[pb.WatchRunResponse]:
        yield pb.WatchRunResponse(run=self.run)


def sample_run() -> pb.Run:
    """A Run as WatchRun reports a finished no-op run."""
    run = pb.Run(
        id=str(uuid.uuid4()),
        script=common_pb2.ScriptRef(name="noop", version="1.0.0"),
        script_version="1.0.0",
        sha256="0" * 64,
        execution_type=common_pb2.EXECUTION_TYPE_LOCAL,
        state=common_pb2.RUN_STATE_SUCCEEDED,
        attempt=1,
        executor_id="executor-1",
        submitted_by="admin",
        labels={"team": "data"},
    )
    now = datetime.now(UTC)
    for stamp in (run.create_time, run.queue_time, run.start_time, run.finish_time):
        stamp.FromDatetime(now)
    return run


async def serve_grpc(variant: str, token_sha256: str) -> None:
    """A server of one variant on a free port; prints the port, serves until stdin closes."""
    servicer = Servicer()
    settings = GrpcSettings(host="127.0.0.1", port=0)
    authenticator = Authenticator([("bench", token_sha256, ["*"])])
    if variant == "runbox":
        bundle = create_server(
            service="floor",
            settings=settings,
            registrations=[
                (scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, servicer, SERVICE)
            ],
            authenticator=authenticator,
            permissions=PERMISSIONS,
            registry=CollectorRegistry(),
            tracing=setup_tracing("floor"),
        )
        server, port = bundle.server, bundle.port
    else:
        interceptors = []
        if variant == "service_interceptor":
            interceptors.append(
                ServiceInterceptor(
                    authenticator=authenticator,
                    permissions=PERMISSIONS,
                    metrics=RpcMetrics("floor", CollectorRegistry()),
                    default_deadline_s=settings.default_deadline_s,
                )
            )
        server = grpc.aio.server(interceptors=interceptors)
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers((bidi_handler(servicer.run.SerializeToString()),))
    await server.start()
    print(port, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(0)


def bidi_handler(answer: bytes) -> grpc.GenericRpcHandler:
    """A bidirectional stream of bytes: each message in gets `answer` back."""

    async def exchange(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield answer

    return grpc.method_handlers_generic_handler(
        "floor.Bidi", {"Exchange": grpc.stream_stream_rpc_method_handler(exchange)}
    )


async def bidi_exchanges(
    channel: grpc.aio.Channel,
    server_pid: int,
    request: bytes,
    size: Sizes,
    metadata: tuple[tuple[str, str], ...] | None,
) -> dict[str, float]:
    """One stream opened, then `size.unary` exchanges on it, one at a time."""
    call = channel.stream_stream(BIDI_METHOD)(timeout=600, metadata=metadata)

    async def op() -> None:
        await call.write(request)
        await call.read()

    await timed(size.warmup, op)
    client0, server0 = self_cpu(), pid_cpu(server_pid)
    samples = await timed(size.unary, op)
    client1, server1 = self_cpu(), pid_cpu(server_pid)
    await call.done_writing()
    await call.wait_for_connection()
    assert await call.code() == grpc.StatusCode.OK
    return {
        "client_cpu_us": per_op_us(client1 - client0, size.unary),
        "server_cpu_us": per_op_us(server1 - server0, size.unary),
        "latency_p50_us": p50_us(samples),
    }


async def consume(url: str, durable: str, warmup: int, count: int) -> None:
    """A DurableConsumer on the bench stream: prints "ready", "warm" after `warmup` messages,
    then the publish -> handler latencies (JSON) after `count` more; exits when stdin closes."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    latencies: list[float] = []
    seen = 0
    done = asyncio.Event()

    async def handle(msg: Msg) -> None:
        nonlocal seen
        seen += 1
        if seen > warmup:
            latencies.append(time.time() - float((msg.headers or {})["Floor-Sent"]))
        if seen == warmup:
            print("warm", flush=True)
        if seen == warmup + count:
            done.set()

    consumer = jetstream.DurableConsumer(
        js, stream=STREAM, durable=durable, filter_subject=f"{PREFIX}.{durable}.>", handler=handle
    )
    await consumer.start()
    print("ready", flush=True)
    await done.wait()
    await asyncio.sleep(0.05)  # the last ack is written
    print(json.dumps({"latency_p50_us": p50_us(latencies)}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await consumer.stop()
    await nc.close()


def spawn_helper() -> None:
    """Reads an executable path per line, posix_spawns it, waits, answers its exit status;
    on EOF prints its children's CPU seconds."""
    for line in sys.stdin:
        pid = os.posix_spawn(line.strip(), [line.strip()], {})
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"{status}\n")
        sys.stdout.flush()
    print(children_cpu(), flush=True)


# --- gRPC -------------------------------------------------------------------------------------


class Child:
    """This file run as a child process (`--child ...`), talking over its stdin and stdout;
    closing its stdin tells it to end."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin, self.stdout = proc.stdin, proc.stdout

    async def line(self) -> str:
        return (await self.stdout.readline()).decode().strip()

    async def close(self) -> bytes:
        """Ends the child; what it wrote after its last line read."""
        self.stdin.close()
        try:
            rest = await asyncio.wait_for(self.stdout.read(), 10)
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        return rest


@contextlib.asynccontextmanager
async def child_process(*argv: str) -> AsyncIterator[Child]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    child = Child(proc)
    try:
        yield child
    finally:
        if proc.returncode is None:
            await child.close()


def channel_of(variant: str, address: str, token: str) -> grpc.aio.Channel:
    if variant == "runbox":
        # The services' client: call defaults, token, and the context-only tracer provider
        # they use when spans are not exported.
        return open_channel(address, token=token, tracer_provider=setup_tracing("floor").spans)
    return grpc.aio.insecure_channel(address)


async def grpc_variant(variant: str, size: Sizes) -> dict[str, dict[str, float]]:
    token = new_token()
    metadata = None if variant == "runbox" else (("authorization", f"Bearer {token}"),)
    request = pb.SubmitRunRequest(script=common_pb2.ScriptRef(name="noop"))
    watch = pb.WatchRunRequest(id="run")
    async with child_process("grpc", variant, hash_token(token)) as server:
        port = int(await server.line())
        channel = channel_of(variant, f"127.0.0.1:{port}", token)
        async with channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

            async def unary() -> None:
                await stub.SubmitRun(request, metadata=metadata, timeout=10)

            async def stream() -> None:
                async for _ in stub.WatchRun(watch, metadata=metadata, timeout=10):
                    pass

            out = {}
            for name, op, count in (("unary", unary, size.unary), ("stream", stream, size.stream)):
                await timed(size.warmup, op)
                client0, server0 = self_cpu(), pid_cpu(server.proc.pid)
                samples = await timed(count, op)
                client1, server1 = self_cpu(), pid_cpu(server.proc.pid)
                out[f"grpc_{name}_{variant}"] = {
                    "client_cpu_us": per_op_us(client1 - client0, count),
                    "server_cpu_us": per_op_us(server1 - server0, count),
                    "latency_p50_us": p50_us(samples),
                }
        # The run link's setup for `runbox`: a channel without client interceptors, the
        # bearer token in the call's own metadata (shared.clients.open_stream_channel).
        address = f"127.0.0.1:{port}"
        stream_channel = (
            open_stream_channel(address)
            if variant == "runbox"
            else channel_of(variant, address, token)
        )
        async with stream_channel:
            out[f"grpc_bidi_exchange_{variant}"] = await bidi_exchanges(
                stream_channel,
                server.proc.pid,
                request.SerializeToString(),
                size,
                bearer(token) if variant == "runbox" else metadata,
            )
    return out


# --- JetStream --------------------------------------------------------------------------------


def event_payload() -> bytes:
    """A FINISHED RunEvent of a no-op run, as the executor publishes it."""
    event = events_pb2.RunEvent(
        run_id=str(uuid.uuid4()),
        type=events_pb2.RUN_EVENT_TYPE_FINISHED,
        state=common_pb2.RUN_STATE_SUCCEEDED,
        script_name="noop",
        execution_type=common_pb2.EXECUTION_TYPE_LOCAL,
        executor_id="executor-1",
    )
    event.occurred_at.FromDatetime(datetime.now(UTC))
    return event.SerializeToString()


class Publisher:
    """One event at a time to `subject`, each with its own Nats-Msg-Id and send time."""

    def __init__(self, js: Any, subject: str) -> None:
        self._js = js
        self._subject = subject
        self._payload = event_payload()

    async def one(self) -> None:
        headers = {"Nats-Msg-Id": uuid.uuid4().hex, "Floor-Sent": repr(time.time())}
        ack = await self._js.publish_async(self._subject, self._payload, headers=headers)
        await ack


async def jetstream_part(nats_url: str, nats_pid: int, size: Sizes) -> dict[str, dict[str, float]]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await jetstream.ensure_stream(
        js, NatsSettings(url=nats_url, stream=STREAM, subjects_prefix=PREFIX)
    )
    publisher = Publisher(js, f"{PREFIX}.publish.run")
    await timed(size.warmup, publisher.one)
    own0, server0 = self_cpu(), pid_cpu(nats_pid)
    samples = await timed(size.publish, publisher.one)
    own1, server1 = self_cpu(), pid_cpu(nats_pid)
    out = {
        "jetstream_publish": {
            "publisher_cpu_us": per_op_us(own1 - own0, size.publish),
            "nats_server_cpu_us": per_op_us(server1 - server0, size.publish),
            "latency_p50_us": p50_us(samples),
        }
    }
    durable = f"floor-{uuid.uuid4().hex[:8]}"
    consumer_argv = ("consume", nats_url, durable, str(size.warmup), str(size.consume))
    async with child_process(*consumer_argv) as consumer:
        if (line := await consumer.line()) != "ready":
            raise RuntimeError(f"consumer: {line!r}")
        publisher = Publisher(js, f"{PREFIX}.{durable}.run")

        async def paced() -> None:
            await publisher.one()
            await asyncio.sleep(CONSUME_GAP_S)

        await timed(size.warmup, paced)
        if (line := await consumer.line()) != "warm":
            raise RuntimeError(f"consumer: {line!r}")
        cpu0, server0 = pid_cpu(consumer.proc.pid), pid_cpu(nats_pid)
        await timed(size.consume, paced)
        result = json.loads(await consumer.line())
        cpu1, server1 = pid_cpu(consumer.proc.pid), pid_cpu(nats_pid)
    await nc.close()
    out["jetstream_consume"] = {
        "consumer_cpu_us": per_op_us(cpu1 - cpu0, size.consume),
        "nats_server_cpu_us_with_publish": per_op_us(server1 - server0, size.consume),
        "latency_p50_us": result["latency_p50_us"],
    }
    return out


# --- SQLite -----------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Row(Base):
    """A small row: what an outbox or a lean run row holds."""

    __tablename__ = "floor_rows"
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    state: Mapped[int]
    payload: Mapped[bytes]
    created_at: Mapped[datetime] = mapped_column(db.UTCDateTime)


ROW_PAYLOAD = bytes(200)
INSERT_SQL = "INSERT INTO floor_rows (id, run_id, state, payload, created_at) VALUES (?,?,?,?,?)"


def row_values() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "run_id": str(uuid.uuid4()),
        "state": 3,
        "payload": ROW_PAYLOAD,
        "created_at": datetime.now(UTC),
    }


def raw_connection(path: Path) -> Any:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def raw_commit(conn: Any) -> None:
    values = row_values()
    values["created_at"] = values["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT_SQL, tuple(values.values()))
    conn.execute("COMMIT")


async def sqlite_path(path_name: str, file: Path, size: Sizes) -> dict[str, float]:
    """One path's CPU (this process, threads included) and latency per committed row."""
    sync_engine = sa.create_engine(f"sqlite:///{file}")
    Base.metadata.create_all(sync_engine)
    sync_engine.dispose()
    db.ensure_wal(str(file))
    closers: list[Callable[[], Awaitable[None]]] = []
    if path_name == "raw":
        conn = raw_connection(file)

        async def op() -> None:
            raw_commit(conn)

        closers.append(lambda: asyncio.to_thread(conn.close))
    elif path_name == "raw_thread":
        thread = ThreadPoolExecutor(1)
        tconn = thread.submit(raw_connection, file).result()
        loop = asyncio.get_running_loop()

        async def op() -> None:
            await loop.run_in_executor(thread, raw_commit, tconn)

        async def close_thread() -> None:
            await loop.run_in_executor(thread, tconn.close)
            thread.shutdown()

        closers.append(close_thread)
    elif path_name == "core_loop":
        # The scheduler's per-run path: shared.db_transactions (a Core connection on the
        # loop's own thread), the statement on the sqlite3 driver under it (shared/sqlite_rows).
        loop_engine = db.create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{file}"))
        tx = db_transactions.transactions(loop_engine, db.sessionmaker(loop_engine))

        def insert_on_driver(conn: sa.Connection) -> None:
            values = row_values()
            values["created_at"] = values["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute(INSERT_SQL, tuple(values.values()))

        async def op() -> None:
            await tx.write(insert_on_driver)

        async def close_loop() -> None:
            await tx.close()
            await loop_engine.dispose()

        closers.append(close_loop)
    elif path_name == "core_sync":
        engine = sa.create_engine(f"sqlite:///{file}")
        sa.event.listen(engine, "connect", db._sqlite_pragmas)
        table = Row.__table__

        async def op() -> None:
            with engine.begin() as c:
                c.execute(sa.insert(table), row_values())

        closers.append(lambda: asyncio.to_thread(engine.dispose))
    else:
        aengine = db.create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{file}"))
        sessions = db.sessionmaker(aengine)
        table = Row.__table__
        if path_name == "core_async":

            async def op() -> None:
                async with aengine.begin() as c:
                    await c.execute(sa.insert(table), row_values())
        else:

            async def op() -> None:
                async with sessions() as session, session.begin():
                    session.add(Row(**row_values()))

        closers.append(aengine.dispose)
    try:
        await timed(size.warmup, op)
        cpu0 = self_cpu()
        samples = await timed(size.commit, op)
        cpu1 = self_cpu()
    finally:
        for close in closers:
            await close()
    return {"cpu_us": per_op_us(cpu1 - cpu0, size.commit), "latency_p50_us": p50_us(samples)}


async def sqlite_part(tmp: Path, size: Sizes) -> dict[str, dict[str, float]]:
    out = {}
    for name in SQLITE_PATHS:
        file = tmp / f"floor-{name}-{uuid.uuid4().hex[:6]}.db"
        out[f"sqlite_{name}"] = await sqlite_path(name, file, size)
    return out


# --- spawning ---------------------------------------------------------------------------------

TRUE = shutil.which("true") or "/bin/true"


def limited_argv() -> list[str] | None:
    """/bin/true under the local runner's setpriv + prlimit chain, if both are here."""
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if not (setpriv and prlimit):
        return None
    limits = ["--as=1073741824", "--cpu=60", "--fsize=1073741824", "--core=0", "--nproc=256"]
    return [setpriv, "--pdeathsig", "KILL", "--", prlimit, *limits, "--", TRUE]


async def spawn_part(size: Sizes, tmp: Path) -> dict[str, dict[str, float]]:
    out = {}

    async def measure(name: str, op: Callable[[], Awaitable[Any]]) -> None:
        await timed(size.warmup // 5 + 1, op)
        own0, kids0 = self_cpu(), children_cpu()
        samples = await timed(size.spawn, op)
        own1, kids1 = self_cpu(), children_cpu()
        out[f"spawn_{name}"] = {
            "parent_cpu_us": per_op_us(own1 - own0, size.spawn),
            "child_cpu_us": per_op_us(kids1 - kids0, size.spawn),
            "latency_p50_us": p50_us(samples),
        }

    async def with_asyncio(argv: list[str]) -> None:
        proc = await asyncio.create_subprocess_exec(*argv)
        await proc.wait()

    async def with_posix_spawn() -> None:
        # Blocking on purpose: the cheapest way a process can start and reap another.
        os.waitpid(os.posix_spawn(TRUE, [TRUE], {}), 0)  # noqa: ASYNC221, ASYNC222

    await measure("asyncio", lambda: with_asyncio([TRUE]))
    chain = limited_argv()
    if chain is not None:
        await measure("asyncio_limited", lambda: with_asyncio(chain))
    await measure("posix_spawn", with_posix_spawn)
    out["spawn_helper"] = await spawn_with_helper(size)
    out["spawn_forkserver"] = await spawn_with_forkserver(size, tmp)
    return out


# What the local runner sets on a run's process (local_runner.rlimits of default limits).
FORKSERVER_LIMITS = {
    "RLIMIT_AS": 2 << 30,
    "RLIMIT_CPU": 61,
    "RLIMIT_FSIZE": 1 << 30,
    "RLIMIT_CORE": 0,
} | ({"RLIMIT_NPROC": 256} if os.getuid() != 0 else {})


async def spawn_with_forkserver(size: Sizes, tmp: Path) -> dict[str, float]:
    """The executor's local fork server (services/executor/runners/forkserver.py): a request
    over its socket with the two output pipes, the fork, the child's set-up and exec, the exit
    status back. The child's CPU is the command's own wait4 rusage (its fork side included)."""
    server = ForkServer(tmp / "forkserver")
    work = tmp / "forkserver-work"
    work.mkdir(exist_ok=True)
    child_cpu = 0.0

    async def op() -> None:
        nonlocal child_cpu
        child = await server.spawn([TRUE], work, {}, FORKSERVER_LIMITS)
        child.stdout.close()
        child.stderr.close()
        _, usage = await child.exited
        child_cpu += usage.ru_utime + usage.ru_stime

    try:
        await timed(size.warmup // 5 + 1, op)
        assert server.pid is not None
        child_cpu = 0.0
        own0, server0 = self_cpu(), pid_cpu(server.pid)
        samples = await timed(size.spawn, op)
        own1, server1 = self_cpu(), pid_cpu(server.pid)
    finally:
        server.close()
    return {
        "parent_cpu_us": per_op_us(own1 - own0, size.spawn),
        "helper_cpu_us": per_op_us(server1 - server0, size.spawn),
        "child_cpu_us": per_op_us(child_cpu, size.spawn),
        "latency_p50_us": p50_us(samples),
    }


async def spawn_with_helper(size: Sizes) -> dict[str, float]:
    warmup = size.warmup // 5 + 1
    request = f"{TRUE}\n".encode()
    async with child_process("spawn-helper") as helper:

        async def op() -> None:
            helper.stdin.write(request)
            await helper.stdout.readline()

        await timed(warmup, op)
        own0, helper0 = self_cpu(), pid_cpu(helper.proc.pid)
        samples = await timed(size.spawn, op)
        own1, helper1 = self_cpu(), pid_cpu(helper.proc.pid)
        # The helper's children's CPU over the warm-up and the measured spawns.
        kids = float((await helper.close()).split()[-1])
    return {
        "parent_cpu_us": per_op_us(own1 - own0, size.spawn),
        "helper_cpu_us": per_op_us(helper1 - helper0, size.spawn),
        "child_cpu_us": per_op_us(kids, size.spawn + warmup),
        "latency_p50_us": p50_us(samples),
    }


# --- composing --------------------------------------------------------------------------------


def median_rounds(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each figure's median over the rounds."""
    out: dict[str, dict[str, float]] = {}
    for name, figures in rounds[0].items():
        out[name] = {
            key: round(statistics.median(r[name][key] for r in rounds), 1) for key in figures
        }
    return out


@dataclass
class Paths:
    """Which measured primitive stands for each kind of work."""

    rpc: str  # grpc_unary_<rpc> / grpc_stream_<rpc>: SubmitRun, WatchRun, unary calls
    link: str  # grpc_bidi_exchange_<link>: the run link's messages
    scheduler_commit: str  # the scheduler's per-run transactions
    executor_commit: str  # the executor's outbox commits made on its loop
    executor_commit_thread: str  # its outbox commits and lookups in the writer's thread
    background_commit: str  # SQLAlchemy session transactions (background loops, marks)
    spawn: str


TODAY = Paths(
    rpc="runbox",
    link="runbox",
    scheduler_commit="sqlite_core_loop",
    executor_commit="sqlite_raw",
    executor_commit_thread="sqlite_raw_thread",
    background_commit="sqlite_orm_async",
    spawn="spawn_forkserver",
)


def cheapest(p: dict[str, dict[str, float]]) -> Paths:
    """Each kind of work at its cheapest measured path: gRPC setup and SQLite path by the CPU
    of the services' side, the spawn by the machine's (parent, helper and child)."""

    def both(key: str) -> float:
        return p[key]["client_cpu_us"] + p[key]["server_cpu_us"]

    rpc = min(GRPC_VARIANTS, key=lambda v: both(f"grpc_unary_{v}"))
    link = min(
        (v for v in GRPC_VARIANTS if f"grpc_bidi_exchange_{v}" in p),
        key=lambda v: both(f"grpc_bidi_exchange_{v}"),
    )
    commits = [f"sqlite_{name}" for name in SQLITE_PATHS]
    commit = min(commits, key=lambda k: p[k]["cpu_us"])
    spawns = [k for k in p if k.startswith("spawn_") and k != "spawn_asyncio_limited"]
    spawn = min(spawns, key=lambda k: spawn_service_cpu(p[k]) + spawn_outside_cpu(p[k]))
    return Paths(
        rpc=rpc,
        link=link,
        scheduler_commit=commit,
        executor_commit=commit,
        executor_commit_thread=commit,
        background_commit=commit,
        spawn=spawn,
    )


def spawn_service_cpu(figures: dict[str, float]) -> float:
    """What a spawn costs the service (the executor): the parent's side."""
    return figures["parent_cpu_us"]


def spawn_outside_cpu(figures: dict[str, float]) -> float:
    """What a spawn costs outside the service: the started process, and the helper (the
    fork server) that started it if there is one (the benchmark's `executor_children`)."""
    return figures["child_cpu_us"] + figures.get("helper_cpu_us", 0.0)


def further_messages(counts: dict[str, float]) -> float:
    """Streamed messages beyond the first of each stream."""
    return max(counts["rpc_watchrun_messages"] - counts["rpc_watchrun_streams"], 0.0)


def cpu_breakdown_us(
    p: dict[str, dict[str, float]], counts: dict[str, float], paths: Paths
) -> dict[str, dict[str, float]]:
    """The three services' CPU per run, by service and primitive, in µs."""
    unary, stream = p[f"grpc_unary_{paths.rpc}"], p[f"grpc_stream_{paths.rpc}"]
    bidi = p[f"grpc_bidi_exchange_{paths.link}"]
    # A stream of n messages: the one-message stream, plus a message on an open stream (half
    # an exchange of the same setup) per further one.
    extra_message = p[f"grpc_bidi_exchange_{paths.rpc}"]["server_cpu_us"] / 2
    # A link message costs each side half an exchange (one message each way).
    link_messages = counts["link_messages_to_executor"] + counts["link_messages_to_scheduler"]
    publish = p["jetstream_publish"]["publisher_cpu_us"]
    background = p[paths.background_commit]["cpu_us"]
    return {
        "scheduler": {
            "rpc_submitrun_server": counts["rpc_submitrun"] * unary["server_cpu_us"],
            "rpc_watchrun_server": counts["rpc_watchrun_streams"] * stream["server_cpu_us"]
            + further_messages(counts) * extra_message,
            "rpc_resolveversion_client": counts["rpc_resolveversion"] * unary["client_cpu_us"],
            "rpc_execute_client": counts["rpc_execute"] * unary["client_cpu_us"],
            "link": link_messages * bidi["client_cpu_us"] / 2,
            "jetstream_publish": counts["jetstream_publishes_scheduler"] * publish,
            "jetstream_consume": counts["jetstream_consumptions_scheduler"]
            * p["jetstream_consume"]["consumer_cpu_us"],
            "sqlite": counts["sqlite_transactions_scheduler_core"]
            * p[paths.scheduler_commit]["cpu_us"]
            + counts["sqlite_transactions_scheduler_orm"] * background,
        },
        "catalogue": {
            "rpc_resolveversion_server": counts["rpc_resolveversion"] * unary["server_cpu_us"],
        },
        "executor": {
            "rpc_execute_server": counts["rpc_execute"] * unary["server_cpu_us"],
            "link": link_messages * bidi["server_cpu_us"] / 2,
            "jetstream_publish": counts["jetstream_publishes_executor"] * publish,
            "sqlite": counts["sqlite_transactions_executor_raw"]
            * p[paths.executor_commit]["cpu_us"]
            + counts["sqlite_transactions_executor_raw_thread"]
            * p[paths.executor_commit_thread]["cpu_us"]
            + counts["sqlite_transactions_executor_orm"] * background,
            "spawn_parent": counts["spawns"] * spawn_service_cpu(p[paths.spawn]),
        },
    }


def outside_us(
    p: dict[str, dict[str, float]], counts: dict[str, float], paths: Paths
) -> dict[str, float]:
    """What a run costs the machine outside the three services, in µs: the client's side of
    SubmitRun and WatchRun, nats-server's side of the publishes and deliveries, the fork
    server (or helper) and the run's own process."""
    unary, stream = p[f"grpc_unary_{paths.rpc}"], p[f"grpc_stream_{paths.rpc}"]
    extra_message = p[f"grpc_bidi_exchange_{paths.rpc}"]["client_cpu_us"] / 2
    publish, consume = p["jetstream_publish"], p["jetstream_consume"]
    publishes = counts["jetstream_publishes_scheduler"] + counts["jetstream_publishes_executor"]
    # A delivery's share of nats-server: the consume primitive's (publish included) less the
    # publish's.
    delivery = max(consume["nats_server_cpu_us_with_publish"] - publish["nats_server_cpu_us"], 0.0)
    return {
        "client": counts["rpc_submitrun"] * unary["client_cpu_us"]
        + counts["rpc_watchrun_streams"] * stream["client_cpu_us"]
        + further_messages(counts) * extra_message,
        "nats_server": publishes * publish["nats_server_cpu_us"]
        + counts["jetstream_consumptions_scheduler"] * delivery,
        "forkserver_and_child": counts["spawns"] * spawn_outside_cpu(p[paths.spawn]),
    }


def one_call(counts: dict[str, float]) -> dict[str, float]:
    """The counts with SubmitRun folded into the stream (one call that submits and streams
    the run's states, SubmitAndWatchRun): no unary SubmitRun, the stream's messages as
    WatchRun's."""
    return counts | {"rpc_submitrun": 0.0}


def total_ms(breakdown: dict[str, dict[str, float]]) -> float:
    return round(sum(sum(parts.values()) for parts in breakdown.values()) / 1000, 2)


def by_service_ms(breakdown: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each service's floor, its total first, in ms."""
    return {
        service: {"total": round(sum(parts.values()) / 1000, 3)}
        | {name: round(us / 1000, 3) for name, us in parts.items()}
        for service, parts in breakdown.items()
    }


def latency_ms(p: dict[str, dict[str, float]], paths: Paths) -> float:
    """The critical path at 1 in flight (module docstring), in ms."""
    unary = p[f"grpc_unary_{paths.rpc}"]["latency_p50_us"]
    link = p[f"grpc_bidi_exchange_{paths.link}"]["latency_p50_us"]
    steps = [
        unary / 2,  # SubmitRun's request reaches the scheduler
        p[paths.scheduler_commit]["latency_p50_us"],  # the submit commit
        link / 2,  # Execute down the link
        p[paths.executor_commit]["latency_p50_us"],  # the acceptance (QUEUED)
        p[paths.spawn]["latency_p50_us"],  # the run's process, started and reaped
        p[paths.executor_commit]["latency_p50_us"],  # FINISHED
        link / 2,  # FINISHED up the link
        p[paths.scheduler_commit]["latency_p50_us"],  # the apply
        unary / 2,  # the stream pushes the ended run
    ]
    return round(sum(steps) / 1000, 2)


def machine(
    p: dict[str, dict[str, float]], counts: dict[str, float], paths: Paths, cores: int
) -> dict[str, Any]:
    """The machine's CPU per run (services + outside) and the runs/s it allows on `cores`."""
    services = cpu_breakdown_us(p, counts, paths)
    outside = outside_us(p, counts, paths)
    cpu_ms = round(total_ms(services) + sum(outside.values()) / 1000, 2)
    return {
        "cpu_ms_per_run": cpu_ms,
        "services_cpu_ms_per_run": total_ms(services),
        "outside_cpu_ms_per_run": {k: round(v / 1000, 3) for k, v in outside.items()},
        "max_runs_per_s": round(cores * 1000 / cpu_ms, 1),
        "latency_ms_c1": latency_ms(p, paths),
    }


def celery_requirements(celery: dict[str, Any], cores: int) -> dict[str, float]:
    """What the issue's Celery-relative targets require of a run on this machine.

    - runs/s at 32 in flight >= 0.5x Celery's: the machine's CPU per run at most
      cores / (0.5 x Celery's tasks/s);
    - p50 at 4 in flight <= 2x Celery's: saturated, p50 ~= in flight / throughput
      = 4 x CPU per run / cores, so CPU per run at most 2 x Celery's p50 x cores / 4; and
      the unloaded critical path at most 2 x Celery's p50 as well."""
    tps_c32 = float(celery["celery_tasks_per_s_c32"])
    p50_c4 = float(celery["celery_roundtrip_p50_ms_c4"])
    return {
        "celery_tasks_per_s_c32": tps_c32,
        "celery_roundtrip_p50_ms_c4": p50_c4,
        "runs_per_s_c32_needed": round(0.5 * tps_c32, 1),
        "max_machine_cpu_ms_per_run_for_throughput": round(cores * 1000 / (0.5 * tps_c32), 3),
        "p50_ms_c4_allowed": round(2 * p50_c4, 3),
        "max_machine_cpu_ms_per_run_for_p50_c4": round(2 * p50_c4 * cores / 4, 3),
        "max_latency_ms_for_p50_c4": round(2 * p50_c4, 3),
    }


def verdicts(
    floors: dict[str, dict[str, Any]], needs: dict[str, float], cores: int
) -> dict[str, dict[str, Any]]:
    """Per composition, whether its floor already misses each Celery-relative target."""
    out = {}
    for name, floor in floors.items():
        cpu = floor["cpu_ms_per_run"]
        # At 4 in flight: no better than the unloaded path, nor than 4 runs over throughput.
        p50_c4 = round(max(floor["latency_ms_c1"], 4 * cpu / cores), 3)
        out[name] = {
            "throughput_c32_reachable": cpu <= needs["max_machine_cpu_ms_per_run_for_throughput"],
            # What the floor leaves a run for everything that is not a primitive (the
            # services' own code, the benchmark's overhead): negative when out of reach.
            "throughput_c32_headroom_ms": round(
                needs["max_machine_cpu_ms_per_run_for_throughput"] - cpu, 3
            ),
            "throughput_c32_floor_ratio": round(
                floor["max_runs_per_s"] / needs["celery_tasks_per_s_c32"], 3
            ),
            "p50_c4_floor_ms": p50_c4,
            "p50_c4_reachable": p50_c4 <= needs["p50_ms_c4_allowed"],
            "p50_c4_headroom_ms": round(needs["max_machine_cpu_ms_per_run_for_p50_c4"] - cpu, 3),
            "p50_c4_floor_ratio": round(p50_c4 / needs["celery_roundtrip_p50_ms_c4"], 3),
        }
    return out


def outside_measured(floor: dict[str, Any], counted: dict[str, Any], cores: int) -> dict[str, Any]:
    """`floor` with what is outside the services as a floor_counts.py line measured it (its
    client, nats-server, the executor's children) instead of their primitives' floor."""
    outside = {
        "client": counted["client_cpu_ms_per_run"],
        "nats_server": counted["nats_server_cpu_ms_per_run"],
        "forkserver_and_child": counted["cpu_ms_per_run"]["executor_children"],
    }
    cpu_ms = round(floor["services_cpu_ms_per_run"] + sum(outside.values()), 2)
    return floor | {
        "cpu_ms_per_run": cpu_ms,
        "outside_cpu_ms_per_run": outside,
        "max_runs_per_s": round(cores * 1000 / cpu_ms, 1),
    }


def compose(
    p: dict[str, dict[str, float]],
    counts: dict[str, float],
    cores: int,
    celery: dict[str, Any] | None = None,
    counted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    lean = cheapest(p)
    today = cpu_breakdown_us(p, counts, TODAY)
    floors = {
        "today": machine(p, counts, TODAY, cores),
        "today_one_call": machine(p, one_call(counts), TODAY, cores),
        "lean": machine(p, counts, lean, cores),
        "minimal": machine(p, MINIMAL_COUNTS, lean, cores),
        "minimal_one_call": machine(p, one_call(MINIMAL_COUNTS), lean, cores),
    }
    if counted is not None and "client_cpu_ms_per_run" in counted:
        floors["today_outside_measured"] = outside_measured(floors["today"], counted, cores)
    out: dict[str, Any] = {
        "per_run_counts": counts,
        "minimal_counts": MINIMAL_COUNTS,
        "floor_cpu_ms_per_run": total_ms(today),
        "floor_cpu_ms_per_run_by_service": by_service_ms(today),
        "floor_cpu_ms_per_run_one_call": total_ms(cpu_breakdown_us(p, one_call(counts), TODAY)),
        "floor_cpu_ms_per_run_lean": total_ms(cpu_breakdown_us(p, counts, lean)),
        "floor_cpu_ms_per_run_minimal": total_ms(cpu_breakdown_us(p, MINIMAL_COUNTS, lean)),
        "floor_cpu_ms_per_run_minimal_one_call": total_ms(
            cpu_breakdown_us(p, one_call(MINIMAL_COUNTS), lean)
        ),
        "floor_latency_ms_c1": latency_ms(p, TODAY),
        "floor_latency_ms_c1_lean": latency_ms(p, lean),
        "today_paths": vars(TODAY),
        "lean_paths": vars(lean),
        "outside_services_cpu_ms_per_run": floors["today"]["outside_cpu_ms_per_run"],
        "cores": cores,
        "floor_machine_cpu_ms_per_run": floors["today"]["cpu_ms_per_run"],
        "floor_max_runs_per_s": floors["today"]["max_runs_per_s"],
        "floor_machine": floors,
        "targets": {"cpu_ms_per_run": 4.0, "roundtrip_p50_ms_c1": 15.0},
    }
    if celery is not None:
        needs = celery_requirements(celery, cores)
        out["celery_requirements"] = needs
        out["celery_verdicts"] = verdicts(floors, needs, cores)
    return out


def explain(line: dict[str, Any]) -> None:
    """The verdicts in words, on stderr."""
    log(
        f"machine floor per run: {line['floor_machine_cpu_ms_per_run']} ms of CPU "
        f"(services {line['floor_cpu_ms_per_run']}), at most {line['floor_max_runs_per_s']} "
        f"runs/s on {line['cores']} cores"
    )
    if "celery_verdicts" not in line:
        return
    needs = line["celery_requirements"]
    log(
        f"runs/s >= 0.5x Celery's c32 ({needs['celery_tasks_per_s_c32']}/s) needs <= "
        f"{needs['max_machine_cpu_ms_per_run_for_throughput']} ms of machine CPU a run; p50 at "
        f"4 in flight <= 2x Celery's ({needs['celery_roundtrip_p50_ms_c4']} ms) needs <= "
        f"{needs['max_machine_cpu_ms_per_run_for_p50_c4']} ms a run and a critical path <= "
        f"{needs['max_latency_ms_for_p50_c4']} ms"
    )
    for name, verdict in line["celery_verdicts"].items():
        floor = line["floor_machine"][name]

        def word(ok: bool) -> str:
            return "reachable" if ok else "OUT OF REACH"

        log(
            f"{name}: {floor['cpu_ms_per_run']} ms a run -> throughput "
            f"{word(verdict['throughput_c32_reachable'])} "
            f"({verdict['throughput_c32_floor_ratio']}x Celery at most, "
            f"{verdict['throughput_c32_headroom_ms']} ms a run left), p50 c4 "
            f"{word(verdict['p50_c4_reachable'])} (floor {verdict['p50_c4_floor_ms']} ms, "
            f"{verdict['p50_c4_floor_ratio']}x Celery at least, "
            f"{verdict['p50_c4_headroom_ms']} ms a run left)"
        )


# --- main -------------------------------------------------------------------------------------


async def one_round(
    tmp: Path, server: natsd.NatsServer, size: Sizes
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for variant in GRPC_VARIANTS:
        log(f"grpc {variant}")
        out |= await grpc_variant(variant, size)
    log("jetstream")
    out |= await jetstream_part(server.url, server.process.pid, size)
    log("sqlite")
    out |= await sqlite_part(tmp, size)
    log("spawn")
    out |= await spawn_part(size, tmp)
    return out


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    size = sizes(args.smoke, args.scale)
    server = natsd.start(tmp / "nats", preexec_fn=preexec())
    try:
        rounds = []
        for number in range(args.rounds):
            log(f"round {number + 1} of {args.rounds}")
            rounds.append(await one_round(tmp, server, size))
            log(json.dumps(rounds[-1]))
    finally:
        server.stop()
    return {
        "benchmark": "floor",
        "rounds": args.rounds,
        "ops_per_round": vars(size),
        "event_loop": type(asyncio.get_running_loop()).__module__,
        "primitives": median_rounds(rounds),
    }


def composed(args: argparse.Namespace, line: dict[str, Any]) -> dict[str, Any]:
    """A line of measured primitives with the composition of the counts and Celery figures
    the arguments name."""
    counted = read_counts(args.counts)
    cores = len(os.sched_getaffinity(0))
    return {
        **line,
        **compose(
            line["primitives"], run_counts(counted), cores, read_celery(args.celery), counted
        ),
        **measured(counted),
    }


def read_counts(path: Path | None) -> dict[str, Any] | None:
    """The line of floor_counts.py in the file, if one is given."""
    if path is None:
        return None
    line: dict[str, Any] = json.loads(path.read_text().strip().splitlines()[-1])
    missing = set(RUN_COUNTS) - set(line.get("counts", {}))
    if missing:
        raise SystemExit(f"--counts {path}: no {sorted(missing)}")
    return line


def read_celery(path: Path | None) -> dict[str, Any] | None:
    """The Celery figures of a benchmarks/scheduler.py line (--only roundtrip, with 4 and 32
    in flight among its concurrencies), if a file is given."""
    if path is None:
        return None
    line: dict[str, Any] = json.loads(path.read_text().strip().splitlines()[-1])
    missing = {"celery_tasks_per_s_c32", "celery_roundtrip_p50_ms_c4"} - set(line)
    if missing:
        raise SystemExit(f"--celery {path}: no {sorted(missing)} (4 and 32 in flight needed)")
    return line


def run_counts(line: dict[str, Any] | None) -> dict[str, float]:
    """RUN_COUNTS, or those of a floor_counts.py line."""
    if line is None:
        return RUN_COUNTS
    return {key: float(line["counts"][key]) for key in RUN_COUNTS}


def measured(line: dict[str, Any] | None) -> dict[str, Any]:
    """What the real round trip of a floor_counts.py line cost per run, beside the floor:
    CPU per service and each service's idle CPU per second (timers, sweeps)."""
    if line is None:
        return {}
    return {
        "measured_in_flight": line.get("in_flight", 1),
        "measured_roundtrip_p50_ms": line["roundtrip_p50_ms"],
        "measured_cpu_ms_per_run_by_service": line["cpu_ms_per_run"],
        "measured_nats_server_cpu_ms_per_run": line.get("nats_server_cpu_ms_per_run"),
        "measured_client_cpu_ms_per_run": line.get("client_cpu_ms_per_run"),
        "measured_idle_cpu_ms_per_s": line["idle_cpu_ms_per_s"],
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="default 3 (--smoke: 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="operations per primitive x this")
    parser.add_argument("--smoke", action="store_true", help="a small size, for tests")
    parser.add_argument(
        "--counts",
        type=Path,
        help="a line of benchmarks/floor_counts.py: its per-run counts instead of RUN_COUNTS",
    )
    parser.add_argument(
        "--celery",
        type=Path,
        help="a line of benchmarks/scheduler.py --only roundtrip: what its Celery figures"
        " require of a run, and whether the floor meets it",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the event loop of this process and its children (RUNBOX_EVENT_LOOP's choices;"
        " default auto: uvloop where installed, as the services)",
    )
    parser.add_argument(
        "--primitives",
        type=Path,
        help="a line of this benchmark: compose its primitives again (with --counts, --celery)"
        " instead of measuring",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.smoke else 3
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    return args


def run(main: Awaitable[T]) -> T:
    """`main` on the event loop RUNBOX_EVENT_LOOP names (set by the parent for its children),
    as the services run (shared/entrypoint.py)."""
    factory = loop_factory(os.environ.get("RUNBOX_EVENT_LOOP", "auto"))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)  # type: ignore[arg-type]


def child(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "grpc":
        run(serve_grpc(rest[0], rest[1]))
    elif kind == "consume":
        run(consume(rest[0], rest[1], int(rest[2]), int(rest[3])))
    elif kind == "spawn-helper":
        spawn_helper()
    else:
        raise SystemExit(f"unknown child {kind}")


def main() -> None:
    args = parse()
    if args.child:
        child(args.child)
        return
    if args.primitives is not None:
        keep = ("benchmark", "rounds", "ops_per_round", "event_loop", "primitives")
        earlier = json.loads(args.primitives.read_text().strip().splitlines()[-1])
        line = composed(args, {key: earlier[key] for key in keep})
    else:
        os.environ["RUNBOX_EVENT_LOOP"] = args.loop  # this process's loop and its children's
        grpc.aio.init_grpc_aio()
        with tempfile.TemporaryDirectory(prefix="runbox-floor-bench-") as tmp_name:
            line = composed(args, run(measure(args, Path(tmp_name))))
    explain(line)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
