"""OpenTelemetry tracing setup, trace context carried in message headers, and
structured JSON logs carrying run_id and trace_id."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.settings import LogSettings

_PROPAGATOR = TraceContextTextMapPropagator()
run_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("runbox_run_id", default="")


def setup_tracing(service: str) -> TracerProvider:
    """A tracer provider for this service. Spans get real ids (so logs and
    events can carry them); exporters are added by deployment configuration
    (OTEL_* variables with an exporter package installed)."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"runbox-{service}"}))
    return provider


def inject_context(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as W3C headers (traceparent, tracestate)."""
    carrier = {} if carrier is None else carrier
    _PROPAGATOR.inject(carrier)
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
