"""kill -9 of the scheduler between an executor's FINISHED event reaching it and its apply.

Same stack as test_scheduler_faults.py (its `stack` fixture: catalogue and a local-backend
executor in the test's process, the scheduler as a killable process, a nats-server the test
owns). The first scheduler runs with the test-only setting FAULT_HOLD_FINISHED_FILE: its
event consumer writes the run id of the first FINISHED event it receives to that file and
holds it, unapplied and unacked, so the kill lands exactly between delivery and apply."""

from __future__ import annotations

import asyncio
from pathlib import Path

from google.protobuf import duration_pb2

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from tests.e2e.test_scheduler_faults import TERMINAL, Stack, eventually, get, stack

__all__ = ["stack"]  # the fixture, shared with test_scheduler_faults.py
RS = common_pb2
ET = events_pb2.RunEventType


def failing_script(ledger: Path) -> str:
    """Appends one line to `ledger` each time it runs, then exits 3."""
    return (
        "import sys\n"
        f"with open({str(ledger)!r}, 'a') as ledger:\n"
        "    ledger.write('ran\\n')\n"
        "print('failing')\n"
        "sys.exit(3)\n"
    )


async def watched_state(stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, run_id: str) -> int:
    """The terminal state WatchRun streams for the run."""
    async for reply in stub.WatchRun(scheduler_pb2.WatchRunRequest(id=run_id), timeout=30):
        if reply.HasField("run") and reply.run.state in TERMINAL:
            return int(reply.run.state)
    raise AssertionError(f"WatchRun of {run_id} ended before the run did")


async def test_finished_applied_once_when_scheduler_killed_before_its_apply(
    stack: Stack,
) -> None:
    """The run's FINISHED (FAILED, exit 3) reaches the scheduler, which is killed -9 before
    applying it. A new scheduler on the same database gets the event again from the durable
    consumer (it was never acked) and applies it once: the run ends FAILED (not LOST, though
    its executor went silent meanwhile), GetRun and WatchRun say so, and its retry policy
    makes exactly one retry (attempt 2, which fails too and ends the chain)."""
    ledger, held = stack.tmp / "ledger", stack.tmp / "held-finished"
    await stack.publish("failing", failing_script(ledger))
    # The ack wait (8 s) is longer than the lease (6 s, FAST), as by default (30 s vs 20 s):
    # the held event comes back after the killed process's ack wait, later than one lease
    # after the restart.
    stub = await stack.start_scheduler(FAULT_HOLD_FINISHED_FILE=str(held), EVENTS_ACK_WAIT_S="8")
    policy = common_pb2.RetryPolicy(
        max_attempts=2,
        initial_backoff=duration_pb2.Duration(seconds=1),
        retry_on=[RS.FAILURE_REASON_EXIT_CODE, RS.FAILURE_REASON_LOST],
    )
    run = await stub.SubmitRun(
        scheduler_pb2.SubmitRunRequest(script=RS.ScriptRef(name="failing"), retry=policy)
    )
    await eventually(lambda: asyncio.to_thread(held.exists), bool)
    assert (await asyncio.to_thread(held.read_text)).split() == [run.id]
    assert (await get(stub, run.id)).state not in TERMINAL  # delivered, not applied
    assert stack.scheduler is not None
    await stack.scheduler.kill()
    await stack.scheduler.stop()  # gone already: closes its client and log
    stack.scheduler = None  # the next one: no fault, same database and durable consumer

    stub = await stack.start_scheduler(EVENTS_ACK_WAIT_S="8")
    first = await eventually(lambda: get(stub, run.id), lambda r: r.state in TERMINAL)
    assert first.state == RS.RUN_STATE_FAILED, first
    assert (first.exit.reason, first.exit.exit_code) == (RS.FAILURE_REASON_EXIT_CODE, 3)
    assert first.output.stdout == b"failing\n" and first.retry_run_id
    assert await watched_state(stub, run.id) == RS.RUN_STATE_FAILED
    retry = await eventually(lambda: get(stub, first.retry_run_id), lambda r: r.state in TERMINAL)
    assert (retry.state, retry.attempt, retry.parent_run_id) == (RS.RUN_STATE_FAILED, 2, run.id)
    assert not retry.retry_run_id  # the policy's last attempt

    await asyncio.sleep(3)  # a second apply or a late LOST would show by now
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="failing"))
    assert {r.id: r.state for r in listed.runs} == {
        run.id: RS.RUN_STATE_FAILED,
        retry.id: RS.RUN_STATE_FAILED,
    }
    assert (await get(stub, run.id)).retry_run_id == retry.id
    assert await asyncio.to_thread(ledger.read_text) == "ran\nran\n"  # the run and its retry
    for attempt in (run.id, retry.id):  # each ran once: one STARTED, one FINISHED
        kinds = [e.type for e in await stack.executor_events(attempt)]
        assert (
            kinds.count(ET.RUN_EVENT_TYPE_STARTED),
            kinds.count(ET.RUN_EVENT_TYPE_FINISHED),
        ) == (
            1,
            1,
        ), kinds
