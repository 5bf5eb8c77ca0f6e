"""Tracing setup from the OTEL_* variables, transaction spans, and what run spans carry."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import struct_pb2
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2
from services.executor.runners.base import Outcome
from services.executor.tracing import RunTracing, finish
from shared import db
from shared.jetstream import DurableConsumer, consume_context
from shared.settings import DatabaseSettings
from shared.telemetry import (
    current_span,
    extract_context,
    inject_context,
    otlp_exporter,
    setup_tracing,
    shutdown_tracing,
)

SECRET = "hunter2-trace-canary"
PARAMETER = "plain-parameter-value-77"


@pytest.fixture(autouse=True)
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the OTEL_* variables it is about."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def recorded() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def processors(provider: TracerProvider) -> tuple[object, ...]:
    return tuple(provider._active_span_processor._span_processors)


def test_setup_without_endpoint_installs_no_exporter() -> None:
    """No OTLP endpoint: no span processor at all; RPC server spans still get real ids and
    the service's own spans only carry the trace on (nothing recorded)."""
    tracing = setup_tracing("scheduler", instance_id="scheduler-1")
    provider = tracing.provider
    assert not tracing.exporting
    assert processors(provider) == ()
    with provider.get_tracer("t").start_as_current_span("s") as server:
        assert server.get_span_context().is_valid
        incoming = inject_context()["traceparent"]
        own = tracing.spans.get_tracer("runs")
        with own.start_as_current_span("scheduler.dispatch") as span:
            assert not span.is_recording()
            assert inject_context()["traceparent"] == incoming
        detached = own.start_span("executor.run", context=extract_context({}))
        assert not detached.get_span_context().is_valid
    assert provider.resource.attributes["service.name"] == "runbox-scheduler"
    assert provider.resource.attributes["service.instance.id"] == "scheduler-1"
    shutdown_tracing(provider)


def test_setup_with_endpoint_installs_batched_otlp_grpc_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT alone: spans go out in batches over OTLP/gRPC."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    tracing = setup_tracing("executor")
    (processor,) = processors(tracing.provider)
    assert isinstance(processor, BatchSpanProcessor)
    assert isinstance(processor.span_exporter, GrpcExporter)
    assert tracing.exporting and tracing.spans is tracing.provider
    shutdown_tracing(tracing.provider)


def test_traces_endpoint_and_http_protocol_select_http_exporter() -> None:
    """The traces-specific endpoint and protocol variables choose http/protobuf."""
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert isinstance(otlp_exporter(env), HttpExporter)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_exporter_off_without_endpoint_or_when_disabled_is_none(env: dict[str, str]) -> None:
    """No endpoint, OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none: no exporter."""
    assert otlp_exporter(env) is None


def test_unknown_protocol_is_refused_with_its_name() -> None:
    """A protocol other than grpc or http/protobuf is a configuration error naming it."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    with pytest.raises(ValueError, match="http/json"):
        otlp_exporter(env)


def test_service_name_and_resource_attributes_come_from_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_SERVICE_NAME overrides runbox-<service>; OTEL_RESOURCE_ATTRIBUTES are kept."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sched-eu-1")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    attributes = setup_tracing("scheduler").provider.resource.attributes
    assert attributes["service.name"] == "sched-eu-1"
    assert attributes["deployment.environment"] == "staging"


def test_sampler_comes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_TRACES_SAMPLER=always_off: spans are not sampled (ids still made)."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    span = setup_tracing("alerting").provider.get_tracer("t").start_span("s")
    assert not span.is_recording()
    assert span.get_span_context().is_valid


async def test_transaction_in_a_traced_operation_is_one_span(
    tmp_path: Path, recorded: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A transaction inside a span is one child span; one outside any span makes none."""
    provider, exporter = recorded
    engine = db.create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))
    sessions = db.sessionmaker(engine, tracer=provider.get_tracer("db"), service="scheduler")
    tracer = provider.get_tracer("test")
    try:
        async with sessions() as session, session.begin():
            await session.execute(text("SELECT 1"))
        assert exporter.get_finished_spans() == ()
        with tracer.start_as_current_span("rpc") as parent:
            async with sessions() as session, session.begin():
                await session.execute(text("SELECT 1"))
                await session.execute(text("SELECT 2"))
    finally:
        await engine.dispose()
    names = [
        (s.name, s.parent.span_id if s.parent else None) for s in exporter.get_finished_spans()
    ]
    assert names == [
        ("db.transaction scheduler", parent.get_span_context().span_id),
        ("rpc", None),
    ]


