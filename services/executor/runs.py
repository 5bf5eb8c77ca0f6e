"""Accepted runs: idempotent acceptance, bounded concurrency, execution in a
runner, live output, and the QUEUED / STARTED / LOG / FINISHED events."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from services.executor.capture import StreamCapture
from services.executor.config import ExecutorSettings
from services.executor.content import ContentError, ContentSource
from services.executor.events import EventPublisher, RunContext, build_event, finished_fields
from services.executor.metrics import ExecutorMetrics
from services.executor.output import Redactor
from services.executor.results import redact_result, result_struct
from services.executor.runners.base import Job, Limits, Outcome, RunnerRegistry
from shared.errors import InvalidArgument, ResourceExhausted, Unavailable
from shared.telemetry import run_id_var

log = logging.getLogger(__name__)
RS = common_pb2.RunState
LIVE_FLUSH_S = 0.25


@dataclass
class ActiveRun:
    """A run this executor holds, from acceptance to its FINISHED event."""

    request: executor_pb2.ExecuteRequest
    ctx: RunContext
    accepted_at: datetime
    state: int = RS.RUN_STATE_QUEUED
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    shutdown: bool = False
    streams: dict[str, StreamCapture] = field(default_factory=dict)
    # Set once QUEUED is in the outbox: the run starts without waiting for that write, and
    # its STARTED event waits for it, so events stay in order.
    queued: asyncio.Event = field(default_factory=asyncio.Event)


class RunManager:
    """Owns the runs accepted by this executor."""

    def __init__(
        self,
        *,
        settings: ExecutorSettings,
        executor_id: str,
        registry: RunnerRegistry,
        content: ContentSource,
        publisher: EventPublisher,
        metrics: ExecutorMetrics,
    ) -> None:
        self._settings = settings
        self.executor_id = executor_id
        self._registry = registry
        self._content = content
        self._publisher = publisher
        self._metrics = metrics
        self._slots = asyncio.BoundedSemaphore(settings.max_concurrent_runs)
        self._runs: dict[str, ActiveRun] = {}
        self._accepted: dict[str, datetime] = {}  # recently finished, for idempotency
        self._draining = False

    @property
    def capacity(self) -> int:
        return self._settings.max_concurrent_runs

    def active(self) -> list[ActiveRun]:
        return list(self._runs.values())

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting; let runs finish within the grace period, then stop the
        rest, which end FAILED with reason INFRASTRUCTURE so they can be retried."""
        self._draining = True
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for run in list(self._runs.values()):
                run.shutdown = True
                await self.cancel(run.request.run_id)
            if pending:
                await asyncio.wait(pending, timeout=30)

    async def accept(self, request: executor_pb2.ExecuteRequest) -> tuple[datetime, bool]:
        """Accept a run once; a repeated run id returns the first acceptance."""
        if self._draining:
            raise Unavailable(f"executor {self.executor_id} is shutting down")
        if not request.run_id:
            raise InvalidArgument.field("run_id", "required")
        previous = self._runs.get(request.run_id)
        if previous is not None:
            return previous.accepted_at, False
        if request.run_id in self._accepted:
            return self._accepted[request.run_id], False
        self._registry.get(request.execution_type).validate_config(_job_stub(request))
        if len(self._runs) >= self._settings.max_concurrent_runs + self._settings.max_queued_runs:
            self._metrics.rejected.inc()
            raise ResourceExhausted(f"executor {self.executor_id} is full ({len(self._runs)} runs)")
        run = ActiveRun(request=request, ctx=self._context(request), accepted_at=datetime.now(UTC))
        self._runs[request.run_id] = run
        self._accepted[request.run_id] = run.accepted_at
        while len(self._accepted) > 10_000:  # remember recent run ids only
            self._accepted.pop(next(iter(self._accepted)))
        self._metrics.active_runs.inc()
        run.task = asyncio.create_task(self._run(run), name=f"run:{request.run_id}")
        try:
            await self._publisher.publish(
                build_event(run.ctx, events_pb2.RUN_EVENT_TYPE_QUEUED, RS.RUN_STATE_QUEUED)
            )
        finally:
            run.queued.set()
        return run.accepted_at, True

    def _context(self, request: executor_pb2.ExecuteRequest) -> RunContext:
        return RunContext(
            run_id=request.run_id,
            attempt=request.attempt or 1,
            script_name=request.script_name,
            script_version=request.script_version,
            execution_type=request.execution_type,
            executor_id=self.executor_id,
            schedule_id=request.schedule_id,
            parent_run_id=request.parent_run_id,
            labels=dict(request.labels),
            trace_context=dict(request.trace_context),
        )

    async def cancel(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None:
            return False
        run.cancel_requested = True
        if run.state == RS.RUN_STATE_RUNNING:
            return await self._registry.get(run.request.execution_type).cancel(run_id)
        return True  # still waiting for a slot: _run sees the flag and finishes it CANCELLED

    async def _run(self, run: ActiveRun) -> None:
        run_id_var.set(run.request.run_id)
        try:
            async with self._slots:
                outcome = await self._execute(run)
        except Exception as exc:  # a bug must still end the run visibly
            log.exception("run failed inside the executor")
            outcome = Outcome.infrastructure(f"executor error: {type(exc).__name__}")
        if run.shutdown:
            outcome.state = RS.RUN_STATE_FAILED
            outcome.reason = common_pb2.FAILURE_REASON_INFRASTRUCTURE
            outcome.message = "executor shut down during the run"
        try:
            await asyncio.shield(self._finish(run, outcome))
        finally:
            self._runs.pop(run.request.run_id, None)
            self._metrics.active_runs.dec()

    async def _execute(self, run: ActiveRun) -> Outcome:
        request = run.request
        if run.cancel_requested:
            return Outcome(
                state=RS.RUN_STATE_CANCELLED,
                reason=common_pb2.FAILURE_REASON_CANCELLED,
                message="cancelled before start",
            )
        try:
            content = await self._content.get(
                name=request.script_name,
                version=request.script_version,
                sha256=request.sha256,
                inline=request.content,
            )
        except ContentError as exc:
            return Outcome.infrastructure(str(exc))
        job = self._job(request, content)
        redactor = Redactor(job.secrets.values())
        run.streams = {
            s: StreamCapture(redactor, job.limits.output_bytes // 2) for s in ("stdout", "stderr")
        }
        runner = self._registry.get(request.execution_type)
        flusher = asyncio.create_task(self._flush_live(run))
        loop = asyncio.get_running_loop()

        def on_output(stream: str, data: bytes) -> None:
            loop.call_soon_threadsafe(run.streams[stream].feed, data)

        async def on_started(at: datetime) -> None:
            run.state = RS.RUN_STATE_RUNNING
            await run.queued.wait()
            await self._publisher.publish(
                build_event(
                    run.ctx,
                    events_pb2.RUN_EVENT_TYPE_STARTED,
                    RS.RUN_STATE_RUNNING,
                    started_at=_ts(at),
                )
            )

        try:
            return await runner.execute(job, on_output, on_started)
        finally:
            await asyncio.sleep(0)  # let queued output callbacks run
            for capture in run.streams.values():
                capture.close()
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)

    async def _flush_live(self, run: ActiveRun) -> None:
        await run.queued.wait()
        while True:
            await asyncio.sleep(LIVE_FLUSH_S)
            for name, capture in run.streams.items():
                data, offset = capture.take_live()
                if data:
                    stream = (
                        events_pb2.LOG_STREAM_STDOUT
                        if name == "stdout"
                        else events_pb2.LOG_STREAM_STDERR
                    )
                    chunk = events_pb2.LogChunk(stream=stream, data=data, offset=offset)
                    await self._publisher.publish(
                        build_event(run.ctx, events_pb2.RUN_EVENT_TYPE_LOG, run.state, log=chunk)
                    )

    async def _finish(self, run: ActiveRun, outcome: Outcome) -> None:
        await run.queued.wait()  # events stay in order: QUEUED first
        empty = (b"", 0, False)
        stdout = run.streams["stdout"].summary() if run.streams else empty
        stderr = run.streams["stderr"].summary() if run.streams else empty
        _redact(outcome, Redactor(run.request.secret_parameters.values()))
        for warning in outcome.warnings:
            log.warning("run: %s", warning)
        event = build_event(
            run.ctx,
            events_pb2.RUN_EVENT_TYPE_FINISHED,
            outcome.state,
            **finished_fields(outcome, stdout, stderr),
        )
        await self._publisher.publish(event)
        kind = (
            common_pb2.ExecutionType.Name(run.request.execution_type)
            .removeprefix("EXECUTION_TYPE_")
            .lower()
        )
        label = RS.Name(outcome.state).removeprefix("RUN_STATE_").lower()
        self._metrics.runs.labels(kind, label).inc()
        self._metrics.run_duration.labels(kind, label).observe(outcome.usage.wall_seconds)
        self._metrics.cpu_seconds.labels(kind).inc(outcome.usage.cpu_seconds)
        if outcome.usage.peak_memory_bytes:
            self._metrics.peak_memory.labels(kind).observe(outcome.usage.peak_memory_bytes)
        log.info("run finished", extra={"state": label, "exit_code": outcome.exit_code})

    def _job(self, request: executor_pb2.ExecuteRequest, content: bytes) -> Job:
        sandbox, req = self._settings.sandbox, request.limits
        timeout = req.timeout.ToTimedelta().total_seconds() if req.HasField("timeout") else 0
        limits = Limits(
            cpus=req.cpu or sandbox.cpus,
            memory_bytes=req.memory_bytes or sandbox.memory_bytes,
            pids=req.pids or sandbox.pids,
            work_bytes=req.disk_bytes or sandbox.work_bytes,
            timeout_s=timeout or sandbox.timeout_s,
            output_bytes=req.output_bytes or sandbox.output_bytes,
            network=req.network or common_pb2.NETWORK_POLICY_NONE,
        )
        return Job(
            run_id=request.run_id,
            attempt=request.attempt or 1,
            script_name=request.script_name,
            script_version=request.script_version,
            sha256=request.sha256,
            execution_type=request.execution_type,
            content=content,
            parameters=_struct(request.parameters),
            secrets=dict(request.secret_parameters),
            limits=limits,
            config=_struct(request.config),
            isolation=request.isolation or common_pb2.ISOLATION_PER_RUN,
            runtime=request.runtime,
        )


def _redact(outcome: Outcome, redactor: Redactor) -> None:
    """No secret leaves in the message, a warning or the result (artifact names
    were redacted when they were stored); a result no event can carry is dropped."""
    outcome.message = redactor.text(outcome.message)
    outcome.warnings = [redactor.text(w) for w in outcome.warnings]
    if outcome.result is None:
        return
    outcome.result = redact_result(outcome.result, redactor)
    try:
        result_struct(outcome.result)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        outcome.result = None
        outcome.warnings.append(f"the result was dropped: an event cannot carry it ({exc})")


def _struct(value: Any) -> dict[str, Any]:
    """Struct -> dict; integral numbers become ints (Struct only has doubles)."""
    return {k: _number(v) for k, v in json_format.MessageToDict(value).items()}


def _number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _number(v) for k, v in value.items()}
    return value


def _job_stub(request: executor_pb2.ExecuteRequest) -> Job:
    limits = Limits(
        cpus=0,
        memory_bytes=0,
        pids=0,
        work_bytes=0,
        timeout_s=0,
        output_bytes=0,
        network=request.limits.network or common_pb2.NETWORK_POLICY_NONE,
    )
    return Job(
        run_id=request.run_id,
        attempt=request.attempt,
        script_name=request.script_name,
        script_version=request.script_version,
        sha256=request.sha256,
        execution_type=request.execution_type,
        content=b"",
        # Runners render templated config (http, local) at acceptance, so that a bad
        # template or a URL outside the allow-list is refused with a precise status.
        parameters=_struct(request.parameters),
        secrets=dict(request.secret_parameters),
        limits=limits,
        config=_struct(request.config),
        isolation=request.isolation or common_pb2.ISOLATION_PER_RUN,
        runtime=request.runtime,
    )


def _ts(value: datetime) -> Any:
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts
