"""The executor's spans of a run: `executor.run` from acceptance to the FINISHED event, in
the trace the dispatch sent (ExecuteRequest.trace_context), and `sandbox.run` around the
run in its runner. Their attributes name the run, never its parameters or secrets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2
from services.executor.runners.base import Outcome
from shared.telemetry import (
    EXECUTION_TYPE,
    RUN_ID,
    RUN_STATE,
    SCRIPT_NAME,
    ContextTracer,
    current_span,
    enum_name,
    extract_context,
    inject_context,
    tracer_of,
)

RS = common_pb2.RunState


class RunTracing:
    """Starts and ends the spans of the runs of one executor."""

    def __init__(self, tracer: trace.Tracer | None) -> None:
        self._tracer = tracer or tracer_of(None, __name__)
        # Spans exported (or at least recorded): a ContextTracer records nothing.
        self._records = not isinstance(self._tracer, ContextTracer)

    def start(self, request: executor_pb2.ExecuteRequest) -> tuple[trace.Span, dict[str, str]]:
        """The run's span (ended by `finish`) and the trace context its events carry: the
        span's, or the request's own when nothing is traced here."""
        parent = extract_context(request.trace_context) if request.trace_context else None
        if self._records:
            span = self._tracer.start_span(
                "executor.run", context=parent, attributes=_identity(request)
            )
        else:  # attributes would be dropped: not built
            span = self._tracer.start_span("executor.run", context=parent)
        if not span.get_span_context().is_valid:
            return span, dict(request.trace_context)
        return span, inject_context(context=trace.set_span_in_context(span))

    @contextlib.contextmanager
    def sandbox(self, request: executor_pb2.ExecuteRequest) -> Iterator[trace.Span]:
        """The run in its runner (content, sandbox hand-over, the script, its collection).
        A tracer that records nothing would make the run's own span context current again:
        the run's span stays current instead."""
        if not self._records:
            yield trace.get_current_span()
            return
        with current_span(self._tracer, "sandbox.run", attributes=_identity(request)) as span:
            yield span


def finish(span: trace.Span, outcome: Outcome) -> None:
    """End the run's span with how the run ended (not an error of the executor's own:
    a failed script marks the span ERROR with the failure reason, never its message)."""
    span.set_attribute(RUN_STATE, enum_name(RS, outcome.state))
    span.set_attribute("runbox.exit_code", outcome.exit_code)
    if outcome.state != RS.RUN_STATE_SUCCEEDED:
        reason = enum_name(common_pb2.FailureReason, outcome.reason)
        span.set_attribute("runbox.failure_reason", reason)
        span.set_status(trace.StatusCode.ERROR, reason)
    span.end()


def _identity(request: executor_pb2.ExecuteRequest) -> dict[str, str | int]:
    return {
        RUN_ID: request.run_id,
        SCRIPT_NAME: request.script_name,
        "runbox.script.version": request.script_version,
        EXECUTION_TYPE: enum_name(common_pb2.ExecutionType, request.execution_type),
        "runbox.attempt": request.attempt or 1,
    }
