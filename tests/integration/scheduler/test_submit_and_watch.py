"""SubmitAndWatchRun: submit a run and stream it to its end in one call, on real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2 as RS
from runbox.scheduler.v1 import scheduler_pb2
from shared.status import from_rpc_error
from tests.integration.scheduler.test_runs import TERMINAL, submit_request, wait_terminal
from tests.integration.stack import RunPath, start_run_path

ORDER = {RS.RUN_STATE_PENDING: 0, RS.RUN_STATE_QUEUED: 1, RS.RUN_STATE_RUNNING: 2}


@pytest.fixture
async def path(tmp_path: Path, nats_server, tokens) -> AsyncIterator[RunPath]:  # type: ignore[no-untyped-def]
    stack = await start_run_path(tmp_path, nats_server.url, tokens)
    yield stack
    await stack.close()


def watch_request(
    submit: scheduler_pb2.SubmitRunRequest, *, logs: bool = False
) -> scheduler_pb2.SubmitAndWatchRunRequest:
    return scheduler_pb2.SubmitAndWatchRunRequest(submit=submit, include_logs=logs)


async def stream(
    stub, request: scheduler_pb2.SubmitAndWatchRunRequest
) -> tuple[list[scheduler_pb2.Run], bytes]:  # type: ignore[no-untyped-def]
    """Every run message and the log bytes of one SubmitAndWatchRun, to its end."""
    runs, logs = [], b""
    async for update in stub.SubmitAndWatchRun(request, timeout=30):
        if update.HasField("run"):
            runs.append(update.run)
        else:
            logs += update.log.data
    return runs, logs


async def test_submit_and_watch_streams_pending_to_succeeded_with_output(path: RunPath) -> None:
    """The first message is the run as submitted (PENDING, pinned), then each later state in
    order, live output between, ending SUCCEEDED with the run as GetRun shows it."""
    await path.publish("slow", "import time\nprint('a', flush=True)\ntime.sleep(1)\nprint('b')\n")
    stub = path.scheduler_stub()
    runs, logs = await stream(stub, watch_request(submit_request("slow"), logs=True))
    first, final = runs[0], runs[-1]
    assert first.state == RS.RUN_STATE_PENDING
    assert first.script_version == "1.0.0" and len(first.sha256) == 64
    assert first.submitted_by == "admin"
    assert {r.id for r in runs} == {first.id}
    states = [r.state for r in runs]
    assert RS.RUN_STATE_RUNNING in states
    assert states[-1] == RS.RUN_STATE_SUCCEEDED
    assert [ORDER.get(s, 3) for s in states] == sorted(ORDER.get(s, 3) for s in set(states))
    assert logs.startswith(b"a")
    assert final.output.stdout == b"a\nb\n" and final.exit.exit_code == 0
    assert final == await stub.GetRun(scheduler_pb2.GetRunRequest(id=first.id))


async def test_submit_and_watch_without_logs_sends_runs_only(path: RunPath) -> None:
    """Without include_logs the stream holds run messages alone, PENDING to SUCCEEDED."""
    await path.publish("chatty", "for i in range(3):\n    print(i, flush=True)\n")
    runs, logs = await stream(path.scheduler_stub(), watch_request(submit_request("chatty")))
    assert logs == b""
    assert runs[0].state == RS.RUN_STATE_PENDING
    assert runs[-1].state == RS.RUN_STATE_SUCCEEDED
    assert runs[-1].output.stdout == b"0\n1\n2\n"


async def test_submit_and_watch_repeated_key_watches_the_existing_run(path: RunPath) -> None:
    """A repeated idempotency key streams the first run, to its end, and stores no other;
    once that run ended, the stream is that one terminal message, as SubmitRun answers."""
    await path.publish("once", "import time\ntime.sleep(0.5)\nprint(1)\n")
    stub = path.scheduler_stub()
    request = submit_request("once")
    request.idempotency_key = "order-7"
    first = await stub.SubmitRun(request)
    runs, _ = await stream(stub, watch_request(request))
    assert {r.id for r in runs} == {first.id}
    assert runs[-1].state == RS.RUN_STATE_SUCCEEDED
    again, _ = await stream(stub, watch_request(request))
    assert again == [await stub.SubmitRun(request)]
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="once"))
    assert [r.id for r in listed.runs] == [first.id]


async def test_submit_and_watch_invalid_request_fails_before_any_message(path: RunPath) -> None:
    """Parameter violations end the call INVALID_ARGUMENT naming the fields, as SubmitRun
    does, with no message streamed and no run stored; an unknown script is NOT_FOUND."""
    params = [
        catalogue_pb2.ParameterDefinition(
            name="n", type=catalogue_pb2.PARAMETER_TYPE_INTEGER, required=True
        )
    ]
    await path.publish("typed", "print(1)\n", params=params)
    stub = path.scheduler_stub()
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for update in stub.SubmitAndWatchRun(
            watch_request(submit_request("typed", n="many", extra=1)), timeout=30
        ):
            received.append(update)
    assert received == []
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in from_rpc_error(err.value).violations}  # type: ignore[attr-defined]
    assert fields == {"parameters.n", "parameters.extra"}
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="typed"))
    assert list(listed.runs) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream(stub, watch_request(submit_request("ghost")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_submit_and_watch_needs_execute_and_execution_read(path: RunPath, tokens) -> None:  # type: ignore[no-untyped-def]
    """A token with script:execute alone (it may SubmitRun) or script_execution:read alone
    (it may WatchRun) is PERMISSION_DENIED, and nothing is stored."""
    await path.publish("perm", "print(1)\n")
    submitter = path.scheduler_stub(tokens.submitter)
    submitted = await submitter.SubmitRun(submit_request("perm"))
    for token in (tokens.submitter, tokens.reader):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream(path.scheduler_stub(token), watch_request(submit_request("perm")))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stub = path.scheduler_stub()
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="perm"))
    assert [r.id for r in listed.runs] == [submitted.id]
    assert (await wait_terminal(stub, submitted.id)).state in TERMINAL
