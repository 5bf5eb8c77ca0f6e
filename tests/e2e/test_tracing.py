"""One run's trace, end to end, received over OTLP/gRPC by a real collector endpoint.

The test runs an OTLP TraceService (opentelemetry-proto's generated service on a loopback
grpc.aio server) and the four services as `python -m services.<name>` processes pointed at it
by OTEL_EXPORTER_OTLP_ENDPOINT, the executor with the Docker sandbox. A failing run with a
secret parameter is submitted; an alert rule sends its FAILED state to a webhook receiver in
the test. Then one trace must hold the whole path, every span's parent in it:
SubmitRun -> dispatch -> Execute -> executor run -> sandbox run -> publish -> consume
(scheduler applies the state; alerting evaluates) -> delivery. No span carries the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2

from cli import natsd
from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.alerting.v1 import alerting_pb2_grpc
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from shared.clients import open_channel
from tests.conftest import Tokens, require
from tests.e2e.serving import wait_serving
from tests.e2e.test_scheduler_faults import eventually

SERVICES = ("catalogue", "executor", "scheduler", "alerting")
SECRET = "s3cret-trace-canary-5e1f"
SCRIPT = "traced-doomed"
FAILING = "import sys\nprint('doomed', flush=True)\nsys.exit(3)\n"
SUBMIT = "/runbox.scheduler.v1.SchedulerService/SubmitRun"
EXECUTE = "/runbox.executor.v1.ExecutorService/Execute"
ENVIRONMENT = "e2e-traces"


@dataclass(frozen=True)
class Span:
    """One received span and the service that sent it."""

    service: str
    resource: dict[str, str]
    span: trace_pb2.Span

    @property
    def name(self) -> str:
        return str(self.span.name)

    @property
    def id(self) -> bytes:
        return bytes(self.span.span_id)

    @property
    def parent(self) -> bytes:
        return bytes(self.span.parent_span_id)

    @property
    def trace_id(self) -> bytes:
        return bytes(self.span.trace_id)

    @property
    def attributes(self) -> dict[str, Any]:
        return {a.key: _value(a.value) for a in self.span.attributes}


def _value(value: otlp_common.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP/gRPC trace endpoint: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.raw: list[bytes] = []
        self.arrived = asyncio.Event()

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.raw.append(request.SerializeToString())
        for resource_spans in request.resource_spans:
            resource = {a.key: str(_value(a.value)) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(Span(resource.get("service.name", ""), resource, span))
        self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


class HookReceiver:
    """A webhook receiver on loopback that records each notification's JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class Stack:
    """The four service processes, their addresses, and the collector they export to."""

    tmp: Path
    tokens: Tokens
    collector: Collector
    addresses: dict[str, str]
    processes: dict[str, asyncio.subprocess.Process]

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM every service (their last spans are flushed on the way out)."""
        for proc in self.processes.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                codes[name] = await proc.wait()
        return codes


def service_env(
    name: str,
    tmp: Path,
    tokens: Tokens,
    nats_url: str,
    ports: dict[str, int],
    otlp: str,
    links: bool = True,
) -> dict[str, str]:
    """One service's environment: the stack's wiring, quick loops, and OTEL_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOX_", "OTEL_"))}
    address = {svc: f"127.0.0.1:{port}" for svc, port in ports.items()}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_RESOURCE_ATTRIBUTES": f"deployment.environment={ENVIRONMENT}",
        "RUNBOX_INSTANCE_ID": f"{name}-traces",
        "RUNBOX_GRPC__HOST": "127.0.0.1",
        "RUNBOX_GRPC__PORT": str(ports[name]),
        "RUNBOX_METRICS__PORT": "-1",
        "RUNBOX_DATABASE__URL": f"sqlite+aiosqlite:///{tmp / (name + '.db')}",
        "RUNBOX_NATS__URL": nats_url,
        "RUNBOX_AUTH__PRINCIPALS_FILE": str(tokens.principals_file),
        "RUNBOX_AUTH__SERVICE_TOKEN": tokens.service,
        "RUNBOX_CATALOGUE__ADDRESS": address["catalogue"],
        "RUNBOX_SCHEDULER__ADDRESS": address["scheduler"],
        "RUNBOX_EXECUTORS": json.dumps([address["executor"]]),
        "RUNBOX_BLOB_DIR": str(tmp / "blobs"),
        "RUNBOX_WORK_DIR": str(tmp / "work"),
        "RUNBOX_SANDBOX__BACKEND": "docker",
        # Execute and the run's events over the run link (the default), or the unary Execute
        # and the scheduler's JetStream consumer: the trace must be whole either way.
        "RUNBOX_RUN_LINKS": "true" if links else "false",
        "RUNBOX_SANDBOX__POOL__MIN_IDLE": "1",
        "RUNBOX_CHANNELS__WEBHOOK_ALLOW": json.dumps(["127.0.0.1/32"]),
        "RUNBOX_CHANNELS__ALLOW_HTTP": "true",
        "RUNBOX_DELIVERY__POLL_S": "0.2",
        "RUNBOX_RULES_CACHE_S": "0.2",
        "RUNBOX_LOG__JSON_FORMAT": "false",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    """The OTLP/gRPC receiver on a loopback port, and its endpoint URL."""
    servicer = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture(params=[True, False], ids=["run-link", "unary-and-jetstream"])
