"""Scheduler fault tests with real processes: kill -9 of the scheduler between claiming a
run and dispatching it (also with the executor restarting meanwhile), and a NATS restart
under load.

The scheduler runs as its own process (so it can be SIGKILLed) with short timings; the
catalogue and a local-backend executor run in the test's process on a nats-server the test
owns. Between scheduler and executor a raw-bytes gRPC proxy (tests/e2e/grpc_proxy.py) holds
Execute calls, so the test decides when a dispatch reaches the executor. A script counts its
own executions by appending a line to a file; the executor's events in JetStream and its
metrics count them too."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import nats
import pytest

from cli import natsd
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.catalogue.config import CatalogueSettings
from services.catalogue.server import build as build_catalogue
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.conftest import Tokens, require
from tests.e2e.grpc_proxy import UnaryProxy
from tests.e2e.serving import wait_serving
from tests.integration.helpers import settings_for
from tests.integration.stack import start_executor

RS = common_pb2
T = TypeVar("T")
EXECUTE = "/runbox.executor.v1.ExecutorService/Execute"
TERMINAL = {
    RS.RUN_STATE_SUCCEEDED,
    RS.RUN_STATE_FAILED,
    RS.RUN_STATE_TIMED_OUT,
    RS.RUN_STATE_CANCELLED,
    RS.RUN_STATE_LOST,
}
# Seconds: a claim outlives no restart; a run pinned to its executor fails over quickly.
FAST = {
    "DISPATCH_INTERVAL_S": "0.2",
    "DISPATCH_CLAIM_S": "1",
    "LEASE_S": "6",
    "LEASE_SWEEP_INTERVAL_S": "0.2",
    "EVENTS_ACK_WAIT_S": "3",
    "EXECUTOR_BACKOFF_S": "0.2",
    "WATCH_POLL_S": "0.2",
}


async def eventually(
    probe: Callable[[], Awaitable[T]], until: Callable[[T], bool], wait_s: float = 60
) -> T:
    """Poll `probe` until `until(value)`; fail after `wait_s`."""
    async with asyncio.timeout(wait_s):
        while True:
            value = await probe()
            if until(value):
                return value
            await asyncio.sleep(0.1)


@dataclass
class Broker:
    """The test's own nats-server, restartable on the same port and JetStream store."""

    store: Path
    log: Path
    server: natsd.NatsServer

    @property
    def url(self) -> str:
        return self.server.url

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def start(self) -> None:
        self.server = await asyncio.to_thread(
            natsd.start, self.store, port=self.server.port, log_file=self.log
        )


class SchedulerProcess:
    """`python -m services.scheduler` on a fixed port and SQLite file, killable."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str]) -> None:
        self._log = tmp / "scheduler.log"
        self._out = self._log.open("ab")  # every process of the test appends to it
        self._env = env
        self.address = f"127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self, token: str) -> scheduler_pb2_grpc.SchedulerServiceAsyncStub:
        """Start it, wait until it serves, and return a client on a fresh channel."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.scheduler",
            env=self._env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        await self._wait_serving()
        # A new channel: one that saw the old process die would wait out its reconnect backoff.
        self.channel = open_channel(self.address, token=token)
        return scheduler_pb2_grpc.SchedulerServiceStub(self.channel)

    async def _wait_serving(self) -> None:
        assert self.proc is not None
        await wait_serving(self.address, self.proc, self._log, "scheduler")

    async def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._close_channel()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._close_channel()
        self._out.close()

    async def _close_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None


