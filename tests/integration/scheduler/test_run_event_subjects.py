"""The scheduler's durable consumer takes only the RunEvents it applies (the type is the
last token of the subject, shared/run_subjects.py): not its own SUBMITTED, not QUEUED
(the Execute answer records it), while runs still go QUEUED -> RUNNING -> terminal; events
on the subject of 0.2.0 producers (`<prefix>.run.<run_id>`) are still applied; a durable
left with the old filter is updated at start; a run whose Execute answer was lost still
goes QUEUED by its heartbeat."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2
from shared.run_subjects import SCHEDULER_APPLIES, run_filters, run_subject
from tests.integration.scheduler.test_runs import submit_request, wait_terminal
from tests.integration.stack import RunPath, start_run_path

RS = common_pb2
ET = events_pb2
PREFIX = "runbox.events"
STREAM = "RUNBOX_EVENTS"


async def eventually(
    read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], wait_s: float = 20
) -> Any:
    async def poll() -> Any:
        while True:
            value = await read()
            if ok(value):
                return value
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), wait_s)


@pytest.fixture
async def js(nats_server: Any) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


async def _old_style_durable(js: Any) -> None:
    """The durable "scheduler" as 0.2.0 left it: one filter, every run event."""
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(name=STREAM, subjects=[f"{PREFIX}.>"])
    try:
        await js.delete_consumer(STREAM, "scheduler")
    except NotFoundError:
        pass
    await js.add_consumer(
        STREAM,
        durable_name="scheduler",
        filter_subject=f"{PREFIX}.run.>",
        ack_policy="explicit",
        deliver_policy="all",
    )


async def _run_subjects(js: Any, run_id: str) -> list[str]:
    """The subjects of every event of the run in the stream, in order."""
    sub = await js.subscribe(f"{PREFIX}.run.{run_id}.>", ordered_consumer=True)
    subjects: list[str] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                return subjects
            subjects.append(msg.subject)
    finally:
        await sub.unsubscribe()


async def _settled(js: Any) -> Any:
    return await eventually(
        lambda: js.consumer_info(STREAM, "scheduler"),
        lambda i: i.num_pending == 0 and i.num_ack_pending == 0,
    )


async def test_runs_move_through_their_states_with_two_events_consumed(
    tmp_path: Path, nats_server: Any, tokens: Any, js: Any
) -> None:
    """A durable left with the 0.2.0 filter is updated when the scheduler starts; runs end
    SUCCEEDED through QUEUED and RUNNING; of each run's events (on typed subjects) the
    scheduler's consumer is delivered STARTED and FINISHED only."""
    await _old_style_durable(js)
    # Without the run link (test_run_link.py): every event the scheduler applies comes by
    # its consumer.
    path = await start_run_path(tmp_path, nats_server.url, tokens, scheduler={"run_links": False})
    try:
        info = await js.consumer_info(STREAM, "scheduler")
        assert info.config.filter_subjects == run_filters(PREFIX, SCHEDULER_APPLIES)
        assert not info.config.filter_subject
        await path.publish("quiet", "x = 1\n")  # no output: no LOG event
        stub = path.scheduler_stub()
        before = (await _settled(js)).delivered.consumer_seq
        runs = [await stub.SubmitRun(submit_request("quiet")) for _ in range(3)]
        for run in runs:
            states = []
            async for update in stub.WatchRun(scheduler_pb2.WatchRunRequest(id=run.id), timeout=60):
                states.append(update.run.state)
            assert states[-1] == RS.RUN_STATE_SUCCEEDED, states
            final = await wait_terminal(stub, run.id)
            # QUEUED was recorded (from the Execute answer), then RUNNING by STARTED.
            assert final.HasField("queue_time") and final.HasField("start_time")
            assert final.executor_id == "executor-test"
        delivered = (await _settled(js)).delivered.consumer_seq - before
        taken = 0
        for run in runs:
            subjects = await _run_subjects(js, run.id)
            types = [s.rsplit(".", 1)[1] for s in subjects]
            assert {"submitted", "queued", "started", "finished"} <= set(types), types
            taken += sum(t in ("started", "finished", "log", "heartbeat") for t in types)
        assert delivered == taken  # no SUBMITTED, no QUEUED
        assert 2 * len(runs) <= delivered <= 2 * len(runs) + len(runs)  # a heartbeat at most
    finally:
        await path.close()