def links(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def stack(
    tmp_path: Path,
    tokens: Tokens,
    collector: tuple[Collector, str],
    docker_engine: None,
    links: bool,
) -> AsyncIterator[Stack]:
    """nats-server and the four services as processes exporting spans to the collector."""
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    nats = await asyncio.to_thread(natsd.start, tmp_path / "nats", log_file=tmp_path / "nats.log")
    ports = {name: natsd.free_port() for name in SERVICES}
    running = Stack(
        tmp_path,
        tokens,
        collector[0],
        {name: f"127.0.0.1:{port}" for name, port in ports.items()},
        {},
    )
    try:
        for name in SERVICES:
            env = service_env(name, tmp_path, tokens, nats.url, ports, collector[1], links)
            with (tmp_path / f"{name}.log").open("ab") as out:
                running.processes[name] = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    f"services.{name}",
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        for name in SERVICES:
            await wait_serving(
                running.addresses[name], running.processes[name], tmp_path / f"{name}.log", name
            )
        if links:  # the link opens within the scheduler's refresh (2 s) of its start
            await eventually(
                lambda: asyncio.to_thread((tmp_path / "executor.log").read_text),
                lambda text: "run link opened by scheduler" in text,
                30,
            )
        yield running
    finally:
        codes = await running.stop()
        await asyncio.to_thread(nats.stop)
    assert all(code == 0 for code in codes.values()), codes


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    hooks = HookReceiver()
    yield hooks
    hooks.close()


async def publish_failing(stack: Stack) -> None:
    """The failing script, with a secret parameter."""
    async with open_channel(stack.addresses["catalogue"], token=stack.tokens.admin) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        await stub.CreateScript(
            catalogue_pb2.CreateScriptRequest(
                script=catalogue_pb2.Script(
                    name=SCRIPT, execution_type=common_pb2.EXECUTION_TYPE_PYTHON
                )
            )
        )
        data = FAILING.encode()
        password = catalogue_pb2.PARAMETER_TYPE_PASSWORD
        await stub.PublishVersion(
            catalogue_pb2.PublishVersionRequest(
                script_name=SCRIPT,
                version="1.0.0",
                content=data,
                sha256=hashlib.sha256(data).hexdigest(),
                parameters=[catalogue_pb2.ParameterDefinition(name="token", type=password)],
            )
        )


async def alert_on_failure(stack: Stack, url: str) -> None:
    """A webhook channel to the receiver and a rule sending FAILED runs of the script to it."""
    async with open_channel(stack.addresses["alerting"], token=stack.tokens.admin) as channel:
        api = alerting_pb2_grpc.AlertingServiceStub(channel)
        hook = await api.CreateChannel(
            pb.CreateChannelRequest(
                channel=pb.Channel(name="traces-hook", webhook=pb.WebhookChannel(url=url))
            )
        )
        await api.CreateRule(
            pb.CreateRuleRequest(
                rule=pb.Rule(
                    name="traced-failures",
                    selector=pb.Selector(script_names=[SCRIPT]),
                    condition=pb.Condition(
                        on_state=pb.OnStateCondition(states=[common_pb2.RUN_STATE_FAILED])
                    ),
                    severity=pb.SEVERITY_CRITICAL,
                    channel_ids=[hook.id],
                )
            )
        )


async def submit(stack: Stack) -> scheduler_pb2.Run:
    """A failing run with a secret parameter, not retried (the client is not traced)."""
    async with open_channel(stack.addresses["scheduler"], token=stack.tokens.admin) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        params = struct_pb2.Struct()
        params.update({"token": SECRET})
        run: scheduler_pb2.Run = await stub.SubmitRun(
            scheduler_pb2.SubmitRunRequest(
                script=common_pb2.ScriptRef(name=SCRIPT),
                parameters=params,
                retry=common_pb2.RetryPolicy(max_attempts=1),
            )
        )
        return run


def named(spans: list[Span], name: str, service: str) -> list[Span]:
    return [s for s in spans if s.name == name and s.service == f"runbox-{service}"]


def ancestors(span: Span, by_id: dict[bytes, Span]) -> list[str]:
    """`service:name` of each span above `span`, nearest first."""
    chain: list[str] = []
    while span.parent and span.parent in by_id:
        span = by_id[span.parent]
        chain.append(f"{span.service.removeprefix('runbox-')}:{span.name}")
    return chain


# service, span name: what the run's trace must hold once its notification went out.
EXPECTED = [
    ("scheduler", SUBMIT),
    ("scheduler", "scheduler.dispatch"),
    ("scheduler", EXECUTE),
    ("scheduler", "db.transaction scheduler"),
    ("scheduler", "outbox.publish"),
    ("executor", EXECUTE),
    ("executor", "executor.run"),
    ("executor", "sandbox.run"),
    ("executor", "outbox.publish"),
    ("executor", "db.transaction executor"),
    ("alerting", "consume alerting"),
    ("alerting", "alerting.evaluate"),
    ("alerting", "alerting.deliver"),
]


def apply_span(links: bool) -> str:
    """The scheduler's span applying a run's event: received over the run link, or consumed
    from JetStream."""
    return "run_link.apply" if links else "consume scheduler"


def missing(spans: list[Span], applied: str) -> list[tuple[str, str]]:
    """Expected spans not yet received; the scheduler applies a run's STARTED event before
    its FINISHED one, so its `applied` span must be the one that applied FAILED.
    A span whose parent has not arrived yet counts as missing that parent: each service
    exports in its own batches, so a consumer's span can arrive before its publisher's."""
    expected = [*EXPECTED, ("scheduler", applied)]
    absent = [(svc, name) for svc, name in expected if not named(spans, name, svc)]
    ids = {s.id for s in spans}
    absent += [
        (s.service, f"parent of {s.name}") for s in spans if s.parent and s.parent not in ids
    ]
    if not [
        s
        for s in named(spans, applied, "scheduler")
        if s.attributes.get("runbox.run.state") == "RUN_STATE_FAILED"
    ]:
        absent.append(("scheduler", f"{applied} (FAILED)"))
    return absent


async def whole_trace(collector: Collector, trace_id: bytes, applied: str) -> list[Span]:
    """The trace once every expected span arrived (the services export every 100 ms)."""
    try:
        async with asyncio.timeout(60):
            while missing(collector.trace(trace_id), applied):
                collector.arrived.clear()
                await collector.arrived.wait()
    except TimeoutError:
        left = missing(collector.trace(trace_id), applied)
        pytest.fail(f"the trace never completed; missing: {left}")
    return collector.trace(trace_id)


@pytest.mark.timeout(240)
async def test_failing_run_traced_submit_to_notification(
    stack: Stack, receiver: HookReceiver, links: bool
) -> None:
    """SubmitRun to the alert's delivery is one trace whose spans all have their parent in
    it, across the four services, and no span carries the secret parameter or a token;
    whether Execute and the run's events went over the run link or not."""
    await publish_failing(stack)
    await alert_on_failure(stack, receiver.url)
    run = await submit(stack)
    await eventually(
        lambda: asyncio.sleep(0, receiver.bodies),
        lambda bodies: any(b.get("context", {}).get("run_id") == run.id for b in bodies),
        90,
    )

    submits = [
        s
        for s in named(stack.collector.spans, SUBMIT, "scheduler")
        if s.span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    ]
    assert len(submits) == 1, [s.name for s in stack.collector.spans]
    root = submits[0]
    spans = await whole_trace(stack.collector, root.trace_id, apply_span(links))
    by_id = {s.id: s for s in spans}

    assert not root.parent, "the untraced client's SubmitRun starts the trace"
    orphans = [(s.service, s.name) for s in spans if s.parent and s.parent not in by_id]
    assert not orphans, orphans
    assert {s.service for s in spans} == {f"runbox-{name}" for name in SERVICES}
    assert {s.resource.get("deployment.environment") for s in spans} == {ENVIRONMENT}

    dispatch = named(spans, "scheduler.dispatch", "scheduler")[0]
    assert dispatch.parent == root.id
    assert dispatch.attributes["runbox.run_id"] == run.id
    execute = next(s for s in named(spans, EXECUTE, "executor"))
    assert ancestors(execute, by_id)[:2] == [f"scheduler:{EXECUTE}", "scheduler:scheduler.dispatch"]
    executor_run = named(spans, "executor.run", "executor")[0]
    assert executor_run.parent == dispatch.id
    assert executor_run.attributes["runbox.run.state"] == "RUN_STATE_FAILED"
    sandbox = named(spans, "sandbox.run", "executor")[0]
    assert sandbox.parent == executor_run.id

    transports = {s.attributes.get("runbox.transport") for s in named(spans, EXECUTE, "executor")}
    assert transports == ({"run_link"} if links else {None}), transports
    applied = [
        s
        for s in named(spans, apply_span(links), "scheduler")
        if s.attributes.get("runbox.run.state") == "RUN_STATE_FAILED"
    ]
    assert applied, "the scheduler's apply of the FINISHED event is in the trace"
    # Over the link the scheduler applies the event before it is published (the publish
    # follows its ack); from JetStream, after.
    before = (
        ["executor:executor.run"] if links else ["executor:outbox.publish", "executor:executor.run"]
    )
    assert ancestors(applied[0], by_id)[: len(before)] == before

    deliver = named(spans, "alerting.deliver", "alerting")[0]
    chain = ancestors(deliver, by_id)
    assert chain[:5] == [
        "alerting:alerting.evaluate",
        "alerting:consume alerting",
        "executor:outbox.publish",
        "executor:executor.run",
        "scheduler:scheduler.dispatch",
    ], chain
    assert chain[-1] == f"scheduler:{SUBMIT}"

    exported = b"".join(stack.collector.raw)
    for secret in (SECRET, stack.tokens.admin, stack.tokens.service):
        assert secret.encode() not in exported