@dataclass
class Stack:
    """Catalogue and executor in-process, the scheduler as a process, maybe a proxy."""

    tmp: Path
    tokens: Tokens
    broker: Broker
    catalogue: Running
    executor: Running
    proxy: UnaryProxy | None = None
    scheduler: SchedulerProcess | None = None

    def scheduler_env(self, port: int, settings: dict[str, str]) -> dict[str, str]:
        """The scheduler's environment: FAST timings, with `settings` (RUNBOX_ names
        without the prefix) over them."""
        executor = self.proxy.address if self.proxy else self.executor.address
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
        env |= {
            "RUNBOX_INSTANCE_ID": "scheduler-faults",
            "RUNBOX_GRPC__HOST": "127.0.0.1",
            "RUNBOX_GRPC__PORT": str(port),
            "RUNBOX_METRICS__PORT": "-1",
            "RUNBOX_DATABASE__URL": f"sqlite+aiosqlite:///{self.tmp / 'scheduler.db'}",
            "RUNBOX_NATS__URL": self.broker.url,
            "RUNBOX_AUTH__PRINCIPALS_FILE": str(self.tokens.principals_file),
            "RUNBOX_AUTH__SERVICE_TOKEN": self.tokens.service,
            "RUNBOX_CATALOGUE__ADDRESS": self.catalogue.address,
            "RUNBOX_EXECUTORS": json.dumps([executor]),
            "RUNBOX_LOG__JSON_FORMAT": "false",
            "PYTHONUNBUFFERED": "1",
        }
        return env | {f"RUNBOX_{k}": v for k, v in (FAST | settings).items()}

    async def start_scheduler(
        self, **settings: str
    ) -> scheduler_pb2_grpc.SchedulerServiceAsyncStub:
        """Start a scheduler process; again, on the same port, database and settings."""
        if self.scheduler is None:
            port = natsd.free_port()
            env = self.scheduler_env(port, settings)
            self.scheduler = SchedulerProcess(self.tmp, port, env)
        return await self.scheduler.start(self.tokens.admin)

    async def publish(self, name: str, content: str) -> None:
        data = content.encode()
        async with open_channel(self.catalogue.address, token=self.tokens.admin) as channel:
            stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
            await stub.CreateScript(
                catalogue_pb2.CreateScriptRequest(
                    script=catalogue_pb2.Script(name=name, execution_type=RS.EXECUTION_TYPE_PYTHON)
                )
            )
            await stub.PublishVersion(
                catalogue_pb2.PublishVersionRequest(
                    script_name=name,
                    version="1.0.0",
                    content=data,
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )

    async def executor_finished_runs(self) -> float:
        """Runs the (current) executor process finished, by its own metrics."""
        registry = self.executor.runtime.registry
        return sum(
            sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name == "runbox_executor_runs_total"
        )

    async def executor_events(self, run_id: str) -> list[events_pb2.RunEvent]:
        """The run's events the executor published (JetStream drops duplicate ids)."""
        nc = await nats.connect(self.broker.url)
        try:
            sub = await nc.jetstream().pull_subscribe(
                f"runbox.events.run.{run_id}.>", stream="RUNBOX_EVENTS"
            )
            events: list[events_pb2.RunEvent] = []
            while True:
                try:
                    messages = await sub.fetch(100, timeout=0.5)
                except TimeoutError:  # nothing more in the stream
                    break
                events += [events_pb2.RunEvent.FromString(m.data) for m in messages]
            await sub.unsubscribe()
        finally:
            await nc.close()
        return [e for e in events if ":executor:" in e.event_id]


@pytest.fixture
async def stack(tmp_path: Path, tokens: Tokens) -> AsyncIterator[Stack]:
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    server = await asyncio.to_thread(natsd.start, tmp_path / "nats", log_file=tmp_path / "nats.log")
    broker = Broker(tmp_path / "nats", tmp_path / "nats.log", server)
    catalogue = await launch(
        build_runtime(
            "catalogue",
            settings_for(
                CatalogueSettings,
                tmp_path,
                "catalogue",
                nats_url=broker.url,
                principals_file=tokens.principals_file,
                blob_dir=str(tmp_path / "blobs"),
            ),
        ),
        build_catalogue,
    )
    executor = await start_executor(
        tmp_path, broker.url, tokens, catalogue, heartbeat_interval_s=0.5
    )
    running = Stack(tmp_path, tokens, broker, catalogue, executor)
    try:
        yield running
    finally:
        if running.scheduler is not None:
            await running.scheduler.stop()
        if running.proxy is not None:
            await running.proxy.stop()
        await running.executor.stop()
        await catalogue.stop()
        await broker.stop()


async def with_proxy(stack: Stack) -> UnaryProxy:
    stack.proxy = UnaryProxy(stack.executor.address)
    await stack.proxy.start()
    return stack.proxy


async def get(stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, run_id: str) -> scheduler_pb2.Run:
    return await stub.GetRun(scheduler_pb2.GetRunRequest(id=run_id))


async def submit(
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, name: str
) -> scheduler_pb2.Run:
    request = scheduler_pb2.SubmitRunRequest(script=RS.ScriptRef(name=name))
    return await stub.SubmitRun(request)


def counting_script(ledger: Path, sleep_s: float = 0.0) -> str:
    """A script that appends one line to `ledger` each time it runs."""
    return (
        "import time\n"
        f"with open({str(ledger)!r}, 'a') as ledger:\n"
        "    ledger.write('ran\\n')\n"
        f"time.sleep({sleep_s})\n"
        "print('done')\n"
    )


def newly_accepted(proxy: UnaryProxy) -> list[bool]:
    """For each Execute the executor answered: whether it took the run as new."""
    return [
        executor_pb2.ExecuteResponse.FromString(e.reply).newly_accepted
        for e in proxy.answered(EXECUTE)
        if e.reply is not None
    ]


async def assert_ran_once(
    stack: Stack, run: scheduler_pb2.Run, ledger: Path, executor_runs: int = 1
) -> None:
    """SUCCEEDED, and executed once: by the script's ledger, the executor's STARTED events,
    its metrics (`executor_runs` finished by the running executor process), and its Execute
    answers (one new acceptance, the rest replays)."""
    assert run.state == RS.RUN_STATE_SUCCEEDED, run
    assert run.output.stdout == b"done\n"
    assert await asyncio.to_thread(ledger.read_text) == "ran\n"
    events = await stack.executor_events(run.id)
    started = [e for e in events if e.type == events_pb2.RUN_EVENT_TYPE_STARTED]
    finished = [e for e in events if e.type == events_pb2.RUN_EVENT_TYPE_FINISHED]
    assert (len(started), len(finished)) == (1, 1), events
    assert await stack.executor_finished_runs() == executor_runs
    assert stack.proxy is not None
    assert newly_accepted(stack.proxy).count(True) == 1


async def test_run_executes_once_when_scheduler_killed_before_execute_reaches_executor(
    stack: Stack,
) -> None:
    """kill -9 of the scheduler while its Execute is held (never forwarded): a new scheduler
    on the same database dispatches the run again; it runs once and ends SUCCEEDED."""
    proxy = await with_proxy(stack)
    ledger = stack.tmp / "ledger"
    await stack.publish("counted", counting_script(ledger))
    stub = await stack.start_scheduler()
    proxy.hold(EXECUTE)
    run = await submit(stub, "counted")
    [held] = await proxy.wait_held(1)
    assert (await get(stub, run.id)).state == RS.RUN_STATE_PENDING
    assert stack.scheduler is not None
    await stack.scheduler.kill()
    await asyncio.wait_for(held.abandoned.wait(), 10)  # the caller is gone: it is never sent

    stub = await stack.start_scheduler()
    final = await eventually(lambda: get(stub, run.id), lambda r: r.state in TERMINAL)
    await assert_ran_once(stack, final, ledger)
    assert len(proxy.answered(EXECUTE)) == 1  # only the new scheduler's call got through


async def test_submitted_run_executes_once_when_scheduler_killed_during_direct_handoff(
    stack: Stack,
) -> None:
    """With the dispatch sweep an hour away, SubmitRun's direct hand-off alone sends Execute
    (held); kill -9 of the scheduler then; a new one on the same database, its sweep as
    usual, dispatches the run from what the submit committed: it runs once, SUCCEEDED."""
    proxy = await with_proxy(stack)
    ledger = stack.tmp / "ledger"
    await stack.publish("counted", counting_script(ledger))
    stub = await stack.start_scheduler(DISPATCH_INTERVAL_S="3600")
    proxy.hold(EXECUTE)
    run = await submit(stub, "counted")
    [held] = await proxy.wait_held(1)  # no round runs within the hour: the hand-off sent it
    assert stack.scheduler is not None
    await stack.scheduler.kill()
    await asyncio.wait_for(held.abandoned.wait(), 10)

    await stack.scheduler.stop()  # gone already: closes its client and log
    stack.scheduler = None  # the next one gets the FAST sweep, on the same database
    stub = await stack.start_scheduler()
    final = await eventually(lambda: get(stub, run.id), lambda r: r.state in TERMINAL)
    await assert_ran_once(stack, final, ledger)
    assert len(proxy.answered(EXECUTE)) == 1  # only the new scheduler's call got through


async def test_run_executes_once_when_killed_scheduler_execute_arrives_late(
    stack: Stack,
) -> None:
    """kill -9 of the scheduler while its Execute is held; the held request then reaches the
    executor (the run starts there) before a new scheduler starts: still one execution."""
    proxy = await with_proxy(stack)
    ledger = stack.tmp / "ledger"
    await stack.publish("counted", counting_script(ledger, sleep_s=1.0))
    stub = await stack.start_scheduler()
    proxy.hold(EXECUTE)
    run = await submit(stub, "counted")
    [held] = await proxy.wait_held(1)
    assert stack.scheduler is not None
    await stack.scheduler.kill()
    late = await proxy.forward(held)
    assert late.reply is not None, late
    assert executor_pb2.ExecuteResponse.FromString(late.reply).newly_accepted

    stub = await stack.start_scheduler()
    final = await eventually(lambda: get(stub, run.id), lambda r: r.state in TERMINAL)
    await assert_ran_once(stack, final, ledger)
    # Whether the new scheduler re-dispatched (it races its own consumer applying the
    # executor's QUEUED event), the executor took the run once.
    assert newly_accepted(proxy)[0] is True


async def test_run_executes_once_when_stale_execute_arrives_during_redispatch(
    stack: Stack,
) -> None:
    """kill -9 of the scheduler while its Execute is held; a new scheduler re-dispatches
    (held too); the killed one's request reaches the executor first, then the new one's:
    the executor answers it as a replay and the run executes once, SUCCEEDED."""
    proxy = await with_proxy(stack)
    ledger = stack.tmp / "ledger"
    await stack.publish("counted", counting_script(ledger, sleep_s=1.0))
    stub = await stack.start_scheduler()
    proxy.hold(EXECUTE, count=2)
    run = await submit(stub, "counted")
    [stale] = await proxy.wait_held(1)
    assert stack.scheduler is not None
    await stack.scheduler.kill()

    stub = await stack.start_scheduler()
    _, redispatch = await proxy.wait_held(2)
    assert executor_pb2.ExecuteRequest.FromString(redispatch.request).run_id == run.id
    assert (await proxy.forward(stale)).reply is not None
    proxy.release(redispatch)
    final = await eventually(lambda: get(stub, run.id), lambda r: r.state in TERMINAL)
    await assert_ran_once(stack, final, ledger)
    assert newly_accepted(proxy) == [True, False]


async def test_run_executes_once_when_redispatched_to_restarted_executor(stack: Stack) -> None:
    """kill -9 of the scheduler while its Execute is held; the held request reaches the
    executor, which runs the run and then restarts (same database); the same Execute again,
    as the next scheduler's re-dispatch: answered as a replay, the run does not run again."""
    proxy = await with_proxy(stack)
    ledger = stack.tmp / "ledger"
    await stack.publish("counted", counting_script(ledger))
    stub = await stack.start_scheduler()
    proxy.hold(EXECUTE)
    run = await submit(stub, "counted")
    [held] = await proxy.wait_held(1)
    assert stack.scheduler is not None
    await stack.scheduler.kill()
    assert (await proxy.forward(held)).reply is not None
    await eventually(stack.executor_finished_runs, lambda n: n == 1)

    await stack.executor.stop()
    stack.executor = await start_executor(
        stack.tmp, stack.broker.url, stack.tokens, stack.catalogue, heartbeat_interval_s=0.5
    )
    await proxy.retarget(stack.executor.address)
    again = await proxy.forward(held)
    assert again.reply is not None, again
    assert not executor_pb2.ExecuteResponse.FromString(again.reply).newly_accepted

    stub = await stack.start_scheduler()
    final = await eventually(lambda: get(stub, run.id), lambda r: r.state in TERMINAL)
    await assert_ran_once(stack, final, ledger, executor_runs=0)


SLEEPY = "import time\nprint('start', flush=True)\ntime.sleep(2)\nprint('end')\n"


async def test_no_run_stuck_when_nats_restarts(stack: Stack) -> None:
    """nats-server stops while runs execute and more are submitted, then starts again on the
    same port and JetStream store: every run ends SUCCEEDED, as GetRun and ListRuns say."""
    await stack.publish("sleepy", SLEEPY)
    # A lease longer than the outage: past it, runs whose heartbeats wait out the outage
    # would end LOST by design (docs/scheduler.md, "Leases and LOST").
    # Without the run link: over it runs would end during the outage (their events reach the
    # scheduler by the link; test_run_link.py), and this test is about JetStream's recovery.
    stub = await stack.start_scheduler(LEASE_S="30", RUN_LINKS="false")
    in_flight = [await submit(stub, "sleepy") for _ in range(3)]
    for run in in_flight:
        await eventually(lambda: get(stub, run.id), lambda r: r.state == RS.RUN_STATE_RUNNING)  # noqa: B023

    await stack.broker.stop()
    during = [await submit(stub, "sleepy") for _ in range(3)]
    runs = in_flight + during
    # The outage lasts until the executor has finished every run: all their events wait.
    await eventually(stack.executor_finished_runs, lambda n: n == len(runs))
    for run in runs:
        assert (await get(stub, run.id)).state not in TERMINAL
    await stack.broker.start()

    ended = [
        await eventually(lambda: get(stub, run.id), lambda r: r.state in TERMINAL)  # noqa: B023
        for run in runs
    ]
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="sleepy"))
    assert {r.id: r.state for r in listed.runs} == {r.id: r.state for r in ended}
    for run in ended:
        assert run.state == RS.RUN_STATE_SUCCEEDED, run
        assert (run.exit.exit_code, run.attempt, run.retry_run_id) == (0, 1, "")
        assert run.output.stdout == b"start\nend\n"
        assert run.executor_id and run.HasField("start_time") and run.HasField("finish_time")
        assert run.start_time.ToDatetime() <= run.finish_time.ToDatetime()
        assert len(await stack.executor_events(run.id)) >= 3  # QUEUED, STARTED, FINISHED