def _strings(span: ReadableSpan) -> str:
    """Everything a span says, as one text: name, attributes, events, status."""
    parts = [span.name, str(span.status.description or "")]
    parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
    for event in span.events:
        parts += [event.name, *(f"{k}={v}" for k, v in (event.attributes or {}).items())]
    return "\n".join(parts)


def test_run_spans_name_the_run_never_its_parameters_or_secrets(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """The executor's run and sandbox spans of a run with a secret parameter carry its id,
    script and state, and neither the secret nor the parameter values."""
    provider, exporter = recorded
    parameters = struct_pb2.Struct()
    parameters.update({"name": PARAMETER})
    with provider.get_tracer("dispatch").start_as_current_span("scheduler.dispatch"):
        dispatched = inject_context()
    request = executor_pb2.ExecuteRequest(
        run_id="run-1",
        script_name="deploy",
        script_version="1.2.3",
        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
        parameters=parameters,
        secret_parameters={"token": SECRET},
        trace_context=dispatched,
    )
    tracing = RunTracing(provider.get_tracer("runs"))
    span, carried = tracing.start(request)
    with trace.use_span(span), tracing.sandbox(request):
        pass
    finish(
        span,
        Outcome(
            state=common_pb2.RUN_STATE_FAILED,
            exit_code=3,
            reason=common_pb2.FAILURE_REASON_EXIT_CODE,
            message=f"failed with {SECRET}",
        ),
    )
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["executor.run"]
    assert carried["traceparent"].split("-")[2] == format(run.context.span_id, "016x")
    assert (
        run.parent is not None and run.parent.span_id == spans["scheduler.dispatch"].context.span_id
    )
    assert spans["sandbox.run"].parent.span_id == run.context.span_id  # type: ignore[union-attr]
    assert run.attributes["runbox.run_id"] == "run-1"  # type: ignore[index]
    assert run.attributes["runbox.run.state"] == "RUN_STATE_FAILED"  # type: ignore[index]
    assert run.status.description == "FAILURE_REASON_EXIT_CODE"
    for recorded_span in spans.values():
        said = _strings(recorded_span)
        assert SECRET not in said and PARAMETER not in said


class FakeMsg:
    """What DurableConsumer reads of a JetStream message."""

    def __init__(self, msg_id: str, headers: dict[str, str]) -> None:
        self.subject = f"runbox.events.run.{msg_id}"
        self.data = b""
        self.headers = {**headers, "Nats-Msg-Id": msg_id}
        self.acked = False

    async def ack(self) -> None:
        self.acked = True


async def test_batch_consume_spans_each_continue_their_own_trace(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A fetched batch: one consume span per traced message, each the child of its own
    producer's span; consume_context finds each; an untraced message makes none."""
    provider, exporter = recorded
    producer = provider.get_tracer("producer")
    parents: dict[str, int] = {}
    messages = []
    for msg_id in ("a", "b"):
        with producer.start_as_current_span(f"publish {msg_id}") as span:
            parents[msg_id] = span.get_span_context().span_id
            messages.append(FakeMsg(msg_id, inject_context()))
    messages.append(FakeMsg("progress", {}))
    seen: dict[str, int | None] = {}

    async def handle(batch: list[FakeMsg]) -> None:
        for msg in batch:
            found = consume_context(msg.headers["Nats-Msg-Id"])
            seen[msg.headers["Nats-Msg-Id"]] = (
                None if found is None else trace.get_current_span(found).get_span_context().span_id
            )

    consumer = DurableConsumer(
        None,  # type: ignore[arg-type]
        stream="s",
        durable="scheduler",
        filter_subject="runbox.events.run.>",
        handler=handle,  # type: ignore[arg-type]
        batch_handler=handle,  # type: ignore[arg-type]
        tracer=provider.get_tracer("consumer"),
    )
    assert await consumer._dispatch_batch(messages)  # type: ignore[arg-type]
    consumed = [s for s in exporter.get_finished_spans() if s.name == "consume scheduler"]
    assert sorted(s.parent.span_id for s in consumed) == sorted(parents.values())  # type: ignore[union-attr]
    by_message = {s.attributes["messaging.message.id"]: s.context.span_id for s in consumed}  # type: ignore[index]
    assert seen == {"a": by_message["a"], "b": by_message["b"], "progress": None}
    assert all(m.acked for m in messages)


def test_failure_inside_span_records_its_type_not_its_message(
    recorded: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """An exception in a span marks it ERROR with the exception's type only (a driver's
    message can quote SQL parameters)."""
    provider, exporter = recorded
    with (
        pytest.raises(ValueError),
        current_span(provider.get_tracer("t"), "db.transaction scheduler"),
    ):
        raise ValueError(f"[parameters: ('{SECRET}',)]")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == "ValueError"
    assert SECRET not in _strings(span) and not span.events
