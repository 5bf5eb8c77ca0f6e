"""Runs handed to an executor in bulk: one ExecuteBatch call carries up to `size` runs
(each accepted by the executor exactly as Execute would, idempotent on its run id), so a
burst of due fires costs a call per batch, not per run.

Each run's answer is handled as its own Execute answer would be: accepted; refused for
want of room (RESOURCE_EXHAUSTED: the executor backs off and the run tries the next
candidate); no answer (the executor backs off and the run waits: it may hold it); or
rejected (the run fails with the executor's reason). An executor older than ExecuteBatch
(0.2.0) answers UNIMPLEMENTED: it is remembered and its runs go one Execute each, now and
from then on (a rolling upgrade)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2
from services.scheduler.executors import Executor
from services.scheduler.models import RunRow
from shared.tasks import being_cancelled

T = TypeVar("T")
# Most runs in one ExecuteBatch (the executor takes up to 500).
BATCH_SIZE = 250
BUSY = {
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Refusal:
    """A run the executor did not take: its status code, message and detail subjects."""

    code: grpc.StatusCode
    message: str
    subjects: tuple[str, ...] = ()


# What one run's answer in a batch was: accepted (the executor's id), or refused.
Answer = str | Refusal


@dataclass(frozen=True)
class Batch:
    """Runs going to one executor in one call, each with its dispatch span."""

    executor: Executor
    rows: Sequence[RunRow]
    spans: Sequence[trace.Span]


def chunks(items: Sequence[T], size: int = BATCH_SIZE) -> list[Sequence[T]]:
    """`items` in batches of at most `size`."""
    return [items[i : i + size] for i in range(0, len(items), size)]


async def send(
    batch: Batch,
    request_of: Callable[[RunRow, trace.Span], executor_pb2.ExecuteRequest],
    timeout_s: float,
) -> list[Answer] | grpc.StatusCode:
    """One ExecuteBatch: an answer per run, in order; or the call's own status code when
    it failed as a whole (UNIMPLEMENTED: an executor older than ExecuteBatch)."""
    requests = [request_of(row, span) for row, span in zip(batch.rows, batch.spans, strict=True)]
    return await send_requests(batch.executor, requests, timeout_s)


async def send_requests(
    executor: Executor, requests: Sequence[executor_pb2.ExecuteRequest], timeout_s: float
) -> list[Answer] | grpc.StatusCode:
    """`send` for requests built already (fires recorded ahead carry theirs)."""
    try:
        reply = await executor.stub.ExecuteBatch(
            executor_pb2.ExecuteBatchRequest(runs=requests), timeout=timeout_s
        )
    except asyncio.CancelledError:
        if being_cancelled():
            raise
        # grpc.aio raises this for a call its peer cancelled: no answer, as UNAVAILABLE.
        return grpc.StatusCode.UNAVAILABLE
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            executor.batches = False
        return exc.code()
    by_id = {result.run_id: result for result in reply.results}
    answers: list[Answer] = []
    for request in requests:
        result = by_id.get(request.run_id)
        if result is None:
            answers.append(Refusal(grpc.StatusCode.UNAVAILABLE, "no answer for the run"))
        elif result.HasField("accepted"):
            answers.append(result.accepted.executor_id)
        else:
            code = _CODES.get(result.code, grpc.StatusCode.UNKNOWN)
            answers.append(Refusal(code, result.message, tuple(result.subjects)))
    return answers


def request_of(
    row: RunRow, secrets: Mapping[str, str], trace_context: Mapping[str, str]
) -> executor_pb2.ExecuteRequest:
    """The ExecuteRequest of `row` (its `trace_context` when the given one is empty)."""
    parameters = struct_pb2.Struct()
    parameters.update(row.parameters)
    config = struct_pb2.Struct()
    config.update(row.config)
    limits = json_format.ParseDict(row.limits, common_pb2.ResourceLimits())
    return executor_pb2.ExecuteRequest(
        run_id=row.id,
        attempt=row.attempt,
        script_name=row.script_name,
        script_version=row.script_version,
        sha256=row.sha256,
        execution_type=row.execution_type,  # type: ignore[arg-type]
        config=config,
        parameters=parameters,
        secret_parameters=secrets,
        limits=limits,
        isolation=common_pb2.Isolation.ValueType(row.isolation),  # type: ignore[arg-type]
        runtime=common_pb2.Runtime.ValueType(row.runtime),  # type: ignore[arg-type]
        labels=row.labels,
        schedule_id=row.schedule_id or "",
        parent_run_id=row.parent_run_id or "",
        trace_context=trace_context or row.trace_context,
    )


async def each(
    items: Sequence[tuple[RunRow, list[Executor]]],
    one: Callable[[RunRow, list[Executor]], Awaitable[tuple[str, str, str] | None]],
) -> list[tuple[str, str, str] | None]:
    """`one` for each run (the per-run Execute path), concurrently."""
    return list(await asyncio.gather(*(one(row, candidates) for row, candidates in items)))
