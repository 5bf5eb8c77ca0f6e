"""Runs through scheduler -> executor -> JetStream -> scheduler, for real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nats
import pytest
from google.protobuf import struct_pb2

from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2
from shared.status import from_rpc_error
from tests.integration.stack import RunPath, start_run_path

RS = common_pb2
TERMINAL = {
    RS.RUN_STATE_SUCCEEDED,
    RS.RUN_STATE_FAILED,
    RS.RUN_STATE_TIMED_OUT,
    RS.RUN_STATE_CANCELLED,
}


@pytest.fixture
async def path(tmp_path: Path, nats_server, tokens) -> AsyncIterator[RunPath]:  # type: ignore[no-untyped-def]
    stack = await start_run_path(tmp_path, nats_server.url, tokens)
    yield stack
    await stack.close()


async def wait_terminal(stub, run_id: str, wait_s: float = 30) -> scheduler_pb2.Run:  # type: ignore[no-untyped-def]
    async def poll() -> scheduler_pb2.Run:
        while True:
            run = await stub.GetRun(scheduler_pb2.GetRunRequest(id=run_id))
            if run.state in TERMINAL:
                return run
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), wait_s)


def submit_request(name: str, **params: object) -> scheduler_pb2.SubmitRunRequest:
    values = struct_pb2.Struct()
    values.update(params)
    return scheduler_pb2.SubmitRunRequest(script=RS.ScriptRef(name=name), parameters=values)


async def test_submitted_run_succeeds_with_exit_duration_and_output(path: RunPath) -> None:
    """A run is committed PENDING, dispatched, and ends SUCCEEDED with its details."""
    await path.publish("hello", "import time\ntime.sleep(0.2)\nprint('hello from run')\n")
    stub = path.scheduler_stub()
    run = await stub.SubmitRun(submit_request("hello"))
    assert run.state == RS.RUN_STATE_PENDING
    assert run.script_version == "1.0.0" and len(run.sha256) == 64
    final = await wait_terminal(stub, run.id)
    assert final.state == RS.RUN_STATE_SUCCEEDED
    assert final.exit.exit_code == 0
    assert final.output.stdout == b"hello from run\n"
    assert final.duration.ToTimedelta().total_seconds() >= 0.2
    assert final.executor_id == "executor-test"
    assert final.start_time.ToDatetime() <= final.finish_time.ToDatetime()


async def test_watch_run_streams_states_in_order(path: RunPath) -> None:
    """WatchRun starts with the current (non-terminal) state and ends at the terminal one,
    in order, with the output between."""
    await path.publish("slow", "import time\nprint('a', flush=True)\ntime.sleep(1)\nprint('b')\n")
    stub = path.scheduler_stub()
    run = await stub.SubmitRun(submit_request("slow"))
    states, logs = [], b""
    async for update in stub.WatchRun(
        scheduler_pb2.WatchRunRequest(id=run.id, include_logs=True), timeout=30
    ):
        if update.HasField("run"):
            states.append(update.run.state)
        else:
            logs += update.log.data
    # The first update is the run's state when the watch began: PENDING, or already
    # QUEUED/RUNNING, since a committed submit is handed to dispatch at once.
    assert states[0] in (RS.RUN_STATE_PENDING, RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING)
    assert states[-1] == RS.RUN_STATE_SUCCEEDED
    assert RS.RUN_STATE_RUNNING in states
    assert states == sorted(states, key=lambda s: {1: 1, 2: 2, 3: 3}.get(s, 4))
    assert logs.startswith(b"a")


async def test_idempotency_key_returns_the_first_run(path: RunPath) -> None:
    """Submitting twice with one idempotency key creates one run."""
    await path.publish("once", "print(1)\n")
    stub = path.scheduler_stub()
    request = submit_request("once")
    request.idempotency_key = "order-42"
    first = await stub.SubmitRun(request)
    second = await stub.SubmitRun(request)
    assert first.id == second.id
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="once"))
    assert [r.id for r in listed.runs] == [first.id]


async def test_idempotency_key_reused_for_another_request_is_refused(path: RunPath) -> None:
    """The same key with other inputs is FAILED_PRECONDITION naming the key, and stores
    nothing; the original request with that key still returns the first run."""
    await path.publish(
        "keyed",
        "print(1)\n",
        params=[
            catalogue_pb2.ParameterDefinition(name="n", type=catalogue_pb2.PARAMETER_TYPE_INTEGER)
        ],
    )
    stub = path.scheduler_stub()
    request = submit_request("keyed", n=1)
    request.idempotency_key = "order-43"
    first = await stub.SubmitRun(request)
    for change in ({"n": 2}, {"priority": 5}, {"label": "x"}):
        other = submit_request("keyed", n=change.get("n", 1))
        other.idempotency_key = "order-43"
        other.priority = int(change.get("priority", 0))
        if "label" in change:
            other.labels["team"] = "x"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitRun(other)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "idempotency_key" in [v.field for v in from_rpc_error(err.value).violations]
    assert (await stub.SubmitRun(request)).id == first.id
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="keyed"))
    assert [r.id for r in listed.runs] == [first.id]


async def test_unknown_script_is_not_found(path: RunPath) -> None:
    """The catalogue's NOT_FOUND reaches the SubmitRun caller as NOT_FOUND."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await path.scheduler_stub().SubmitRun(submit_request("ghost"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_parameters_keep_field_violations(path: RunPath) -> None:
    """Parameter violations come back as INVALID_ARGUMENT naming parameters.<name>."""
    params = [
        catalogue_pb2.ParameterDefinition(
            name="n", type=catalogue_pb2.PARAMETER_TYPE_INTEGER, required=True
        )
    ]
    await path.publish("typed", "print(1)\n", params=params)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await path.scheduler_stub().SubmitRun(submit_request("typed", n="many", extra=1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in from_rpc_error(err.value).violations}  # type: ignore[attr-defined]
    assert fields == {"parameters.n", "parameters.extra"}


async def test_secret_parameter_reaches_script_but_is_never_stored(path: RunPath) -> None:
    """A PASSWORD parameter is passed to the script, shown as ***, and absent from the database."""
    params = [
        catalogue_pb2.ParameterDefinition(name="token", type=catalogue_pb2.PARAMETER_TYPE_PASSWORD)
    ]
    script = "import json, os\ns = json.load(open(os.environ['RUNBOX_SECRETS_FILE']))['token']\nprint(len(s), s)\n"
    await path.publish("secretive", script, params=params)
    stub = path.scheduler_stub()
    run = await stub.SubmitRun(submit_request("secretive", token="tok-very-secret-123"))
    assert run.parameters["token"] == "***"
    final = await wait_terminal(stub, run.id)
    assert final.state == RS.RUN_STATE_SUCCEEDED
    assert final.output.stdout == b"19 ***\n"
    stored = b"".join(p.read_bytes() for p in path.tmp.glob("scheduler.db*"))
    assert stored and b"tok-very-secret-123" not in stored


async def test_events_published_while_scheduler_down_are_applied_after_restart(
    path: RunPath,
) -> None:
    """The durable consumer catches up: a run finishing while the scheduler is stopped ends SUCCEEDED."""
    await path.publish("during", "import time\ntime.sleep(1.5)\nprint('finished')\n")
    stub = path.scheduler_stub()
    run = await stub.SubmitRun(submit_request("during"))
    for _ in range(100):
        if (
            await stub.GetRun(scheduler_pb2.GetRunRequest(id=run.id))
        ).state == RS.RUN_STATE_RUNNING:
            break
        await asyncio.sleep(0.05)
    await path.restart_scheduler(pause_s=2.5)  # FINISHED is published while it is down
    final = await wait_terminal(path.scheduler_stub(), run.id)
    assert final.state == RS.RUN_STATE_SUCCEEDED
    assert final.output.stdout == b"finished\n"


async def test_duplicate_and_stale_events_change_nothing(path: RunPath, nats_server) -> None:  # type: ignore[no-untyped-def]
    """A replayed FINISHED with another state, or a late QUEUED, leaves a terminal run as it is."""
    await path.publish("final", "print('ok')\n")
    stub = path.scheduler_stub()
    run = await stub.SubmitRun(submit_request("final"))
    done = await wait_terminal(stub, run.id)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for i, state in enumerate((RS.RUN_STATE_FAILED, RS.RUN_STATE_QUEUED)):
            event = events_pb2.RunEvent(
                event_id=f"{run.id}:forged:{i}",
                run_id=run.id,
                state=state,
                type=events_pb2.RUN_EVENT_TYPE_FINISHED,
            )
            await js.publish(
                f"runbox.events.run.{run.id}",
                event.SerializeToString(),
                headers={"Nats-Msg-Id": event.event_id},
            )
    finally:
        await nc.close()
    await asyncio.sleep(1.0)
    after = await stub.GetRun(scheduler_pb2.GetRunRequest(id=run.id))
    assert after.state == RS.RUN_STATE_SUCCEEDED
    assert after.finish_time == done.finish_time


async def test_full_executor_holds_runs_pending_then_runs_them(
    tmp_path: Path, nats_server, tokens
) -> None:  # type: ignore[no-untyped-def]
    """RESOURCE_EXHAUSTED keeps runs PENDING with backoff; all run once capacity frees."""
    stack = await start_run_path(
        tmp_path, nats_server.url, tokens, executor={"max_concurrent_runs": 1, "max_queued_runs": 0}
    )
    try:
        await stack.publish("busy", "import time\ntime.sleep(0.5)\nprint('done')\n")
        stub = stack.scheduler_stub()
        runs = [await stub.SubmitRun(submit_request("busy")) for _ in range(3)]
        finals = [await wait_terminal(stub, r.id, wait_s=60) for r in runs]
        assert [f.state for f in finals] == [RS.RUN_STATE_SUCCEEDED] * 3
        starts = sorted(f.start_time.ToDatetime() for f in finals)
        ends = sorted(f.finish_time.ToDatetime() for f in finals)
        assert starts[1] >= ends[0] and starts[2] >= ends[1], "runs overlapped on a 1-slot executor"
    finally:
        await stack.close()


async def test_cancel_pending_run_is_cancelled_at_once(tmp_path: Path, nats_server, tokens) -> None:  # type: ignore[no-untyped-def]
    """With no executor a run stays PENDING; CancelRun ends it CANCELLED, and again is FAILED_PRECONDITION."""
    stack = await start_run_path(tmp_path, nats_server.url, tokens, with_executor=False)
    try:
        await stack.publish("never", "print(1)\n")
        stub = stack.scheduler_stub()
        run = await stub.SubmitRun(submit_request("never"))
        cancelled = await stub.CancelRun(scheduler_pb2.CancelRunRequest(id=run.id))
        assert cancelled.state == RS.RUN_STATE_CANCELLED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CancelRun(scheduler_pb2.CancelRunRequest(id=run.id))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await stack.close()


async def test_cancel_running_run_goes_through_executor(path: RunPath) -> None:
    """Cancelling a RUNNING run stops it in the executor; it ends CANCELLED."""
    await path.publish("long", "import time\ntime.sleep(30)\n")
    stub = path.scheduler_stub()
    run = await stub.SubmitRun(submit_request("long"))
    for _ in range(100):
        if (
            await stub.GetRun(scheduler_pb2.GetRunRequest(id=run.id))
        ).state == RS.RUN_STATE_RUNNING:
            break
        await asyncio.sleep(0.05)
    await stub.CancelRun(scheduler_pb2.CancelRunRequest(id=run.id))
    final = await wait_terminal(stub, run.id)
    assert final.state == RS.RUN_STATE_CANCELLED


async def test_list_runs_pages_newest_first(path: RunPath) -> None:
    """ListRuns pages newest first with a stable cursor and filters by state and label."""
    await path.publish("many", "print(1)\n")
    stub = path.scheduler_stub()
    ids = []
    for i in range(5):
        request = submit_request("many")
        request.labels["batch"] = "odd" if i % 2 else "even"
        ids.append((await stub.SubmitRun(request)).id)
    seen, token = [], ""
    while True:
        page = await stub.ListRuns(
            scheduler_pb2.ListRunsRequest(script_name="many", page_size=2, page_token=token)
        )
        seen += [r.id for r in page.runs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    odd = await stub.ListRuns(
        scheduler_pb2.ListRunsRequest(script_name="many", labels={"batch": "odd"})
    )
    assert [r.id for r in odd.runs] == [ids[3], ids[1]]


async def test_permissions_enforced(path: RunPath, tokens) -> None:  # type: ignore[no-untyped-def]
    """A reader can list runs but not submit; no token is UNAUTHENTICATED."""
    await path.publish("perm", "print(1)\n")
    reader = path.scheduler_stub(tokens.reader)
    await reader.ListRuns(scheduler_pb2.ListRunsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reader.SubmitRun(submit_request("perm"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.insecure_channel(path.scheduler.address) as channel:
        from runbox.scheduler.v1 import scheduler_pb2_grpc

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await scheduler_pb2_grpc.SchedulerServiceStub(channel).GetRun(
                scheduler_pb2.GetRunRequest(id="x"), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
