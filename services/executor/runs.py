"""Accepted runs: idempotent acceptance, bounded concurrency with backpressure
(RESOURCE_EXHAUSTED + a retry hint), execution in a runner, live output, the
QUEUED / STARTED / LOG / FINISHED events, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from services.executor.capture import StreamCapture
from services.executor.config import ExecutorSettings
from services.executor.content import ContentError, ContentSource
from services.executor.events import (
    EventPublisher,
    RunContext,
    build_event,
    finished_fields,
    timestamp,
)
from services.executor.heartbeats import Heartbeats
from services.executor.jobs import job_for, job_stub
from services.executor.metrics import ExecutorMetrics, execution_type_label, resource_class
from services.executor.output import Redactor
from services.executor.results import redact_result, result_struct
from services.executor.runners.base import Outcome, RunnerRegistry
from services.executor.tracing import RunTracing, finish
from shared.errors import InvalidArgument, QuotaViolation, ResourceExhausted, Unavailable
from shared.telemetry import run_id_var

log = logging.getLogger(__name__)
RS = common_pb2.RunState
LIVE_FLUSH_S = 0.25
NOT_STARTED = "executor shutting down; not started"
SHUT_DOWN_DURING_RUN = "executor shut down during the run"


@dataclass
class ActiveRun:
    """A run this executor holds, from acceptance to its FINISHED event."""

    request: executor_pb2.ExecuteRequest
    ctx: RunContext
    accepted_at: datetime
    state: int = RS.RUN_STATE_QUEUED
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    # Set with cancel_requested: a run waiting for a slot stops waiting.
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    shutdown: bool = False
    streams: dict[str, StreamCapture] = field(default_factory=dict)
    # Done once QUEUED is committed (Execute answers then); the run starts without waiting
    # for it. Events are built and staged with no await in between (EventPublisher.stage),
    # so a run's sequence numbers follow the outbox order with no lock and none of its
    # events waits for the commit of the one before.
    queued: asyncio.Future[None] | None = None
    # The state the last lifecycle event told consumers; heartbeats repeat it.
    reported: int = RS.RUN_STATE_QUEUED
    # Holds a slot: it started (or is fetching its content) and is no longer handed back.
    in_slot: bool = False
    # FINISHED was built: no event of this run follows it.
    finished: bool = False
    # The run's span, from acceptance to FINISHED (its context is in every event).
    span: trace.Span = trace.INVALID_SPAN


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
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = RunTracing(tracer)
        self.executor_id = executor_id
        self._registry = registry
        self._content = content
        self._publisher = publisher
        self._metrics = metrics
        metrics.run_slots.set(settings.max_concurrent_runs)
        self._slots = asyncio.BoundedSemaphore(settings.max_concurrent_runs)
        self._runs: dict[str, ActiveRun] = {}
        self._accepted: dict[str, datetime] = {}  # recently finished, for idempotency
        self._draining = asyncio.Event()
        self._avg_run_s: float | None = None  # moving average, for the retry hint
        self._children: dict[tuple[int, str, str], _RunMetrics] = {}
        self._heartbeats = Heartbeats(
            interval_s=settings.heartbeat_interval_s, runs=self.active, publisher=publisher
        )

    @property
    def capacity(self) -> int:
        return self._settings.max_concurrent_runs

    def active(self) -> list[ActiveRun]:
        return list(self._runs.values())

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting and hand back the runs still waiting for a slot at once;
        let started runs finish within the grace period, then stop the rest. Both
        end FAILED with reason INFRASTRUCTURE, so the scheduler can retry them."""
        self._draining.set()  # waiting runs wake up and finish as not started
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for run in list(self._runs.values()):
                if run.in_slot:
                    run.shutdown = True
                    await self.cancel(run.request.run_id)
            if pending:
                await asyncio.wait(pending, timeout=30)
        await self._heartbeats.stop()

    async def accept(self, request: executor_pb2.ExecuteRequest) -> tuple[datetime, bool]:
        """Accept a run once; a repeated run id returns the first acceptance (even
        while draining or full, or after a restart: the run is or was held, nothing new
        starts)."""
        if not request.run_id:
            raise InvalidArgument.field("run_id", "required")
        held = self._held(request.run_id)
        if held is None:
            # An earlier process of this executor may have taken it (a dispatch whose answer
            # was lost, repeated after this executor restarted): it must not run again. A
            # duplicate accepted meanwhile by this process answers with its own acceptance.
            earlier = await self._publisher.accepted_at(request.run_id, request.attempt or 1)
            held = self._held(request.run_id) or earlier
        if held is not None:
            return held, False
        if self._draining.is_set():
            raise Unavailable(f"executor {self.executor_id} is shutting down")
        await self._registry.get(request.execution_type).validate_config(job_stub(request))
        # The check may have waited (on the engine): a duplicate accepted meanwhile wins.
        held = self._held(request.run_id)
        if held is not None:
            return held, False
        if self._draining.is_set():
            raise Unavailable(f"executor {self.executor_id} is shutting down")
        self._check_capacity()
        # No await from the lookups above to here: concurrent duplicates see this run.
        run = ActiveRun(request=request, ctx=self._context(request), accepted_at=datetime.now(UTC))
        run.span, run.ctx.trace_context = self._tracing.start(request)
        self._runs[request.run_id] = run
        self._accepted[request.run_id] = run.accepted_at
        while len(self._accepted) > 10_000:  # remember recent run ids only
            self._accepted.pop(next(iter(self._accepted)))
        self._metrics.active_runs.inc()
        self._heartbeats.ensure_started()
        # QUEUED first, then the run may start; answered once QUEUED is durable.
        run.queued = self._stage(run, events_pb2.RUN_EVENT_TYPE_QUEUED, RS.RUN_STATE_QUEUED)
        run.task = asyncio.create_task(self._run(run), name=f"run:{request.run_id}")
        await asyncio.shield(run.queued)
        return run.accepted_at, True

    def _held(self, run_id: str) -> datetime | None:
        """When a run id held now, or recently finished, was accepted."""
        previous = self._runs.get(run_id)
        if previous is not None:
            return previous.accepted_at
        return self._accepted.get(run_id)

    def _check_capacity(self) -> None:
        """RESOURCE_EXHAUSTED when running + waiting runs fill every slot and queue
        place, with the limit hit and a hint of when a place may free up."""
        running = sum(1 for r in self._runs.values() if r.in_slot)
        waiting = len(self._runs) - running
        slots, queue = self._settings.max_concurrent_runs, self._settings.max_queued_runs
        if len(self._runs) < slots + queue:
            return
        self._metrics.rejected.inc()
        retry_after_s = self._retry_after_s(waiting)
        raise ResourceExhausted(
            f"executor {self.executor_id} is full ({running} running, {waiting} waiting); "
            f"retry in {retry_after_s:.1f}s",
            retry_after_s=retry_after_s,
            violations=[
                QuotaViolation(
                    subject=f"executor:{self.executor_id}",
                    description=(
                        f"runs held ({len(self._runs)}) reached max_concurrent_runs ({slots}) "
                        f"+ max_queued_runs ({queue})"
                    ),
                )
            ],
        )

    def _retry_after_s(self, waiting: int) -> float:
        """Roughly when a place frees: the average run time, scaled by how many runs
        wait per slot, within the configured bounds (the minimum before any run ended)."""
        low, high = self._settings.retry_after_min_s, self._settings.retry_after_max_s
        if self._avg_run_s is None:
            return low
        estimate = self._avg_run_s * (waiting + 1) / self._settings.max_concurrent_runs
        return round(min(max(estimate, low), max(high, low)), 3)

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
        run.cancelled.set()
        if run.state == RS.RUN_STATE_RUNNING:
            return await self._registry.get(run.request.execution_type).cancel(run_id)
        # Waiting for a slot: it stops waiting and ends CANCELLED. Being set up in its
        # slot: it ends before its runner starts, or is cancelled once STARTED is out.
        return True

    async def _run(self, run: ActiveRun) -> None:
        run_id_var.set(run.request.run_id)
        otel_context.attach(trace.set_span_in_context(run.span))  # this task's: the run's
        try:
            outcome = await self._start_or_hand_back(run)
        except Exception as exc:  # a bug must still end the run visibly
            log.exception("run failed inside the executor")
            outcome = Outcome.infrastructure(f"executor error: {type(exc).__name__}")
        if run.shutdown:
            outcome.state = RS.RUN_STATE_FAILED
            outcome.reason = common_pb2.FAILURE_REASON_INFRASTRUCTURE
            outcome.message = SHUT_DOWN_DURING_RUN
        try:
            await self._finish(run, outcome)
        finally:
            self._runs.pop(run.request.run_id, None)
            self._metrics.active_runs.dec()
            finish(run.span, outcome)

    async def _start_or_hand_back(self, run: ActiveRun) -> Outcome:
        """Run in a slot; a run cancelled while waiting ends CANCELLED, and one still
        waiting when the executor starts draining is handed back (not started)."""
        if not await self._take_slot(run):
            return _cancelled_before_start() if run.cancel_requested else _not_started()
        run.in_slot = True
        try:
            with self._tracing.sandbox(run.request):
                return await self._execute(run)
        finally:
            self._slots.release()

    async def _take_slot(self, run: ActiveRun) -> bool:
        """Wait for a slot; False (holding none) once draining or the run is cancelled."""
        if self._draining.is_set() or run.cancel_requested:
            return False
        if not self._slots.locked():  # a free slot: taken at once, nothing to wait for
            await self._slots.acquire()
            return True
        acquire = asyncio.ensure_future(self._slots.acquire())
        stops = [asyncio.ensure_future(e.wait()) for e in (self._draining, run.cancelled)]
        try:
            await asyncio.wait((acquire, *stops), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for stop in stops:
                stop.cancel()
            if not acquire.done():
                # A slot granted meanwhile is given back by the semaphore on cancel.
                acquire.cancel()
                await asyncio.gather(acquire, return_exceptions=True)
        if acquire.cancelled() or acquire.exception() is not None:
            return False
        if self._draining.is_set() or run.cancel_requested:  # at once: it does not start
            self._slots.release()
            return False
        return True

    async def _execute(self, run: ActiveRun) -> Outcome:
        request = run.request
        if run.cancel_requested:
            return _cancelled_before_start()
        try:
            content = await self._content.get(
                name=request.script_name,
                version=request.script_version,
                sha256=request.sha256,
                inline=request.content,
            )
        except ContentError as exc:
            return Outcome.infrastructure(str(exc))
        if run.cancel_requested:  # while the content was fetched
            return _cancelled_before_start()
        job = job_for(request, content, self._settings.sandbox)
        redactor = Redactor(job.secrets.values())
        run.streams = {
            s: StreamCapture(
                redactor,
                job.limits.output_bytes // 2,
                live_budget=self._settings.live_output_bytes,
            )
            for s in ("stdout", "stderr")
        }
        runner = self._registry.get(request.execution_type)
        # Live output goes out from the run's first output on (a run printing nothing, most
        # short runs, has no flusher to start and stop).
        flusher: asyncio.Task[None] | None = None
        ended = False  # the runner returned: late output starts no flusher
        cancels: list[asyncio.Task[bool]] = []
        loop = asyncio.get_running_loop()

        loop_thread = threading.get_ident()

        def feed(stream: str, data: bytes) -> None:
            nonlocal flusher
            run.streams[stream].feed(data)
            if flusher is None and not ended:
                flusher = asyncio.create_task(self._flush_live(run))

        def on_output(stream: str, data: bytes) -> None:
            # On the loop (most runners): feed now, so output never queues up unbounded
            # behind a fast reader; from a runner's thread: hand it to the loop.
            if threading.get_ident() == loop_thread:
                feed(stream, data)
            else:
                loop.call_soon_threadsafe(feed, stream, data)

        async def on_started(at: datetime) -> None:
            # STARTED is staged, not waited for: the run goes on while it is committed, with
            # the next commit made anyway (a short run's FINISHED) or after a linger at most.
            run.state = RS.RUN_STATE_RUNNING
            self._stage_event(
                run,
                events_pb2.RUN_EVENT_TYPE_STARTED,
                RS.RUN_STATE_RUNNING,
                {"started_at": timestamp(at)},
                defer=True,
            )
            if run.cancel_requested:  # cancelled (or shut down) while it was being set up
                cancels.append(asyncio.create_task(runner.cancel(request.run_id)))

        try:
            outcome = await runner.execute(job, on_output, on_started)
            outcome.usage.sandbox = outcome.usage.sandbox or runner.sandbox
            return outcome
        finally:
            await asyncio.sleep(0)  # let queued output callbacks run
            ended = True
            for capture in run.streams.values():
                capture.close()
            flushers = [] if flusher is None else [flusher]
            for task in flushers:
                task.cancel()
            await asyncio.gather(*flushers, *cancels, return_exceptions=True)

    async def _flush_live(self, run: ActiveRun) -> None:
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
                    await self._stage(run, events_pb2.RUN_EVENT_TYPE_LOG, None, log=chunk)

    def _stage(
        self, run: ActiveRun, kind: int, state: int | None, **fields: object
    ) -> asyncio.Future[None]:
        """Build and stage one event of the run (state None: the last reported one), with no
        await in between; the future is done once it is committed."""
        return self._stage_event(run, kind, state, fields)

    def _stage_event(
        self,
        run: ActiveRun,
        kind: int,
        state: int | None,
        fields: dict[str, object],
        defer: bool = False,
    ) -> asyncio.Future[None]:
        if run.finished:  # nothing follows FINISHED
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        event = build_event(run.ctx, kind, run.reported if state is None else state, **fields)
        run.finished = kind == events_pb2.RUN_EVENT_TYPE_FINISHED
        run.reported = event.state
        return self._publisher.stage([event], defer=defer)

    async def _finish(self, run: ActiveRun, outcome: Outcome) -> None:
        empty = (b"", 0, False)
        stdout = run.streams["stdout"].summary() if run.streams else empty
        stderr = run.streams["stderr"].summary() if run.streams else empty
        _redact(outcome, Redactor(run.request.secret_parameters.values()))
        for warning in outcome.warnings:
            log.warning("run: %s", warning)
        # Staged at once (nothing interrupts it); its commit is waited for shielded, so the
        # run leaves the table only once FINISHED is durable (a future: no task per run).
        committed = self._stage(
            run,
            events_pb2.RUN_EVENT_TYPE_FINISHED,
            outcome.state,
            **finished_fields(outcome, stdout, stderr),
        )
        await asyncio.shield(committed)
        if run.in_slot:
            wall = outcome.usage.wall_seconds
            self._avg_run_s = (
                wall if self._avg_run_s is None else 0.8 * self._avg_run_s + 0.2 * wall
            )
        label = RS.Name(outcome.state).removeprefix("RUN_STATE_").lower()
        self._observe(run.request, outcome, label)
        log.info("run finished", extra={"state": label, "exit_code": outcome.exit_code})

    def _observe(self, request: executor_pb2.ExecuteRequest, outcome: Outcome, label: str) -> None:
        """A finished run's outcome, duration and resource use (by type and resource class)."""
        usage = outcome.usage
        size = resource_class(request.limits.memory_bytes or self._settings.sandbox.memory_bytes)
        key = (request.execution_type, size, label)
        children = self._children.get(key)
        if children is None:  # bound once per combination (a few): .labels() is ~10 us each
            m, kind = self._metrics, execution_type_label(request.execution_type)
            children = self._children[key] = _RunMetrics(
                runs=m.runs.labels(kind, label),
                duration=m.run_duration.labels(kind, size, label),
                cpu=m.cpu_seconds.labels(kind, size),
                io_read=m.io_read.labels(kind, size),
                io_write=m.io_write.labels(kind, size),
                peak_memory=m.peak_memory.labels(kind, size),
            )
        children.runs.inc()
        children.duration.observe(usage.wall_seconds)
        children.cpu.inc(usage.cpu_seconds)
        children.io_read.inc(usage.io_read_bytes)
        children.io_write.inc(usage.io_write_bytes)
        if usage.peak_memory_bytes:
            children.peak_memory.observe(usage.peak_memory_bytes)


@dataclass(frozen=True)
class _RunMetrics:
    """The metric children a finished run of one (type, resource class, outcome) updates."""

    runs: Counter
    duration: Histogram
    cpu: Counter
    io_read: Counter
    io_write: Counter
    peak_memory: Histogram


def _cancelled_before_start() -> Outcome:
    return Outcome(
        state=RS.RUN_STATE_CANCELLED,
        reason=common_pb2.FAILURE_REASON_CANCELLED,
        message="cancelled before start",
    )


def _not_started() -> Outcome:
    """Handed back: FAILED/INFRASTRUCTURE, which the scheduler may retry elsewhere."""
    return Outcome.infrastructure(NOT_STARTED)


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