@pytest.fixture
async def idle(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[RunPath]:
    """No executor: runs stay PENDING and move only by the events the test publishes."""
    stack = await start_run_path(
        tmp_path, nats_server.url, tokens, with_executor=False, scheduler={"lease_s": 60}
    )
    await stack.publish("held", "x = 1\n")
    yield stack
    await stack.close()


async def _publish(
    js: Any, run_id: str, kind: int, state: int, *, old: bool = False, **fields: Any
) -> events_pb2.RunEvent:
    """An executor's event of the run: on its typed subject, or the 0.2.0 one (`old`)."""
    event = events_pb2.RunEvent(
        event_id=f"{run_id}:test:{uuid.uuid4().hex}",
        run_id=run_id,
        attempt=1,
        type=kind,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        script_name="held",
        **fields,
    )
    event.occurred_at.GetCurrentTime()
    subject = f"{PREFIX}.run.{run_id}" if old else run_subject(PREFIX, run_id, kind)
    await js.publish(subject, event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id})
    return event


async def _get(stub: Any, run_id: str) -> scheduler_pb2.Run:
    return await stub.GetRun(scheduler_pb2.GetRunRequest(id=run_id))  # type: ignore[no-any-return]


async def test_events_on_the_old_subject_are_still_applied(idle: RunPath, js: Any) -> None:
    """An executor of 0.2.0 publishes every event on `<prefix>.run.<run_id>`: QUEUED,
    STARTED and FINISHED there move the run, QUEUED included."""
    stub = idle.scheduler_stub()
    run = await stub.SubmitRun(submit_request("held"))
    assert run.state == RS.RUN_STATE_PENDING
    await _publish(
        js,
        run.id,
        ET.RUN_EVENT_TYPE_QUEUED,
        RS.RUN_STATE_QUEUED,
        old=True,
        executor_id="old-executor",
    )
    queued = await eventually(lambda: _get(stub, run.id), lambda r: r.state != RS.RUN_STATE_PENDING)
    assert queued.state == RS.RUN_STATE_QUEUED and queued.executor_id == "old-executor"
    await _publish(js, run.id, ET.RUN_EVENT_TYPE_STARTED, RS.RUN_STATE_RUNNING, old=True)
    await eventually(lambda: _get(stub, run.id), lambda r: r.state == RS.RUN_STATE_RUNNING)
    await _publish(
        js,
        run.id,
        ET.RUN_EVENT_TYPE_FINISHED,
        RS.RUN_STATE_SUCCEEDED,
        old=True,
        exit=common_pb2.ExitInfo(exit_code=0),
    )
    final = await wait_terminal(stub, run.id)
    assert final.state == RS.RUN_STATE_SUCCEEDED


async def test_a_lost_execute_answer_is_recovered_by_the_heartbeat(idle: RunPath, js: Any) -> None:
    """QUEUED on its typed subject never reaches the scheduler (the Execute answer records
    it); when that answer was lost, the run's next HEARTBEAT (state QUEUED) moves it to
    QUEUED with its executor and lease, and STARTED / FINISHED on their subjects end it."""
    stub = idle.scheduler_stub()
    run = await stub.SubmitRun(submit_request("held"))
    await _publish(
        js, run.id, ET.RUN_EVENT_TYPE_QUEUED, RS.RUN_STATE_QUEUED, executor_id="queued-by-event"
    )
    await _publish(
        js, run.id, ET.RUN_EVENT_TYPE_HEARTBEAT, RS.RUN_STATE_QUEUED, executor_id="heartbeat"
    )
    queued = await eventually(lambda: _get(stub, run.id), lambda r: r.state != RS.RUN_STATE_PENDING)
    # The consumer gets the run's events in stream order: had QUEUED been delivered, it
    # would have moved the run first (and the heartbeat only renewed the lease).
    assert queued.state == RS.RUN_STATE_QUEUED and queued.executor_id == "heartbeat"
    await _publish(js, run.id, ET.RUN_EVENT_TYPE_STARTED, RS.RUN_STATE_RUNNING)
    await eventually(lambda: _get(stub, run.id), lambda r: r.state == RS.RUN_STATE_RUNNING)
    await _publish(
        js,
        run.id,
        ET.RUN_EVENT_TYPE_FINISHED,
        RS.RUN_STATE_FAILED,
        exit=common_pb2.ExitInfo(exit_code=3, reason=common_pb2.FAILURE_REASON_EXIT_CODE),
    )
    final = await wait_terminal(stub, run.id)
    assert final.state == RS.RUN_STATE_FAILED and final.exit.exit_code == 3
