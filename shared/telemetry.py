"""OpenTelemetry tracing setup, trace context carried in message headers, and
structured JSON logs carrying run_id and trace_id."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from shared.settings import LogSettings

_PROPAGATOR = TraceContextTextMapPropagator()
run_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("runbox_run_id", default="")
log = logging.getLogger(__name__)


@dataclass
class Tracing:
    """A service's tracing: the SDK provider, and whether its spans leave the process."""

    provider: TracerProvider
    exporting: bool

    @property
    def spans(self) -> trace.TracerProvider:
        """Where a service's own spans (RPC clients, transactions, events, runs) come from:
        the SDK provider when exporting; otherwise one whose spans only carry the trace on
        (ContextTracer), so nothing is recorded that nobody will read."""
        return self.provider if self.exporting else _CONTEXT_ONLY


def setup_tracing(service: str, *, instance_id: str = "") -> Tracing:
    """This service's tracing, configured by the standard OTEL_* variables.

    Spans leave the process only when an OTLP endpoint is set
    (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT): then a
    BatchSpanProcessor sends them over OTLP, gRPC or http/protobuf by
    OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL (default grpc, as the Python SDK's). The sampler
    comes from OTEL_TRACES_SAMPLER[_ARG]; service.name is runbox-<service> unless
    OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one. Without an endpoint only the
    RPC server spans are made (their ids go into logs, runs and events) and every other
    span just carries the trace context on."""
    detected = OTELResourceDetector().detect()
    attributes: dict[str, str] = {"service.namespace": "runbox"}
    if not detected.attributes.get(SERVICE_NAME):
        attributes[SERVICE_NAME] = f"runbox-{service}"
    if instance_id:
        attributes["service.instance.id"] = instance_id
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = otlp_exporter(os.environ)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, exporting=exporter is not None)


class ContextTracer(trace.Tracer):
    """A tracer that records nothing: its "span" is the parent's context, made current, so
    trace ids still flow into metadata, headers, events and logs at the cost of a context
    switch. (The API's no-op tracer would drop the parent's context.)"""

    def start_span(  # type: ignore[override]
        self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any
    ) -> trace.Span:
        return trace.NonRecordingSpan(trace.get_current_span(context).get_span_context())

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: otel_context.Context | None = None, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context)
        with trace.use_span(span, end_on_exit=False):
            yield span


class _ContextTracerProvider(trace.TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _CONTEXT_TRACER


_CONTEXT_TRACER = ContextTracer()
_CONTEXT_ONLY = _ContextTracerProvider()


def records_spans(provider: trace.TracerProvider | None) -> bool:
    """False for the provider of a service that exports nothing (Tracing.spans): its spans
    only carry the trace on, which needs no OpenTelemetry instrumentation around an RPC."""
    return provider is not _CONTEXT_ONLY


class ServerSpans:
    """The context an RPC is served in when spans are not exported: a span context like the
    one the SDK's server span would have (the caller's trace, or a new one; a new span id;
    the sampler's decision), made current without the span itself. Logs, the run row and
    its events get a real trace id, and the calls the RPC makes continue the trace, at a
    fraction of the OpenTelemetry server interceptor's cost per call."""

    def __init__(self, provider: TracerProvider) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        # Newer SDKs mark a trace id they generated at random (W3C trace flags level 2).
        self._random = getattr(self._ids, "is_trace_id_random", lambda: False)()
        self._random_flag = int(getattr(trace.TraceFlags, "RANDOM_TRACE_ID", 0))

    def enter(
        self, method: str, metadata: Mapping[str, str]
    ) -> contextvars.Token[otel_context.Context]:
        """Make the span context of an RPC of `method` current (the caller's trace comes from
        its metadata); returns the token to leave() it with."""
        parent = propagate.extract(metadata)
        parent_span = trace.get_current_span(parent).get_span_context()
        if parent_span.is_valid:
            trace_id, random = parent_span.trace_id, parent_span.trace_flags & self._random_flag
        else:
            trace_id, random = self._ids.generate_trace_id(), self._random and self._random_flag
        sampling = self._sampler.should_sample(parent, trace_id, method, trace.SpanKind.SERVER)
        flags = trace.TraceFlags.SAMPLED if sampling.decision is Decision.RECORD_AND_SAMPLE else 0
        span = trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id,
                self._ids.generate_span_id(),
                is_remote=False,
                trace_flags=trace.TraceFlags(flags | random),
                trace_state=sampling.trace_state,
            )
        )
        return otel_context.attach(trace.set_span_in_context(span, parent))

    @staticmethod
    def leave(token: contextvars.Token[otel_context.Context]) -> None:
        otel_context.detach(token)


