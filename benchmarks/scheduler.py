"""Scheduler benchmark: cron firing at scale against a no-op executor, and the submit round
trip of a no-op run against Celery with Redis.

(a) Firing. --schedules cron schedules `* * * * *` (UTC) are created through CreateSchedule on a
real scheduler (`python -m services.scheduler`, its own process; a fresh SQLite file, or a fresh
database on the PostgreSQL server of --database-url) with a real catalogue (its own process)
holding one no-op script. --replicas N (a server database only) starts N scheduler processes,
each its own instance id, on the same database, catalogue, executor and NATS; the schedules are
created and the runs read back through the first, and every figure covers all of them. Their concurrency policy is ALLOW, so every nominal time should create
a run whatever the runs before it do; their window starts at the first minute boundary after the
creations are expected to be done and ends just after --minutes boundaries, so each fires
--minutes times (fewer if it was created after the start). The executor is a no-op
ExecutorService inside this process: it accepts every Execute and a reporter process of its own
publishes QUEUED, STARTED and FINISHED (SUCCEEDED) RunEvents to JetStream as the real executor does (same subject, Nats-Msg-Id
and fields, built by services/executor/events.py), so runs complete and the scheduler does all
of its per-run work (dispatch, applying events, run-end hooks). Measured per fire:

- lateness: the run's create_time minus its nominal time (ListRuns after the window; the nominal
  time is in the run's idempotency key `schedule:<id>:<nominal UTC>`), 0 for a run made ahead
  of its nominal time (it is due then, at the earliest; runs_created_ahead counts them). Two
  more: the FIRED ScheduleEvent received by this process (committed and published) and the
  Execute received by the no-op executor (execute_lateness), each minus the nominal time;
- duplicates: (schedule, nominal time) pairs with more than one run;
- misses: nominal times of the window (every minute from each schedule's first next_fire_time to
  the window's last boundary) without a run, once every one of them has a fire record (or after
  RECORD_WAIT_S); the records by outcome (fired, skipped, missed) are reported beside them;
- the scheduler's RSS (VmRSS once every run ended, and VmHWM, its peak; the largest replica's)
  and CPU seconds (utime + stime from /proc/<pid>/stat, all replicas) from the first boundary
  until every run ended, also per run.

(b) Round trip. For each of --concurrencies (default 1,4,32) in turn, --runs runs of a no-op
LOCAL script (the allow-listed /bin/true) through a real catalogue, executor (backend local) and
scheduler, each its own process (started once for every concurrency), that many in flight:
one SubmitAndWatchRun call per run, submit -> SUCCEEDED on its stream (the scheduler's own
state, pushed when it applies the executor's FINISHED event; until issue 15's s7-watch the
client made SubmitRun then WatchRun). Right after, against Celery with Redis (database 15 of --redis-url,
flushed before and after; nothing else on the server is touched): a worker process with that
many prefork processes and a no-op task; apply_async -> result.get(), that many in flight.
Throughput is completed runs (tasks) over wall time at that concurrency. Same N, same
concurrency, same run; --runs / 20 (at least 10) warm-up round trips on each side first.
runbox_phases_p50_ms splits the Runbox round trip by the run's own timestamps (PHASES) and
runbox_event_hops_p50_ms by the RunEvents tapped on NATS (EVENT_MARKS). runbox_cpu_ms_per_run is
the CPU (utime + stime, /proc/<pid>/stat) of catalogue + scheduler + executor during the measured
runs over their number, also per service (the executor's reaped children, the /bin/true
processes, apart). Each figure has the suffix _c<in flight>; those of --concurrency (default 4)
are also given without it. scheduler_report.py builds the line: ratios to Celery, the targets of
issue 15 and `met`.

Progress goes to stderr; the last line on stdout is one JSON object. --only runs one part;
--smoke is a small size (20 schedules x 1 minute, 40 runs) for tests; --keep-logs keeps the
services' logs (the temporary directory is removed at the end); the services log at WARNING
unless BENCH_SERVICE_LOG_LEVEL says otherwise (e.g. INFO, to see what --keep-logs keeps).

    pip install -e '.[bench]'   # celery[redis]; Redis listening on --redis-url
    .venv/bin/python benchmarks/scheduler.py [--schedules 10000 --minutes 5] [--runs 2000]
        [--concurrencies 1,4,32] [--database-url postgresql+asyncpg://... [--replicas 2]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Before grpc is imported: no fork handlers (why: benchmarks/children.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
import nats  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from benchmarks.children import preexec  # noqa: E402

try:
    import redis
    from celery import Celery
except ImportError as missing:  # the `bench` extra
    raise SystemExit(f"{missing.name} is missing: pip install -e '.[bench]'") from missing

from benchmarks import scheduler_report as report  # noqa: E402
from benchmarks.catalogue import postgres_database  # noqa: E402
from cli import natsd  # noqa: E402
from cli.stack import ensure_tokens, wait_healthy  # noqa: E402
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc  # noqa: E402
from runbox.common.v1 import common_pb2  # noqa: E402
from runbox.events.v1 import events_pb2  # noqa: E402
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc  # noqa: E402
from runbox.scheduler.v1 import scheduler_pb2 as pb  # noqa: E402
from runbox.scheduler.v1 import scheduler_pb2_grpc  # noqa: E402
from services.executor.events import RunContext, build_event, finished_fields  # noqa: E402
from services.executor.runners.base import Outcome  # noqa: E402
from services.scheduler import state as sm  # noqa: E402
from shared.clients import open_channel  # noqa: E402
from shared.run_subjects import run_subject  # noqa: E402

RS = common_pb2.RunState
SE = events_pb2.ScheduleEventType
PREFIX = "runbox.events"  # the services' default subjects prefix
SCRIPT = "noop"
NOOP_EXECUTOR_ID = "noop-executor"
MINUTE = timedelta(minutes=1)
# CreateSchedule calls in flight, and the creation rate assumed when choosing the window start.
CREATE_CONCURRENCY = 16
CREATE_RATE_GUESS = 100.0
# How long after the window's last boundary (+50 s) every nominal time may take to be recorded
# (claimed later than the misfire grace, a fire is recorded MISSED, without a run).
RECORD_WAIT_S = 300
CELERY_DB = 15
CELERY_TASK = "bench.noop"


def log(message: str) -> None:
    print(f"[scheduler-bench] {message}", file=sys.stderr, flush=True)


def pct(samples: list[float], scale: float = 1.0, digits: int = 3) -> tuple[float, float]:
    """p50 and p99 (nearest rank) of samples, times scale."""
    if not samples:
        return math.nan, math.nan
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return round(statistics.median(ordered) * scale, digits), round(p99 * scale, digits)


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def proc_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of a process, and of its waited-for children."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def proc_usage(pid: int) -> tuple[float, float, float]:
    """CPU seconds (user + system), VmRSS and VmHWM (MB) of a process."""
    cpu, _ = proc_cpu(pid)
    memory = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = round(int(value.split()[0]) / 1024, 1)
    return cpu, memory["VmRSS"], memory["VmHWM"]


# --- services as their own processes -------------------------------------------------------


@dataclass
class Process:
    """A service child process and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    address: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Env:
    """What every service of one part shares."""

    tmp: Path
    nats_url: str
    admin: str
    service_token: str
    part: str = ""  # names each service's database and log file
    started: list[Process] = field(default_factory=list)

    async def spawn(
        self, name: str, label: str = "", *, command: Sequence[str] = (), **extra: str
    ) -> Process:
        """`python -m services.<name>` on a free loopback port, healthy, logging to a file;
        label (default name) names its instance id and log file (replicas of one service);
        `command` replaces `-m services.<name>` (a wrapper that runs the module itself)."""
        label = label or name
        port = natsd.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
        env.update(
            RUNBOX_INSTANCE_ID=f"{label}-bench",
            RUNBOX_GRPC__HOST="127.0.0.1",
            RUNBOX_GRPC__PORT=str(port),
            RUNBOX_METRICS__PORT="-1",
            RUNBOX_DATABASE__URL=f"sqlite+aiosqlite:///{self.tmp / f'{name}-{self.part}.db'}",
            RUNBOX_NATS__URL=self.nats_url,
            RUNBOX_AUTH__PRINCIPALS_FILE=str(self.tmp / "principals.json"),
            RUNBOX_AUTH__SERVICE_TOKEN=self.service_token,
            RUNBOX_LOG__LEVEL=os.environ.get("BENCH_SERVICE_LOG_LEVEL", "WARNING"),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        log_file = self.tmp / f"{label}-{self.part}.log"
        argv = list(command) or ["-m", f"services.{name}"]
        proc = launch([sys.executable, *argv], env, log_file)
        process = Process(name, proc, f"127.0.0.1:{port}")
        self.started.append(process)
        await asyncio.to_thread(wait_healthy, process.address, proc, log_file, 60)
        return process

    def stop_all(self) -> None:
        """Scheduler first (it calls the others), then the rest."""
        for process in sorted(self.started, key=lambda p: p.name != "scheduler"):
            process.stop()
        self.started.clear()


def launch(
    argv: list[str], env: dict[str, str] | None, log_file: Path, **popen: Any
) -> subprocess.Popen[bytes]:
    with open(log_file, "ab") as out:  # the child keeps its own descriptor
        popen.setdefault("preexec_fn", preexec())  # dies with the benchmark
        return subprocess.Popen(argv, env=env, stdout=out, stderr=out, cwd=ROOT, **popen)


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
        await stub.PublishVersion(
            catalogue_pb2.PublishVersionRequest(
                script_name=SCRIPT, version="1.0.0", content=b"# runs /bin/true\n"
            )
        )


async def scheduler_database(
    args: argparse.Namespace, env: Env
) -> tuple[str, Callable[[], Awaitable[None]] | None]:
    """A fresh SQLite file, or a fresh database on the --database-url PostgreSQL server."""
    if not args.database_url:
        return f"sqlite+aiosqlite:///{env.tmp / f'scheduler-{env.part}.db'}", None
    if make_url(args.database_url).get_backend_name() != "postgresql":
        raise SystemExit("--database-url: a PostgreSQL server URL (SQLite is the default)")
    made = await postgres_database(args.database_url)
    if made is None:
        raise SystemExit(f"PostgreSQL unreachable at {args.database_url}")
    return made


# --- (a) firing ----------------------------------------------------------------------------


class NoopExecutor(executor_pb2_grpc.ExecutorServiceServicer):
    """Accepts every run and has it reported QUEUED, STARTED and SUCCEEDED at once, with the
    real executor's events (subject, Nats-Msg-Id, fields), published straight to JetStream by
    a reporter process (`report_runs`): publishing 30,000 events in the seconds after a
    boundary in this process held up the ExecuteBatch calls arriving meanwhile, so the
    Execute received figure measured this process's event loop (docs/benchmarks.md)."""

    def __init__(self, nats_url: str) -> None:
        self.received: dict[str, float] = {}  # run id -> wall time of its first Execute
        self.executes = 0
        context = multiprocessing.get_context("spawn")
        self._queue: Any = context.Queue()
        self._finished: Any = context.Value("q", 0)
        self._failures: Any = context.Value("q", 0)
        self._reporter = context.Process(
            target=report_runs,
            args=(nats_url, self._queue, self._finished, self._failures),
            daemon=True,
        )
        self._reporter.start()

    @property
    def finished(self) -> int:
        return int(self._finished.value)

    @property
    def failures(self) -> int:
        return int(self._failures.value)

    @property
    def reporter_pid(self) -> int:
        return int(self._reporter.pid or 0)

    def stop(self) -> None:
        self._queue.put(None)
        self._reporter.join(30)
        if self._reporter.is_alive():
            self._reporter.kill()

    def _accept(self, requests: list[executor_pb2.ExecuteRequest]) -> list[bool]:
        """Each run's receipt stamped; the new ones handed to the reporter in one message."""
        now = time.time()
        new = []
        fresh = []
        for request in requests:
            self.executes += 1
            first = request.run_id not in self.received
            new.append(first)
            if first:
                self.received[request.run_id] = now
                fresh.append(request.SerializeToString())
        if fresh:
            self._queue.put(fresh)
        return new

    @staticmethod
    def _accepted(run_id: str, new: bool) -> executor_pb2.ExecuteResponse:
        return executor_pb2.ExecuteResponse(
            run_id=run_id,
            executor_id=NOOP_EXECUTOR_ID,
            newly_accepted=new,
            accepted_at=ts(datetime.now(UTC)),
        )

    async def Execute(
        self, request: executor_pb2.ExecuteRequest, context: Any
    ) -> executor_pb2.ExecuteResponse:
        [new] = self._accept([request])
        return self._accepted(request.run_id, new)

    async def ExecuteBatch(
        self, request: executor_pb2.ExecuteBatchRequest, context: Any
    ) -> executor_pb2.ExecuteBatchResponse:
        """Each run as Execute takes it (the real executor's batch does the same)."""
        runs = list(request.runs)
        return executor_pb2.ExecuteBatchResponse(
            results=[
                executor_pb2.ExecuteResult(
                    run_id=run.run_id, accepted=self._accepted(run.run_id, new)
                )
                for run, new in zip(runs, self._accept(runs), strict=True)
            ]
        )


def report_runs(nats_url: str, queue: Any, finished: Any, failures: Any) -> None:
    """The no-op executor's reporter (its own process): the QUEUED, STARTED and FINISHED
    events of each accepted run, as the real executor publishes them when it has no run link
    to the scheduler (on their typed subjects: shared/run_subjects.py)."""
    asyncio.run(_report_runs(nats_url, queue, finished, failures))


async def _report_runs(nats_url: str, queue: Any, finished: Any, failures: Any) -> None:
    """Every batch taken at once (its publishes pipelined with the others'): waiting for one
    batch's acks before the next left the runs of a 10,000 burst's last batches unreported
    for more than a lease (they ended LOST)."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    while (batch := await loop.run_in_executor(None, queue.get)) is not None:
        task = asyncio.create_task(_report_batch(js, batch, finished, failures))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    await nc.close()


async def _report_batch(js: Any, batch: list[bytes], finished: Any, failures: Any) -> None:
    requests = [executor_pb2.ExecuteRequest.FromString(data) for data in batch]
    results = await asyncio.gather(
        *(_report(js, request) for request in requests), return_exceptions=True
    )
    for request, result in zip(requests, results, strict=True):
        if isinstance(result, BaseException):
            log(f"no-op executor: events of {request.run_id} not published: {result!r}")
            with failures.get_lock():
                failures.value += 1
        else:
            with finished.get_lock():
                finished.value += 1


async def _report(js: Any, request: executor_pb2.ExecuteRequest) -> None:
    ctx = RunContext(
        run_id=request.run_id,
        attempt=request.attempt or 1,
        script_name=request.script_name,
        script_version=request.script_version,
        execution_type=request.execution_type,
        executor_id=NOOP_EXECUTOR_ID,
        schedule_id=request.schedule_id,
        parent_run_id=request.parent_run_id,
        labels=dict(request.labels),
        trace_context=dict(request.trace_context),
    )
    now = datetime.now(UTC)
    outcome = Outcome(RS.RUN_STATE_SUCCEEDED, started_at=now, finished_at=now)
    empty = (b"", 0, False)
    events = [
        build_event(ctx, events_pb2.RUN_EVENT_TYPE_QUEUED, RS.RUN_STATE_QUEUED),
        build_event(
            ctx, events_pb2.RUN_EVENT_TYPE_STARTED, RS.RUN_STATE_RUNNING, started_at=ts(now)
        ),
        build_event(
            ctx,
            events_pb2.RUN_EVENT_TYPE_FINISHED,
            RS.RUN_STATE_SUCCEEDED,
            **finished_fields(outcome, empty, empty),
        ),
    ]
    acks = [
        await js.publish_async(
            run_subject(PREFIX, e.run_id, e.type),
            e.SerializeToString(),
            headers={**e.trace_context, "Nats-Msg-Id": e.event_id},
        )
        for e in events
    ]
    await asyncio.gather(*acks)


class FireEvents:
    """ScheduleEvents of every fire, from one JetStream subscription."""

    def __init__(self) -> None:
        self.fired: dict[tuple[str, datetime], float] = {}  # -> wall time received
        self.outcomes: dict[tuple[str, datetime], int] = {}

    async def on_message(self, msg: Any) -> None:
        event = events_pb2.ScheduleEvent.FromString(msg.data)
        if not event.HasField("fire_time"):
            return
        key = (event.schedule_id, event.fire_time.ToDatetime(UTC))
        self.outcomes.setdefault(key, event.type)
        if event.type == SE.SCHEDULE_EVENT_TYPE_FIRED:
            self.fired.setdefault(key, time.time())

    def recorded_at(self, nominal: datetime) -> int:
        return sum(1 for _, at in self.outcomes if at == nominal)


def timeline_all(run: pb.Run) -> list[timestamp_pb2.Timestamp]:
    return [run.create_time, run.queue_time, run.start_time, run.finish_time]


def nominal_of(run: pb.Run) -> datetime | None:
    """The nominal time in a fired run's idempotency key `schedule:<id>:<nominal UTC>`."""
    kind, _, rest = run.idempotency_key.partition(":")
    _, _, nominal = rest.partition(":")
    if kind != "schedule" or not nominal:
        return None
    return datetime.fromisoformat(nominal.replace("Z", "+00:00"))


async def all_runs(stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub) -> list[pb.Run]:
    runs: list[pb.Run] = []
    token = ""
    while True:
        # A page can wait behind the scheduler's backlog (a run still being completed):
        # generous deadline, as a reader of a busy system would allow.
        page = await stub.ListRuns(pb.ListRunsRequest(page_size=500, page_token=token), timeout=300)
        runs.extend(page.runs)
        token = page.next_page_token
        if not token:
            return runs


async def create_schedules(
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, count: int, start: datetime, end: datetime
) -> dict[str, datetime]:
    """Schedule id -> its first nominal time."""
    created: dict[str, datetime] = {}
    todo = iter(range(count))

    async def lane() -> None:
        for i in todo:
            schedule = pb.Schedule(
                name=f"bench-{i:06d}",
                script=common_pb2.ScriptRef(name=SCRIPT),
                trigger=pb.Trigger(cron=pb.CronSpec(expression="* * * * *")),
                time_zone="UTC",
                concurrency=pb.CONCURRENCY_POLICY_ALLOW,
                start_time=ts(start),
                end_time=ts(end),
            )
            reply = await stub.CreateSchedule(pb.CreateScheduleRequest(schedule=schedule))
            created[reply.id] = reply.next_fire_time.ToDatetime(UTC)
            if len(created) % 1000 == 0:
                log(f"  {len(created)} schedules created")

    await asyncio.gather(*(lane() for _ in range(CREATE_CONCURRENCY)))
    return created


async def wait_until(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


async def poll(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def ended(stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, timeout_s: float) -> bool:
    """Wait until the scheduler holds no PENDING, QUEUED or RUNNING run (bounded)."""
    active = [RS.RUN_STATE_PENDING, RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING]
    deadline = time.monotonic() + timeout_s
    while (await stub.ListRuns(pb.ListRunsRequest(page_size=1, states=active))).runs:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def firing(args: argparse.Namespace, env: Env) -> dict[str, Any]:
    nc = await nats.connect(env.nats_url)
    js = nc.jetstream()
    noop = NoopExecutor(env.nats_url)  # type: ignore[abstract]  # Execute(Batch) is all it needs
    server = grpc.aio.server()
    executor_pb2_grpc.add_ExecutorServiceServicer_to_server(noop, server)
    executor_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    database_url, drop = await scheduler_database(args, env)
    try:
        catalogue = await env.spawn("catalogue", RUNBOX_BLOB_DIR=str(env.tmp / f"blobs-{env.part}"))
        await publish_noop(catalogue.address, env.admin)
        # Replicas one after the other (each migrates the shared database, or finds it done).
        schedulers = [
            await env.spawn(
                "scheduler",
                label=f"scheduler-{i}" if args.replicas > 1 else "",
                RUNBOX_DATABASE__URL=database_url,
                RUNBOX_CATALOGUE__ADDRESS=catalogue.address,
                RUNBOX_EXECUTORS=json.dumps([f"127.0.0.1:{executor_port}"]),
            )
            for i in range(args.replicas)
        ]
        scheduler = schedulers[0]  # creates the schedules and reads the runs back
        events = FireEvents()
        await js.subscribe(f"{PREFIX}.schedule.>", cb=events.on_message, ordered_consumer=True)
        lead = timedelta(seconds=15 + args.schedules / CREATE_RATE_GUESS)
        start = (datetime.now(UTC) + lead + MINUTE).replace(second=0, microsecond=0)
        last = start + (args.minutes - 1) * MINUTE
        end = last + timedelta(seconds=1)  # end is exclusive: `last` is the final fire
        async with open_channel(scheduler.address, token=env.admin) as channel:
            stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub = (
                scheduler_pb2_grpc.SchedulerServiceStub(channel)
            )
            log(f"firing: creating {args.schedules} schedules, window {start:%H:%M}-{last:%H:%M}")
            began = time.perf_counter()
            firsts = await create_schedules(stub, args.schedules, start, end)
            create_s = time.perf_counter() - began
            log(f"firing: created in {create_s:.1f} s; first fires at {start:%H:%M:%S}")
            await wait_until(start - timedelta(seconds=1))
            cpu0 = [proc_usage(s.proc.pid)[0] for s in schedulers]
            reporter0 = proc_usage(noop.reporter_pid)[0]
            own0 = time.process_time()
            wall0 = time.monotonic()
            for minute in range(args.minutes):
                nominal = start + minute * MINUTE
                await wait_until(nominal + timedelta(seconds=50))
                log(
                    f"firing: {nominal:%H:%M} recorded {events.recorded_at(nominal)}"
                    f"/{args.schedules} after 50 s; {noop.finished} runs ended"
                )
            expected = {
                (sid, first + k * MINUTE)
                for sid, first in firsts.items()
                for k in range(max(0, int((last - first) / MINUTE) + 1))
            }
            # Every nominal time recorded (fired, skipped or missed): misses are then exact.
            if not await poll(lambda: len(events.outcomes) >= len(expected), RECORD_WAIT_S):
                log(f"firing: {len(expected) - len(events.outcomes)} fires unrecorded after wait")
            fired = len(events.fired)
            if not await poll(lambda: noop.finished + noop.failures >= fired, 120):
                log(f"firing: {fired - noop.finished} runs not reported by the executor in 120 s")
            if not await ended(stub, 60):
                log("firing: runs still active in the scheduler 60 s after their FINISHED")
            usage = [proc_usage(s.proc.pid) for s in schedulers]
            own = time.process_time() - own0
            reporter = proc_usage(noop.reporter_pid)[0] - reporter0
            spent = [cpu - before for (cpu, _, _), before in zip(usage, cpu0, strict=True)]
            rss, hwm = max(u[1] for u in usage), max(u[2] for u in usage)
            wall = time.monotonic() - wall0
            log("firing: reading runs back")
            runs = await all_runs(stub)
    finally:
        env.stop_all()
        await server.stop(None)
        noop.stop()
        await nc.close()
        if drop is not None:
            await drop()
    per_fire: Counter[tuple[str, datetime]] = Counter()
    lateness: list[float] = []
    dispatch: list[float] = []
    states: Counter[str] = Counter()
    unexpected = 0
    ahead = 0
    for run in runs:
        at = nominal_of(run)
        if at is None or (run.schedule_id, at) not in expected:
            continue
        per_fire[(run.schedule_id, at)] += 1
        # A run made ahead of its nominal time (materialised by the lookahead) is due, at the
        # earliest, at that time: it counts as on time here; when it was handed over is the
        # Execute lateness.
        created = (run.create_time.ToDatetime(UTC) - at).total_seconds()
        ahead += created < 0
        lateness.append(max(0.0, created))
        if run.id in noop.received:
            dispatch.append(noop.received[run.id] - at.timestamp())
        states[RS.Name(run.state).removeprefix("RUN_STATE_").lower()] += 1
        if run.state != RS.RUN_STATE_SUCCEEDED and unexpected < 5:
            unexpected += 1  # the first few, told in full on stderr
            stamps = zip(
                ("created", "queued", "started", "finished"), timeline_all(run), strict=True
            )
            log(
                f"firing: run {run.id} {RS.Name(run.state)} ({run.exit.message}); "
                + ", ".join(f"{k} {t.ToDatetime(UTC):%H:%M:%S.%f}" for k, t in stamps if t.seconds)
            )
    published = [at - n.timestamp() for (_, n), at in events.fired.items()]
    outcome_counts = Counter(
        SE.Name(kind).removeprefix("SCHEDULE_EVENT_TYPE_").lower()
        for key, kind in events.outcomes.items()
        if key in expected
    )
    late_p50, late_p99 = pct(lateness)
    event_p50, event_p99 = pct(published)
    dispatch_p50, dispatch_p99 = pct(dispatch)
    result = {
        "schedules": args.schedules,
        "minutes": args.minutes,
        "database": make_url(database_url).get_backend_name(),
        "scheduler_replicas": args.replicas,
        "create_s": round(create_s, 1),
        "expected_fires": len(expected),
        "runs": sum(per_fire.values()),
        "runs_by_state": dict(states),
        "lateness_p50_s": late_p50,
        "lateness_p99_s": late_p99,
        "lateness_max_s": round(max(lateness), 3) if lateness else None,
        "runs_created_ahead": ahead,
        "fired_event_lateness_p50_s": event_p50,
        "fired_event_lateness_p99_s": event_p99,
        "execute_lateness_p50_s": dispatch_p50,
        "execute_lateness_p99_s": dispatch_p99,
        "executes_received": len(dispatch),
        "duplicates": sum(n - 1 for n in per_fire.values() if n > 1),
        "misses": len(expected - set(per_fire)),
        "fire_records": dict(outcome_counts),
        "duplicate_executes": noop.executes - len(noop.received),
        "scheduler_rss_mb": rss,
        "scheduler_rss_peak_mb": hwm,
        "scheduler_cpu_s": round(sum(spent), 1),
        "scheduler_cpu_s_per_replica": [round(cpu, 1) for cpu in spent],
        "scheduler_cpu_share": round(sum(spent) / wall, 3),
        "scheduler_cpu_ms_per_run": round(1000 * sum(spent) / max(1, len(runs)), 2),
        # The benchmark's own process (the no-op executor, the ScheduleEvent subscription):
        # near 1.0, its event loop is a bottleneck and the lateness figures include it.
        "benchmark_process_cpu_share": round(own / wall, 3),
        "noop_reporter_cpu_share": round(reporter / wall, 3),
    }
    log(f"firing: {json.dumps(result)}")
    return result


# --- (b) round trip: Runbox ----------------------------------------------------------------


async def lanes(count: int, concurrency: int, one: Callable[[], Awaitable[float]]) -> list[float]:
    """`count` calls of `one`, `concurrency` at a time; their durations."""
    samples: list[float] = []
    left = count

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            samples.append(await one())

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return samples


def summary(samples: list[float], wall: float, prefix: str, unit: str) -> dict[str, float]:
    p50, p99 = pct(samples, 1000)
    return {
        f"{prefix}_roundtrip_p50_ms": p50,
        f"{prefix}_roundtrip_p99_ms": p99,
        f"{prefix}_{unit}_per_s": round(len(samples) / wall, 2),
    }


class RunboxClient:
    """Round trips of the no-op run through one scheduler, split into phases and hops."""

    def __init__(
        self, stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, script_version: str = ""
    ) -> None:
        self._stub = stub
        self._script = common_pb2.ScriptRef(name=SCRIPT, version=script_version)
        self.phases: dict[str, list[float]] = {name: [] for name in PHASES}
        # When each RunEvent reached NATS (this process's clock): splits the phases at the
        # hops between the services (EVENT_MARKS).
        self.seen: dict[tuple[str, int], float] = {}
        self.hops: dict[str, list[float]] = {name: [] for name in EVENT_MARKS}

    async def tap(self, msg: Any) -> None:
        event = events_pb2.RunEvent.FromString(msg.data)
        self.seen.setdefault((event.run_id, event.type), time.time())

    def clear(self) -> None:
        for samples in [*self.phases.values(), *self.hops.values()]:
            samples.clear()

    async def one(self) -> float:
        """Submit -> SUCCEEDED seen, in seconds: one SubmitAndWatchRun, as a caller that
        waits for its run makes it (SubmitRun then WatchRun before it existed)."""
        started, wall = time.perf_counter(), time.time()
        request = pb.SubmitAndWatchRunRequest(submit=pb.SubmitRunRequest(script=self._script))
        async for reply in self._stub.SubmitAndWatchRun(request, timeout=60):
            run = reply.run
            if reply.HasField("run") and sm.is_terminal(run.state):
                if run.state != RS.RUN_STATE_SUCCEEDED:
                    raise RuntimeError(f"run {run.id}: {RS.Name(run.state)} {run.exit}")
                elapsed = time.perf_counter() - started
                self._split(run.id, run, wall, elapsed)
                return elapsed
        raise RuntimeError("SubmitAndWatchRun ended before the run did")

    def _split(self, run_id: str, run: pb.Run, wall: float, elapsed: float) -> None:
        marks = [wall, *(t.ToDatetime(UTC).timestamp() for t in timeline(run)), wall + elapsed]
        for name, (begin, end) in zip(PHASES, pairwise(marks), strict=True):
            self.phases[name].append(end - begin)
        points = dict(zip(("submit", "created", "started", "finished", "seen"), marks, strict=True))
        for name, (first, kind, last) in EVENT_MARKS.items():
            at = self.seen.get((run_id, kind))
            if at is not None:
                self.hops[name].append(at - points[first] if last == "" else points[last] - at)

    def breakdown(self) -> dict[str, Any]:
        return {
            "runbox_phases_p50_ms": {k: pct(v, 1000)[0] for k, v in self.phases.items()},
            "runbox_event_hops_p50_ms": {k: pct(v, 1000)[0] for k, v in self.hops.items()},
        }


def services_cpu(services: list[Process]) -> dict[str, float]:
    """CPU seconds per service (utime + stime), and of the executor's children (the runs'
    processes, /bin/true, and a long-lived helper of the executor's that starts them: the
    local fork server, with the commands it reaped)."""
    out: dict[str, float] = {}
    for service in services:
        own, children = proc_cpu(service.proc.pid)
        out[service.name] = own
        if service.name == "executor":
            out["executor_children"] = children + live_children_cpu(service.proc.pid)
    return out


def live_children_cpu(pid: int) -> float:
    """CPU seconds of a process's live children and of the children they reaped."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += sum(proc_cpu(int(child)))
    return total


def cpu_per_run(before: dict[str, float], after: dict[str, float], runs: int) -> dict[str, Any]:
    """runbox_cpu_ms_per_run (catalogue + scheduler + executor) and per service."""
    spent = {name: 1000 * (after[name] - before[name]) / runs for name in before}
    out: dict[str, Any] = {"runbox_cpu_ms_per_run": round(sum(spent[name] for name in SERVICES), 2)}
    out |= {f"runbox_cpu_ms_per_run_{name}": round(ms, 2) for name, ms in spent.items()}
    out["runbox_cpu_ms_per_run_by_service"] = {name: round(spent[name], 2) for name in SERVICES}
    return out


async def runbox_roundtrip(
    args: argparse.Namespace, env: Env, tmp: Path, concurrencies: list[int]
) -> dict[str, Any]:
    """Runbox at each concurrency, Celery right after it (same window), on one set of
    services; each concurrency's figures with the suffix _c<concurrency>."""
    database_url, drop = await scheduler_database(args, env)
    results: dict[str, Any] = {}
    try:
        catalogue = await env.spawn("catalogue", RUNBOX_BLOB_DIR=str(env.tmp / f"blobs-{env.part}"))
        await publish_noop(catalogue.address, env.admin)
        most = max(concurrencies)
        executor = await env.spawn(
            "executor",
            RUNBOX_CATALOGUE__ADDRESS=catalogue.address,
            RUNBOX_SANDBOX__BACKEND="local",
            RUNBOX_LOCAL__COMMANDS=json.dumps({"true": "/bin/true"}),
            RUNBOX_MAX_CONCURRENT_RUNS=str(most),
            RUNBOX_MAX_QUEUED_RUNS=str(most * 4),
            RUNBOX_WORK_DIR=str(env.tmp / "work"),
        )
        scheduler = await env.spawn(
            "scheduler",
            RUNBOX_DATABASE__URL=database_url,
            RUNBOX_CATALOGUE__ADDRESS=catalogue.address,
            RUNBOX_EXECUTORS=json.dumps([executor.address]),
        )
        services = [catalogue, scheduler, executor]
        tap_nc = await nats.connect(env.nats_url)
        async with open_channel(scheduler.address, token=env.admin) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            client = RunboxClient(stub, args.script_version)
            await tap_nc.subscribe(f"{PREFIX}.run.>", cb=client.tap)
            await lanes(warmup(args.runs), 1, client.one)
            for concurrency in concurrencies:
                client.clear()
                log(f"runbox: {args.runs} runs, {concurrency} in flight")
                cpu0 = services_cpu(services)
                began = time.perf_counter()
                samples = await lanes(args.runs, concurrency, client.one)
                wall = time.perf_counter() - began
                cpu1 = services_cpu(services)
                runbox = summary(samples, wall, "runbox", "runs")
                runbox |= cpu_per_run(cpu0, cpu1, len(samples)) | client.breakdown()
                log(f"runbox: {runbox}")
                celery = await asyncio.to_thread(celery_roundtrip, args, tmp, concurrency)
                results |= report.suffixed(runbox | celery, concurrency)
        await tap_nc.close()
    finally:
        env.stop_all()
        if drop is not None:
            await drop()
    return results


SERVICES = ("catalogue", "scheduler", "executor")


# Where a Runbox round trip goes, between the client's clock and the run's own timestamps
# (one machine, one clock): submit -> created (the submit checks through the catalogue) ->
# started (dispatch, Execute, the executor spawning the command) -> finished (the command and
# the runner around it) -> SUCCEEDED seen (the executor's FINISHED event through its outbox,
# JetStream and the scheduler's consumer, then the watch stream). queue_time is left out: it is when
# the scheduler recorded the dispatch, which can come after the start.
PHASES = ("submit", "dispatch", "execute", "report")
RET = events_pb2.RunEventType
# Hops seen by tapping the RunEvents on NATS: name -> (mark, event type, mark): the time from
# the first mark to the event's arrival on NATS, or (with the second mark) from its arrival
# to that mark. created -> SUBMITTED (the scheduler's outbox relay), created -> QUEUED
# (dispatch and the executor accepting), started -> STARTED, finished -> FINISHED (the
# executor's outbox relay), FINISHED -> seen (the scheduler's consumer and the watch stream).
EVENT_MARKS: dict[str, tuple[str, int, str]] = {
    "created_to_submitted_event": ("created", RET.RUN_EVENT_TYPE_SUBMITTED, ""),
    "created_to_queued_event": ("created", RET.RUN_EVENT_TYPE_QUEUED, ""),
    "started_to_started_event": ("started", RET.RUN_EVENT_TYPE_STARTED, ""),
    "finished_to_finished_event": ("finished", RET.RUN_EVENT_TYPE_FINISHED, ""),
    "finished_event_to_seen": ("", RET.RUN_EVENT_TYPE_FINISHED, "seen"),
}


def timeline(run: pb.Run) -> list[timestamp_pb2.Timestamp]:
    return [run.create_time, run.start_time, run.finish_time]


def warmup(runs: int) -> int:
    return max(10, runs // 20)


# --- (b) round trip: Celery ----------------------------------------------------------------


def celery_app(redis_url: str) -> Celery:
    app = Celery("runbox-bench", broker=redis_url, backend=redis_url)
    app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

    @app.task(name=CELERY_TASK)  # type: ignore[untyped-decorator]
    def noop() -> None:
        return None

    return app


def celery_worker(redis_url: str, concurrency: int) -> None:
    """The worker process: prefork, `concurrency` children. Gossip, mingle and heartbeats
    (cluster chatter between workers) are off; the task path is unchanged."""
    celery_app(redis_url).worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def celery_roundtrip(args: argparse.Namespace, tmp: Path, concurrency: int) -> dict[str, Any]:
    """A worker with `concurrency` prefork processes, `concurrency` tasks in flight."""
    url = f"{args.redis_url.rstrip('/')}/{CELERY_DB}"
    db = redis.Redis.from_url(url)
    db.flushdb()
    worker = launch(
        [
            sys.executable,
            __file__,
            "--celery-worker",
            f"--redis-url={args.redis_url}",
            f"--concurrency={concurrency}",
        ],
        None,
        tmp / "celery.log",
        start_new_session=True,  # its prefork children are signalled with it
    )
    app = celery_app(url)
    task = app.tasks[CELERY_TASK]
    samples: list[float] = []
    lock = threading.Lock()
    try:
        task.apply_async().get(timeout=120)  # the worker is up
        for _ in range(warmup(args.runs)):
            task.apply_async().get(timeout=60)
        left = args.runs

        def lane() -> None:
            nonlocal left
            while True:
                with lock:
                    if left <= 0:
                        return
                    left -= 1
                started = time.perf_counter()
                task.apply_async().get(timeout=60)
                elapsed = time.perf_counter() - started
                with lock:
                    samples.append(elapsed)

        log(f"celery: {args.runs} tasks, {concurrency} in flight")
        began = time.perf_counter()
        threads = [threading.Thread(target=lane) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result = summary(samples, time.perf_counter() - began, "celery", "tasks")
    finally:
        app.close()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)  # warm shutdown of the worker and its pool
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        db.flushdb()
        db.close()
    if len(samples) != args.runs:
        raise RuntimeError(f"celery: {len(samples)} of {args.runs} tasks completed")
    log(f"celery: {result}")
    return result


# --- main ----------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = natsd.start(tmp / "nats", preexec_fn=preexec())
    admin_file, service_token = ensure_tokens(tmp)
    env = Env(tmp, server.url, admin_file.read_text().strip(), service_token)
    try:
        results: dict[str, Any] = {}
        if args.only in ("", "firing"):
            env.part = "firing"
            results["firing"] = await firing(args, env)
        if args.only in ("", "roundtrip"):
            env.part = "roundtrip"
            results["roundtrip"] = await runbox_roundtrip(args, env, tmp, args.concurrencies)
        return results
    finally:
        env.stop_all()
        server.stop()


def concurrencies(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"positive integers separated by commas, not {text!r}")
    return values


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, help="default 10000 (--smoke: 20)")
    parser.add_argument("--minutes", type=int, help="default 5 (--smoke: 1)")
    parser.add_argument("--runs", type=int, help="per concurrency; default 2000 (--smoke: 40)")
    parser.add_argument(
        "--concurrencies",
        type=concurrencies,
        default=[1, 4, 32],
        help="round trips in flight, each measured in turn (default 1,4,32)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="the reference concurrency: its figures also appear without the _c<n> suffix",
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="a PostgreSQL server to give the scheduler a fresh database on; default SQLite",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="scheduler processes for the firing part, sharing the --database-url database",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--only", choices=["", "firing", "roundtrip"], default="")
    parser.add_argument(
        "--script-version", default="", help="version selector of the round trip's submits"
    )
    parser.add_argument("--smoke", action="store_true", help="a small size, for tests")
    parser.add_argument("--keep-logs", type=Path, help="copy the services' logs here at the end")
    parser.add_argument("--celery-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, full, smoke in (("schedules", 10_000, 20), ("minutes", 5, 1), ("runs", 2000, 40)):
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.replicas < 1:
        parser.error("--replicas: at least 1")
    if args.replicas > 1 and not args.database_url:
        parser.error(
            "--replicas > 1 needs a server database (--database-url postgresql+asyncpg://...):"
            " scheduler replicas share one database, which SQLite (the default) cannot serve"
        )
    if args.concurrency < 1:
        parser.error("--concurrency: at least 1")
    args.concurrencies = sorted({*args.concurrencies, args.concurrency})
    return args


def main() -> None:
    args = parse()
    if args.celery_worker:
        celery_worker(f"{args.redis_url.rstrip('/')}/{CELERY_DB}", args.concurrency)
        return
    grpc.aio.init_grpc_aio()
    with tempfile.TemporaryDirectory(prefix="runbox-scheduler-bench-") as tmp_name:
        try:
            results = asyncio.run(measure(args, Path(tmp_name)))
        finally:
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for service_log in Path(tmp_name).glob("*.log"):
                    shutil.copy(service_log, args.keep_logs)
    line = report.build_line(
        results.get("firing", {}),
        results.get("roundtrip", {}),
        args.concurrencies,
        args.concurrency,
        args.runs,
    )
    print(json.dumps(line))


if __name__ == "__main__":
    main()
