"""Trace context, spans, auth and metrics of an RPC on a real grpc.aio server, with tracing
off (no exporter: no OpenTelemetry interceptor, only the server span's context) and on
(exporting: OpenTelemetry's server span, as before)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from runbox.alerting.v1 import alerting_pb2, alerting_pb2_grpc
from shared.auth import Authenticator, hash_token
from shared.clients import open_channel
from shared.interceptors import current_principal
from shared.server import ServerBundle, create_server
from shared.settings import GrpcSettings
from shared.telemetry import Tracing

SERVICE = alerting_pb2.DESCRIPTOR.services_by_name["AlertingService"].full_name
GET_RULE = f"/{SERVICE}/GetRule"
# A caller's W3C context: trace 0af7..., its span b7ad..., sampled.
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@dataclass
class Seen:
    """What GetRule saw of the call it served."""

    span: trace.SpanContext | None = None
    principal: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class RecordingServicer(alerting_pb2_grpc.AlertingServiceServicer):
    """GetRule records its span context, principal and metadata; CreateRule calls GetRule
    back on `forward` (a channel of the service's own kind, to see what a client carries)."""

    def __init__(self) -> None:
        self.seen = Seen()
        self.forwarding: trace.SpanContext | None = None  # CreateRule's span context
        self.forward: grpc.aio.Channel | None = None

    async def GetRule(self, request: Any, context: Any) -> alerting_pb2.Rule:
        self.seen = Seen(
            trace.get_current_span().get_span_context(),
            current_principal().name,
            dict(context.invocation_metadata()),
        )
        return alerting_pb2.Rule(id=request.id)

    async def CreateRule(self, request: Any, context: Any) -> alerting_pb2.Rule:
        assert self.forward is not None
        self.forwarding = trace.get_current_span().get_span_context()
        stub = alerting_pb2_grpc.AlertingServiceStub(self.forward)
        return await stub.GetRule(alerting_pb2.GetRuleRequest(id="forwarded"))


@dataclass
class Served:
    bundle: ServerBundle
    servicer: RecordingServicer
    registry: CollectorRegistry
    tracing: Tracing
    exporter: InMemorySpanExporter

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.bundle.port}"

    async def requests(self, method: str, code: str, expected: float) -> float | None:
        """The count of `method` calls ended with `code`, once it reaches `expected` (the
        server counts a call after its status is sent) or after 5 s."""
        for _ in range(500):
            value = self.registry.get_sample_value(
                "runbox_testsvc_rpc_requests_total", {"method": method, "code": code}
            )
            if value == expected:
                break
            await asyncio.sleep(0.01)
        return value


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


async def serve(exporting: bool, exporter: InMemorySpanExporter) -> Served:
    """A server whose provider records every span it is given (in memory), exporting or not
    as the service's Tracing says."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider, exporting=exporting)
    servicer = RecordingServicer()
    registry = CollectorRegistry()
    bundle = create_server(
        service="testsvc",
        settings=GrpcSettings(),
        registrations=[
            (alerting_pb2_grpc.add_AlertingServiceServicer_to_server, servicer, SERVICE)
        ],
        authenticator=Authenticator(
            [
                ("admin", hash_token("good"), ["alert:read", "alert:write"]),
                ("writer", hash_token("writer"), ["alert:write"]),
            ]
        ),
        permissions={GET_RULE: "alert:read", f"/{SERVICE}/CreateRule": "alert:write"},
        registry=registry,
        tracing=tracing,
    )
    await bundle.server.start()
    await bundle.set_serving(True)
    return Served(bundle, servicer, registry, tracing, exporter)


@pytest.fixture
async def untraced(exporter: InMemorySpanExporter) -> AsyncIterator[Served]:
    served = await serve(False, exporter)
    yield served
    await served.bundle.server.stop(0)


@pytest.fixture
async def traced(exporter: InMemorySpanExporter) -> AsyncIterator[Served]:
    served = await serve(True, exporter)
    yield served
    await served.bundle.server.stop(0)


async def get_rule(address: str, metadata: list[tuple[str, str]]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await alerting_pb2_grpc.AlertingServiceStub(channel).GetRule(
            alerting_pb2.GetRuleRequest(id="r"), metadata=metadata, timeout=5
        )


async def test_rpc_continues_callers_trace_without_span_when_tracing_off(
    untraced: Served,
) -> None:
    """Tracing off: the handler runs in a new span context of the caller's trace (a real id
    for logs and rows), and no span is made."""
    await get_rule(
        untraced.address, [("authorization", "Bearer good"), ("traceparent", TRACEPARENT)]
    )
    span = untraced.servicer.seen.span
    assert span is not None and span.is_valid and span.trace_flags.sampled
    assert span.trace_id == TRACE_ID and span.span_id != PARENT_ID
    assert untraced.servicer.seen.principal == "admin"
    assert untraced.exporter.get_finished_spans() == ()


async def test_rpc_starts_a_trace_when_caller_has_none_and_tracing_off(untraced: Served) -> None:
    """Tracing off, no incoming context: the handler still gets a fresh, valid trace id."""
    await get_rule(untraced.address, [("authorization", "Bearer good")])
    first = untraced.servicer.seen.span
    await get_rule(untraced.address, [("authorization", "Bearer good")])
    second = untraced.servicer.seen.span
    assert first is not None and first.is_valid
    assert second is not None and second.is_valid and second.trace_id != first.trace_id
    assert untraced.exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "UNAUTHENTICATED"), ("wrong", "UNAUTHENTICATED"), ("writer", "PERMISSION_DENIED")],
)
async def test_auth_and_metrics_enforced_when_tracing_off(
    untraced: Served, token: str | None, code: str
) -> None:
    """Tracing off removes no check: bad callers are refused and counted by status code."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await get_rule(untraced.address, metadata)
    assert err.value.code().name == code
    assert await untraced.requests(GET_RULE, code, 1) == 1
    await get_rule(untraced.address, [("authorization", "Bearer good")])
    await get_rule(untraced.address, [("authorization", "Bearer good")])
    assert await untraced.requests(GET_RULE, "OK", 2) == 2
    assert (
        untraced.registry.get_sample_value(
            "runbox_testsvc_rpc_duration_seconds_count", {"method": GET_RULE}
        )
        == 3
    )


