"""ExecuteBatch: several runs accepted in one call, each through the same accept path as
Execute (idempotent on run id), each answered on its own: one run refused (full, bad
config) does not fail the others. Accepts run concurrently, so the executor's own
batching of their commits applies as it does to concurrent Execute calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from google.protobuf import timestamp_pb2
from google.rpc import code_pb2

from runbox.executor.v1 import executor_pb2
from shared.errors import DomainError, InvalidArgument, QuotaViolation

# Most runs one ExecuteBatch may carry (the proto documents it).
MAX_BATCH = 500

Accept = Callable[[executor_pb2.ExecuteRequest], Awaitable[tuple[datetime, bool]]]


async def execute_batch(
    accept: Accept, executor_id: str, request: executor_pb2.ExecuteBatchRequest
) -> executor_pb2.ExecuteBatchResponse:
    """Accept each run of `request` with `accept` (Execute's own), one result per run."""
    if len(request.runs) > MAX_BATCH:
        raise InvalidArgument.field(
            "runs", f"at most {MAX_BATCH} runs per call, got {len(request.runs)}"
        )
    results = await asyncio.gather(*(_one(accept, executor_id, run) for run in request.runs))
    return executor_pb2.ExecuteBatchResponse(results=results)


async def _one(
    accept: Accept, executor_id: str, run: executor_pb2.ExecuteRequest
) -> executor_pb2.ExecuteResult:
    try:
        accepted_at, new = await accept(run)
    except DomainError as error:
        return executor_pb2.ExecuteResult(
            run_id=run.run_id,
            code=getattr(code_pb2, error.code, code_pb2.UNKNOWN),
            message=error.message,
            subjects=_subjects(error),
        )
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(accepted_at)
    return executor_pb2.ExecuteResult(
        run_id=run.run_id,
        accepted=executor_pb2.ExecuteResponse(
            run_id=run.run_id, executor_id=executor_id, newly_accepted=new, accepted_at=stamp
        ),
    )


def _subjects(error: DomainError) -> list[str]:
    """What the error's details name: the fields (INVALID_ARGUMENT), precondition subjects
    (FAILED_PRECONDITION) or the limits hit (RESOURCE_EXHAUSTED, e.g. "executor:<id>" when
    the executor is full)."""
    violations = getattr(error, "violations", None) or []
    return [v.subject if isinstance(v, QuotaViolation) else v.field for v in violations]