def otlp_exporter(env: Mapping[str, str]) -> SpanExporter | None:
    """The OTLP span exporter the OTEL_* variables ask for, or None (tracing stays in the
    process) when no endpoint is set, OTEL_SDK_DISABLED is true or OTEL_TRACES_EXPORTER
    is none. The exporters read their endpoint, headers, timeout and TLS settings from the
    same variables themselves."""
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use grpc or http/protobuf"
    )


def shutdown_tracing(provider: TracerProvider) -> None:
    """Send the spans still batched and stop the exporter (at service stop, last)."""
    try:
        provider.shutdown()
    except Exception as exc:  # a collector gone away must not fail the shutdown
        log.warning("tracing shutdown failed: %s", exc)


# Span attribute keys (never parameters, secrets or tokens).
RUN_ID = "runbox.run_id"
SCRIPT_NAME = "runbox.script.name"
EXECUTION_TYPE = "runbox.execution_type"
RUN_STATE = "runbox.run.state"


@contextlib.contextmanager
def current_span(
    tracer: trace.Tracer,
    name: str,
    *,
    context: otel_context.Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | bool] | None = None,
) -> Iterator[trace.Span]:
    """A span made current for the block. An exception marks it ERROR with the exception's
    type only: messages (a driver's SQL parameters, a script's error text) never go into a
    span, unlike the SDK's default exception recording."""
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
            raise


def enum_name(enum: Any, value: int) -> str:
    """A protobuf enum value's name for a span attribute (the number if it has none)."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def tracer_records(tracer: trace.Tracer | None) -> bool:
    """Whether `tracer` records spans (a ContextTracer only carries the trace on)."""
    return tracer is not None and not isinstance(tracer, ContextTracer)


def run_event_span_attributes(event: events_pb2.RunEvent) -> dict[str, str | int]:
    """Span attributes of a RunEvent: ids, script name, type and state (never its
    parameters or output)."""
    return {
        RUN_ID: event.run_id,
        SCRIPT_NAME: event.script_name,
        EXECUTION_TYPE: enum_name(common_pb2.ExecutionType, event.execution_type),
        RUN_STATE: enum_name(common_pb2.RunState, event.state),
        "runbox.event.type": enum_name(events_pb2.RunEventType, event.type),
    }


# The span of an Execute sent over the run link, on both ends: named as the unary call's, so
# a run's trace reads the same whichever way it went ("runbox.transport" tells them apart).
LINK_EXECUTE_SPAN = "/runbox.executor.v1.ExecutorService/Execute"


def link_execute_attributes(run_id: str) -> dict[str, str | int]:
    """Attributes of an Execute's span over the run link (client and server alike)."""
    return {
        "rpc.system": "grpc",
        "rpc.service": "runbox.executor.v1.ExecutorService",
        "rpc.method": "Execute",
        "runbox.transport": "run_link",
        RUN_ID: run_id,
    }


def tracer_of(provider: trace.TracerProvider | None, name: str) -> trace.Tracer:
    """A tracer from `provider`; one that only carries the trace on when there is none."""
    return (provider or _CONTEXT_ONLY).get_tracer(name)


def has_context(headers: Mapping[str, str] | None) -> bool:
    """Whether headers carry a W3C trace context (progress events carry none)."""
    return bool(headers) and "traceparent" in headers  # type: ignore[operator]


def inject_context(
    carrier: dict[str, str] | None = None, context: otel_context.Context | None = None
) -> dict[str, str]:
    """The current (or the given) trace context as W3C headers (traceparent, tracestate)."""
    carrier = {} if carrier is None else carrier
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> otel_context.Context:
    """A context continuing the trace named by W3C headers."""
    return _PROPAGATOR.extract(dict(headers or {}))


def current_trace_id() -> str:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with run_id and trace_id when known."""

    _SKIP = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        run_id = run_id_var.get()
        if run_id:
            entry["run_id"] = run_id
        trace_id = current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in self._SKIP and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(settings: LogSettings, service: str) -> None:
    """Configure the root logger once, at service start."""
    handler: logging.Handler = (
        logging.FileHandler(settings.file) if settings.file else logging.StreamHandler(sys.stderr)
    )
    if settings.json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    # httpx logs each request's full URL at INFO; webhook URLs (Slack's) carry tokens.
    logging.getLogger("httpx").setLevel(logging.WARNING)
