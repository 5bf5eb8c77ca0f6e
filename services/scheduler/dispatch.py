"""Dispatch: hands PENDING runs to executors, highest priority first and FIFO
within a priority. Execute is idempotent on the run id, so a run handed over
twice (e.g. after a crash before it was marked QUEUED) still runs once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from opentelemetry import trace

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2
from services.scheduler import batches, handoff
from services.scheduler.executors import Executor, ExecutorSet
from services.scheduler.firing import FiresFirst
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import RunRow
from services.scheduler.runs import Runs
from shared.errors import FailedPrecondition, NotFound
from shared.status import from_rpc_error
from shared.tasks import WakeableLoop, being_cancelled
from shared.telemetry import (
    EXECUTION_TYPE,
    RUN_ID,
    SCRIPT_NAME,
    current_span,
    enum_name,
    extract_context,
    inject_context,
    tracer_of,
)

log = logging.getLogger(__name__)
# The PreconditionFailure subject of an executor refusing a run for want of a sandbox
# (common.proto FAILURE_REASON_NO_SANDBOX).
NO_SANDBOX_SUBJECT = "sandbox.allow_unsandboxed"
# Accepted runs recorded QUEUED per write after a due hand-over (bounded IN lists).
MARK_CHUNK = 1000


@dataclass(frozen=True)
class ConcurrencyLimits:
    """Most runs held by executors (QUEUED or RUNNING) at once: in all (`total`), per script
    (`per_script`, overridden by name in `scripts`); 0 = no limit."""

    total: int = 0
    per_script: int = 0
    scripts: Mapping[str, int] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.total or self.per_script or self.scripts)

    def for_script(self, name: str) -> int:
        return self.scripts.get(name, self.per_script)


# A run an executor accepted: (run id, executor id, executor address).
Accepted = tuple[str, str, str]


class Dispatcher(WakeableLoop):
    """Background loop moving PENDING runs to executors."""

    name = "dispatcher"

    def __init__(
        self,
        runs: Runs,
        executors: ExecutorSet,
        metrics: SchedulerMetrics,
        *,
        interval_s: float,
        batch: int,
        backoff_s: float,
        backoff_max_s: float,
        limits: ConcurrencyLimits | None = None,
        claim_s: float = 30.0,
        failover_s: float = 20.0,
        secret_grace_s: float = 30.0,
        parallel: int = 16,
        first: FiresFirst | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        super().__init__(interval_s)
        # Runs handed over directly after their submit (handoff.py), until Execute answered.
        self._handing: dict[str, asyncio.Task[None]] = {}
        # Hand-overs of runs claimed at their due second by firing (send_due).
        self._sending_due: set[asyncio.Task[None]] = set()
        self._tracer = tracer or tracer_of(None, __name__)
        self._first = first or FiresFirst()
        self._claim_s = claim_s
        self._failover = timedelta(seconds=failover_s)
        self._secret_grace = timedelta(seconds=secret_grace_s)
        self._runs = runs
        self._executors = executors
        self._metrics = metrics
        # The per-run counters' children, looked up once (as consumer.py's).
        self._direct = metrics.handoffs.labels("direct")
        self._accepted = metrics.dispatch.labels("accepted")
        self._batch = batch
        self._backoff = backoff_s
        self._backoff_max = backoff_max_s
        self._rr = itertools.count()
        self._limits = limits or ConcurrencyLimits()
        self._parallel = parallel

    async def step(self) -> int:
        return await self.dispatch_once()

    def submitted(self) -> None:
        """The lifecycle's `submitted` listener: a run submitted inside `direct()` is counted there
        for `hand` to send; any other (a fire, a retry, a replay) wakes the loop."""
        current = handoff.current()
        if current is not None:
            current.submitted += 1
            return
        self.notify()

    def direct(self) -> contextlib.AbstractContextManager[handoff.Handoff]:
        """Where a run submitted now goes, decided before its transaction (handoff.py):
        nowhere (the loop takes it) under concurrency limits (counted by rounds), while
        fires go first, or with no executor ready."""
        ready = not (self._limits.enabled or not self._first.is_idle() or self.stopping)
        return handoff.direct(
            handoff.Handoff(
                candidates=self._available() if ready else [],
                claim_s=self._claim_s,
            )
        )

    def hand(self, row: RunRow, direct: handoff.Handoff) -> None:
        """After the commit: send the run its submit claimed to an executor now, in the
        background; a new run not claimed so is the loop's (woken)."""
        if not direct.submitted:
            return  # an idempotent repeat: nothing new
        if direct.claimed != row.id:
            self._metrics.handoffs.labels("round").inc()
            self.notify()
            return
        self._direct.inc()
        task = asyncio.create_task(self._hand(row, direct.candidates), name=f"hand:{row.id}")
        self._handing[row.id] = task
        task.add_done_callback(lambda _: self._handing.pop(row.id, None))

    async def _hand(self, row: RunRow, candidates: list[Executor]) -> None:
        """Execute for one claimed run; a failure leaves it to the loop (after its claim)."""
        try:
            with self._span(row) as span:
                answer = await self._dispatch(row, candidates, recorded=True)
                span.set_attribute("runbox.dispatch.accepted", answer is not None)
            if answer is not None:
                await self._runs.mark_dispatched_many([answer])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dispatch: hand-off of run %s failed; a round sends it", row.id)

    @property
    def claim_s(self) -> float:
        return self._claim_s

    def due_executors(self) -> list[Executor]:
        """Executors the firing loop may claim due runs recorded ahead for (firing/due.py),
        in this round-robin turn: none under concurrency limits (rounds count them), while
        stopping, or when no ready executor takes ExecuteBatch; then rounds send them."""
        if self._limits.enabled or self.stopping:
            return []
        return [executor for executor in self._available() if executor.batches]

    def send_due(self, sends: Sequence[tuple[executor_pb2.ExecuteRequest, Executor]]) -> None:
        """After the promotion that claimed them and recorded where each goes: send the
        runs (their requests built when their fires were recorded) in ExecuteBatch calls,
        in the background. What fails here is left to rounds (the claim expires)."""
        task = asyncio.create_task(self._send_due(sends), name="dispatch:due")
        self._sending_due.add(task)
        task.add_done_callback(self._sending_due.discard)

    async def _send_due(
        self, sends: Sequence[tuple[executor_pb2.ExecuteRequest, Executor]]
    ) -> None:
        grouped: dict[str, list[executor_pb2.ExecuteRequest]] = {}
        executors: dict[str, Executor] = {}
        for request, executor in sends:
            executors[executor.address] = executor
            grouped.setdefault(executor.address, []).append(request)
        gate = asyncio.Semaphore(self._parallel)

        async def call(
            executor: Executor, requests: list[executor_pb2.ExecuteRequest]
        ) -> list[Accepted | None]:
            async with gate:
                return await self._due_batch(executor, requests)

        try:
            answers = await asyncio.gather(
                *(
                    call(executors[address], list(chunk))
                    for address, requests in grouped.items()
                    for chunk in batches.chunks(requests)
                )
            )
            accepted = [answer for group in answers for answer in group if answer is not None]
            for chunk in batches.chunks(accepted, MARK_CHUNK):
                await self._runs.mark_dispatched_many(chunk)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dispatch: due runs not all handed over; rounds send them")

    async def _due_batch(
        self, executor: Executor, requests: list[executor_pb2.ExecuteRequest]
    ) -> list[Accepted | None]:
        """One ExecuteBatch of due runs. A run the executor did not take is read back and
        handled as a round's would be (`_settle`)."""
        spans = [
            self._tracer.start_span(
                "scheduler.dispatch",
                context=extract_context(dict(request.trace_context)),
                attributes={
                    RUN_ID: request.run_id,
                    SCRIPT_NAME: request.script_name,
                    EXECUTION_TYPE: enum_name(common_pb2.ExecutionType, request.execution_type),
                    "runbox.attempt": request.attempt,
                },
            )
            for request in requests
        ]
        try:
            for request, span in zip(requests, spans, strict=True):
                if span.is_recording():
                    request.trace_context.update(
                        inject_context(context=trace.set_span_in_context(span))
                    )
            result = await batches.send_requests(executor, requests, timeout_s=10)
            answers: list[Accepted | None] = []
            left: list[tuple[executor_pb2.ExecuteRequest, trace.Span, batches.Answer | None]] = []
            for i, (request, span) in enumerate(zip(requests, spans, strict=True)):
                answer = None if isinstance(result, grpc.StatusCode) else result[i]
                if isinstance(answer, str):
                    span.set_attribute("runbox.dispatch.accepted", True)
                    answers.append((request.run_id, answer, executor.address))
                else:
                    left.append((request, span, answer))
            if answers:
                executor.backoff_s = 0.0
                self._accepted.inc(len(answers))
            if left:
                answers.extend(await self._due_left(executor, left, result))
            return answers
        finally:
            for span in spans:
                span.end()

    async def _due_left(
        self,
        executor: Executor,
        left: list[tuple[executor_pb2.ExecuteRequest, trace.Span, batches.Answer | None]],
        result: list[batches.Answer] | grpc.StatusCode,
    ) -> list[Accepted | None]:
        """Due runs an ExecuteBatch did not place: their rows read back, each handled as in
        a round (recorded as sent to `executor` already)."""
        others = [e for e in self._available() if e is not executor]
        items: list[tuple[RunRow, list[Executor]]] = []
        spans: list[trace.Span] = []
        refusals: list[batches.Answer] = []
        for request, span, answer in left:
            try:
                row = await self._runs.store.get(request.run_id)
            except NotFound:
                continue
            items.append((row, [executor, *others]))
            spans.append(span)
            if answer is not None:
                refusals.append(answer)
        outcome = result if isinstance(result, grpc.StatusCode) else refusals
        return await self._settle(items, spans, outcome, executor, {row.id for row, _ in items})

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the step and the direct hand-offs in flight, then stop."""
        await super().stop(timeout_s)
        pending = [*self._handing.values(), *self._sending_due]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    async def dispatch_once(self) -> int:
        """One round; returns how many runs were handed to an executor. Runs of a script at
        its concurrency limit wait (later runs of other scripts still go); at the global limit
        the round ends. The round's runs are handed over concurrently (at most `parallel`
        Execute calls in flight), their attempts and answers recorded in one write each."""
        if not self._executors.ready():
            return 0  # every executor is backing off: nothing to claim yet
        await self._first.wait()
        limits = self._limits
        active: dict[str, int] = {}
        if limits.enabled:
            active = await self._runs.store.active_counts()
        total = sum(active.values())
        rows = list(await self._runs.store.claim_pending(self._batch, self._claim_s))
        held_back: list[str] = []
        sending: list[RunRow] = []
        for i, row in enumerate(rows):
            if limits.total and total >= limits.total:
                self._metrics.dispatch.labels("limited").inc()
                held_back.extend(r.id for r in rows[i:])
                break
            cap = limits.for_script(row.script_name)
            if cap and active.get(row.script_name, 0) >= cap:
                self._metrics.dispatch.labels("limited").inc()
                held_back.append(row.id)
                continue
            if await self._secrets_missing(row):
                continue
            sending.append(row)
            total += 1
            active[row.script_name] = active.get(row.script_name, 0) + 1
        plans = [(row, self._candidates(row)) for row in sending]
        # Where each run goes first, recorded before it is sent, should the answer be lost.
        first = {
            row.id: candidates[0].address
            for row, candidates in plans
            if candidates and _needs_record(row, candidates[0])
        }
        await self._runs.store.record_attempts(first)
        answers = await self._hand_over(plans, set(first))
        accepted = [answer for answer in answers if answer is not None]
        # The answers and the release of the runs held back: one write.
        await self._runs.mark_dispatched_many(accepted, release=held_back)
        return len(accepted)

    async def _hand_over(
        self, plans: list[tuple[RunRow, list[Executor]]], recorded: set[str]
    ) -> list[Accepted | None]:
        """Send a round's runs: in ExecuteBatch calls per executor (batches.py), or one
        Execute each to an executor without it; at most `parallel` calls in flight."""
        gate = asyncio.Semaphore(self._parallel)
        single: list[tuple[RunRow, list[Executor]]] = []
        grouped: dict[str, list[tuple[RunRow, list[Executor]]]] = {}
        for row, candidates in plans:
            if len(plans) > 1 and candidates and candidates[0].batches:
                grouped.setdefault(candidates[0].address, []).append((row, candidates))
            else:
                single.append((row, candidates))

        async def one(row: RunRow, candidates: list[Executor]) -> Accepted | None:
            async with gate:
                return await self._send(row, candidates, recorded=row.id in recorded)

        async def group(items: list[tuple[RunRow, list[Executor]]]) -> list[Accepted | None]:
            async with gate:
                return await self._send_batch(items, recorded)

        calls = [
            group(list(chunk)) for items in grouped.values() for chunk in batches.chunks(items)
        ]
        answers = await asyncio.gather(
            *calls, *(one(row, candidates) for row, candidates in single)
        )
        out: list[Accepted | None] = []
        for answer in answers:
            out.extend(answer if isinstance(answer, list) else [answer])
        return out

    async def _send(
        self, row: RunRow, candidates: list[Executor], *, recorded: bool
    ) -> Accepted | None:
        with self._span(row) as span:
            answer = await self._dispatch(row, candidates, recorded=recorded)
            span.set_attribute("runbox.dispatch.accepted", answer is not None)
            return answer

    async def _send_batch(
        self, items: list[tuple[RunRow, list[Executor]]], recorded: set[str]
    ) -> list[Accepted | None]:
        """One ExecuteBatch to the first candidate of `items`; each run's answer handled as
        its Execute answer would be. A failed call falls back to one Execute per run
        (UNIMPLEMENTED, or an error the runs should each get) or waits (no answer)."""
        executor = items[0][1][0]
        rows = [row for row, _ in items]
        spans = [
            self._tracer.start_span(
                "scheduler.dispatch",
                context=extract_context(row.trace_context),
                attributes=self._attributes(row),
            )
            for row in rows
        ]
        try:
            result = await batches.send(
                batches.Batch(executor, rows, spans), self._request, timeout_s=10
            )
            return await self._settle(items, spans, result, executor, recorded)
        finally:
            for span in spans:
                span.end()

    async def _settle(
        self,
        items: list[tuple[RunRow, list[Executor]]],
        spans: Sequence[trace.Span],
        result: list[batches.Answer] | grpc.StatusCode,
        executor: Executor,
        recorded: set[str],
    ) -> list[Accepted | None]:
        """Each run's answer of an ExecuteBatch to `executor` (the first candidate of
        `items`), handled as its Execute answer would be. A failed call falls back to one
        Execute per run (UNIMPLEMENTED, or an error the runs should each get) or waits (no
        answer)."""
        if isinstance(result, grpc.StatusCode):
            if result not in batches.BUSY:
                fallback = asyncio.Semaphore(self._parallel)

                async def one(row: RunRow, candidates: list[Executor]) -> Accepted | None:
                    async with fallback:
                        return await self._send(row, candidates, recorded=row.id in recorded)

                return await batches.each(items, one)
            refusal = batches.Refusal(result, "no answer to ExecuteBatch")
            return [await self._refused(row, c, executor, refusal) for row, c in items]
        answers: list[Accepted | None] = []
        for (row, candidates), span, answer in zip(items, spans, result, strict=True):
            span.set_attribute("runbox.dispatch.accepted", isinstance(answer, str))
            if isinstance(answer, str):
                executor.backoff_s = 0.0
                self._accepted.inc()
                answers.append((row.id, answer, executor.address))
            else:
                answers.append(await self._refused(row, candidates, executor, answer))
        return answers

    async def _refused(
        self,
        row: RunRow,
        candidates: list[Executor],
        executor: Executor,
        refusal: batches.Refusal,
    ) -> Accepted | None:
        """A run of a batch the executor did not take, handled as in `_dispatch`."""
        if refusal.code in batches.BUSY:
            self._metrics.dispatch.labels("busy").inc()
            self._back_off(executor)
            full = refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Refused for room: the next candidate may take it; no answer: it waits.
            return await self._dispatch(row, candidates[1:] if full else [], recorded=False)
        self._metrics.dispatch.labels("rejected").inc()
        await self._runs.fail(
            row.id,
            reason_of(refusal.code, refusal.subjects),
            f"executor refused the run: {refusal.code.name}: {refusal.message}",
        )
        return None

    def _span(self, row: RunRow) -> Any:
        """The span of one run's hand-over, in the trace of the request that submitted it
        (its context is kept on the run row), so the run's trace goes on past SubmitRun."""
        return current_span(
            self._tracer,
            "scheduler.dispatch",
            context=extract_context(row.trace_context),
            attributes=self._attributes(row),
        )

    @staticmethod
    def _attributes(row: RunRow) -> dict[str, str | int]:
        return {
            RUN_ID: row.id,
            SCRIPT_NAME: row.script_name,
            EXECUTION_TYPE: enum_name(common_pb2.ExecutionType, row.execution_type),
            "runbox.attempt": row.attempt,
        }

    def _available(self) -> list[Executor]:
        ready = self._executors.ready()
        start = next(self._rr) % max(len(ready), 1)
        return ready[start:] + ready[:start]

    def _candidates(self, row: RunRow) -> list[Executor]:
        """Where the run may go now. One handed to an executor without a recorded answer (a
        crash, a timeout) may be running there: it goes back to that executor only (which
        knows it by its id and never starts it twice) until that executor had a lease's time
        to report it; then to any."""
        attempted = row.dispatch_attempted_at
        if (
            row.executor_address
            and attempted is not None
            and datetime.now(UTC) - _utc(attempted) < self._failover
        ):
            pinned = self._executors.pin(row.executor_address)
            return [pinned] if pinned.busy_until <= time.monotonic() else []
        return self._available()

    async def _secrets_missing(self, row: RunRow) -> bool:
        """A run with secret parameters this replica does not hold: True when it was left
        for the replica holding them (deferred) or failed because they are gone."""
        if not row.secret_names or row.id in self._runs.secrets:
            return False
        # Secret values live only in the memory of the replica that took the submit: give
        # that one time to dispatch it; past that they are gone (a restart).
        if datetime.now(UTC) - _utc(row.created_at) < self._secret_grace:
            await self._runs.store.defer(row.id, datetime.now(UTC) + timedelta(seconds=1))
            return True
        await self._runs.fail(
            row.id,
            common_pb2.FAILURE_REASON_INFRASTRUCTURE,
            "secret parameter values were lost in a scheduler restart before dispatch; resubmit the run",
        )
        return True

    async def _dispatch(
        self, row: RunRow, candidates: list[Executor], *, recorded: bool
    ) -> tuple[str, str, str] | None:
        """Hand one run to the first candidate that takes it: (run id, executor id, address)
        when one did; otherwise the run is deferred or failed here."""
        request = self._request(row)
        for n, executor in enumerate(candidates):
            if not (recorded and n == 0):
                await self._runs.store.record_attempt(row.id, executor.address)
            try:
                reply = await executor.execute(request, timeout_s=10)
            except asyncio.CancelledError:
                if being_cancelled():
                    raise
                # grpc.aio raises this for a call its peer cancelled: no answer, as UNAVAILABLE.
                self._metrics.dispatch.labels("busy").inc()
                self._back_off(executor)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() in batches.BUSY:
                    self._metrics.dispatch.labels("busy").inc()
                    self._back_off(executor)
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        continue  # refused: it holds nothing, the next may take it
                    break  # no answer: it may hold the run, which stays with it for now
                self._metrics.dispatch.labels("rejected").inc()
                await self._runs.fail(
                    row.id,
                    refusal_reason(exc),
                    f"executor refused the run: {exc.code().name}: {exc.details()}",
                )
                return None
            executor.backoff_s = 0.0
            self._accepted.inc()
            return row.id, reply.executor_id, executor.address
        await self._runs.store.defer(row.id, datetime.now(UTC) + timedelta(seconds=self._backoff))
        return None

    def _back_off(self, executor: Executor) -> None:
        executor.backoff_s = min(max(executor.backoff_s * 2, self._backoff), self._backoff_max)
        executor.busy_until = time.monotonic() + executor.backoff_s

    def _request(self, row: RunRow, span: trace.Span | None = None) -> executor_pb2.ExecuteRequest:
        # The executor's run continues from the dispatch span (from the submit's trace when
        # nothing traces here).
        context = (
            inject_context(context=trace.set_span_in_context(span))
            if span is not None
            else inject_context()
        )
        return batches.request_of(row, self._runs.secrets.get(row.id, {}), context)


def refusal_reason(exc: grpc.aio.AioRpcError) -> int:
    """Why a run an executor refused fails (see `reason_of`)."""
    error = from_rpc_error(exc)
    subjects = [v.field for v in error.violations] if isinstance(error, FailedPrecondition) else []
    return reason_of(exc.code(), subjects)


def reason_of(code: grpc.StatusCode, subjects: Sequence[str]) -> int:
    """Why a run an executor refused fails: NO_SANDBOX when the executor has no sandbox for
    it (a PreconditionFailure on sandbox.allow_unsandboxed), else INVALID_CONFIG."""
    if code == grpc.StatusCode.FAILED_PRECONDITION and NO_SANDBOX_SUBJECT in subjects:
        return common_pb2.FAILURE_REASON_NO_SANDBOX
    return common_pb2.FAILURE_REASON_INVALID_CONFIG


def _needs_record(row: RunRow, executor: Executor) -> bool:
    """Whether sending the run to `executor` must be recorded first: not when the run is
    already recorded as sent there (a run pinned to the executor that has it)."""
    return executor.address != row.executor_address or row.dispatch_attempted_at is None


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