async def test_rpc_makes_server_span_child_of_caller_when_tracing_exports(
    traced: Served,
) -> None:
    """Tracing on: an OpenTelemetry SERVER span per RPC, the caller's span its parent, the
    handler inside it; health checks make none."""
    await get_rule(traced.address, [("authorization", "Bearer good"), ("traceparent", TRACEPARENT)])
    async with grpc.aio.insecure_channel(traced.address) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    (span,) = traced.exporter.get_finished_spans()
    assert span.name == GET_RULE and span.kind == trace.SpanKind.SERVER
    assert span.parent is not None and span.parent.span_id == PARENT_ID
    assert span.context.trace_id == TRACE_ID
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 0
    assert traced.servicer.seen.span == span.context
    assert await traced.requests(GET_RULE, "OK", 1) == 1


async def test_client_carries_trace_context_without_client_span_when_tracing_off(
    untraced: Served,
) -> None:
    """Tracing off: a service's outgoing call carries the context of the RPC it serves (its
    trace id, its span as parent), and makes no client span."""
    untraced.servicer.forward = open_channel(
        untraced.address, token="good", tracer_provider=untraced.tracing.spans
    )
    try:
        async with open_channel(untraced.address, token="good") as channel:
            stub = alerting_pb2_grpc.AlertingServiceStub(channel)
            await stub.CreateRule(
                alerting_pb2.CreateRuleRequest(), metadata=[("traceparent", TRACEPARENT)]
            )
    finally:
        await untraced.servicer.forward.close()
    forwarding, seen = untraced.servicer.forwarding, untraced.servicer.seen
    _, trace_id, parent_id, _ = seen.metadata["traceparent"].split("-")
    assert forwarding is not None and forwarding.trace_id == TRACE_ID
    assert (int(trace_id, 16), int(parent_id, 16)) == (TRACE_ID, forwarding.span_id)
    assert seen.span is not None and seen.span.trace_id == TRACE_ID
    assert untraced.exporter.get_finished_spans() == ()


async def test_client_makes_client_span_when_tracing_exports(traced: Served) -> None:
    """Tracing on: the outgoing call gets an OpenTelemetry CLIENT span, child of the RPC's
    server span, and the server it calls continues from that client span."""
    traced.servicer.forward = open_channel(
        traced.address, token="good", tracer_provider=traced.tracing.spans
    )
    try:
        async with open_channel(traced.address, token="good") as channel:
            stub = alerting_pb2_grpc.AlertingServiceStub(channel)
            await stub.CreateRule(
                alerting_pb2.CreateRuleRequest(), metadata=[("traceparent", TRACEPARENT)]
            )
    finally:
        await traced.servicer.forward.close()
    spans = {(s.name, s.kind): s for s in traced.exporter.get_finished_spans()}
    create = spans[(f"/{SERVICE}/CreateRule", trace.SpanKind.SERVER)]
    client = spans[(GET_RULE, trace.SpanKind.CLIENT)]
    served = spans[(GET_RULE, trace.SpanKind.SERVER)]
    assert client.parent is not None and client.parent.span_id == create.context.span_id
    assert served.parent is not None and served.parent.span_id == client.context.span_id
    assert {s.context.trace_id for s in spans.values()} == {TRACE_ID}
