"""ExecuteBatch on a real executor (local backend): each run accepted as Execute would,
idempotent on run id, one refused run answered on its own, and the batch size bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2
from services.executor.batch import MAX_BATCH
from tests.integration.executor.conftest import ExecutorHarness, open_harness

LOCAL = common_pb2.EXECUTION_TYPE_LOCAL


@pytest.fixture
async def executor(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[ExecutorHarness]:
    async with open_harness(
        tmp_path, nats_server.url, tokens, "local", local={"commands": {"true": "/bin/true"}}
    ) as harness:
        yield harness


def _true(executor: ExecutorHarness) -> executor_pb2.ExecuteRequest:
    return executor.request("noop\n", kind=LOCAL, config={"local": {"command": "true"}})


async def test_batch_runs_each_run_once_and_answers_a_bad_one_on_its_own(
    executor: ExecutorHarness,
) -> None:
    """Three good runs and one without a run id: the good ones are accepted and succeed,
    the bad one is INVALID_ARGUMENT on run_id; sent again, the good ones are not new."""
    good = [_true(executor) for _ in range(3)]
    bad = _true(executor)
    bad.run_id = ""
    reply = await executor.stub.ExecuteBatch(executor_pb2.ExecuteBatchRequest(runs=[*good, bad]))
    assert [r.run_id for r in reply.results] == [*(g.run_id for g in good), ""]
    assert all(r.accepted.newly_accepted and r.code == 0 for r in reply.results[:3])
    assert not reply.results[3].HasField("accepted")
    assert reply.results[3].code == code_pb2.INVALID_ARGUMENT
    assert list(reply.results[3].subjects) == ["run_id"]
    for request in good:
        events = await executor.events(request.run_id)
        assert events[-1].state == common_pb2.RUN_STATE_SUCCEEDED
    again = await executor.stub.ExecuteBatch(executor_pb2.ExecuteBatchRequest(runs=good))
    assert [r.accepted.newly_accepted for r in again.results] == [False] * 3


async def test_batch_larger_than_the_bound_is_invalid_argument(
    executor: ExecutorHarness,
) -> None:
    """More runs than MAX_BATCH in one call: INVALID_ARGUMENT, nothing accepted."""
    runs = [_true(executor) for _ in range(MAX_BATCH + 1)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await executor.stub.ExecuteBatch(executor_pb2.ExecuteBatchRequest(runs=runs))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    active = await executor.stub.ListActiveRuns(executor_pb2.ListActiveRunsRequest())
    assert not active.runs


async def test_batch_on_a_full_executor_answers_the_overflow_resource_exhausted(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """One slot and one queue place: of three runs the third is RESOURCE_EXHAUSTED on its
    own, naming the executor's limit (not INTERNAL for the whole batch); the two held runs
    are accepted and go on."""
    async with open_harness(
        tmp_path, nats_server.url, tokens, "local", max_concurrent_runs=1, max_queued_runs=1
    ) as executor:
        runs = [executor.request("import time\ntime.sleep(30)\n") for _ in range(3)]
        reply = await executor.stub.ExecuteBatch(executor_pb2.ExecuteBatchRequest(runs=runs))
        assert [r.code for r in reply.results] == [0, 0, code_pb2.RESOURCE_EXHAUSTED]
        assert all(r.accepted.newly_accepted for r in reply.results[:2])
        full = reply.results[2]
        assert full.run_id == runs[2].run_id and not full.HasField("accepted")
        assert "is full" in full.message
        assert list(full.subjects) == [f"executor:{reply.results[0].accepted.executor_id}"]
        for run in runs[:2]:
            await executor.stub.Cancel(executor_pb2.CancelRequest(run_id=run.run_id))
            events = await executor.events(run.run_id)
            assert events[-1].state == common_pb2.RUN_STATE_CANCELLED
