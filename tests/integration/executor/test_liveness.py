"""Backpressure and liveness of a real executor (local backend): RESOURCE_EXHAUSTED
with a retry hint when full, idempotent Execute, heartbeats, and drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.rpc import error_details_pb2, status_pb2

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from services.executor.config import ExecutorSettings
from services.executor.server import build
from shared.clients import open_channel
from shared.errors import ResourceExhausted
from shared.runtime import build_runtime, launch
from shared.status import DETAILS_KEY, from_rpc_error
from tests.integration.executor.conftest import ExecutorHarness
from tests.integration.helpers import settings_for

RS = common_pb2
EV = events_pb2
SLEEP = "import time; time.sleep({s})\n"


class StoppableHarness(ExecutorHarness):
    """An executor harness a test may stop itself (once) to watch the drain."""

    stopped = False

    async def stop(self, grace_s: float) -> None:
        if not self.stopped:
            self.stopped = True
            await self.running.stop(grace_s)


@contextlib.asynccontextmanager
async def executor_with(
    tmp_path: Path, nats_url: str, tokens: Any, *, grace_s: float = 10.0, **extra: Any
) -> AsyncIterator[StoppableHarness]:
    """A local-backend executor with its own settings (grace_s: its drain period)."""
    settings = settings_for(
        ExecutorSettings,
        tmp_path,
        "executor",
        nats_url=nats_url,
        principals_file=tokens.principals_file,
        sandbox={"backend": "local", "timeout_s": 120, "allow_unsandboxed": True},
        work_dir=str(tmp_path / "work"),
        **extra,
    )
    settings.grpc.shutdown_grace_s = grace_s
    running = await launch(build_runtime("executor", settings), build)
    harness: StoppableHarness | None = None
    try:
        nc = await nats.connect(nats_url)
        try:
            async with open_channel(running.address, token=tokens.service) as channel:
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                harness = StoppableHarness(running, stub, nc.jetstream())
                yield harness
        finally:
            await nc.close()
    finally:
        if harness is None or not harness.stopped:
            await running.stop()


async def all_events(harness: ExecutorHarness, run_id: str) -> list[tuple[int, Any]]:
    """(stream sequence, event) of every event of the run stored so far."""
    sub = await harness.js.subscribe(f"runbox.events.run.{run_id}.>", ordered_consumer=True)
    seen: list[tuple[int, Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=30)
            seen.append((msg.metadata.sequence.stream, EV.RunEvent.FromString(msg.data)))
            if msg.metadata.num_pending == 0:
                return seen
    finally:
        await sub.unsubscribe()


async def wait_for_event(
    harness: ExecutorHarness, run_id: str, kind: int, *, count: int = 1, after: int = 0
) -> list[tuple[int, Any]]:
    """Read the run's events until `count` of type `kind` past stream sequence `after`."""
    sub = await harness.js.subscribe(f"runbox.events.run.{run_id}.>", ordered_consumer=True)
    seen: list[tuple[int, Any]] = []
    try:
        while sum(1 for seq, e in seen if e.type == kind and seq > after) < count:
            msg = await sub.next_msg(timeout=30)
            seen.append((msg.metadata.sequence.stream, EV.RunEvent.FromString(msg.data)))
    finally:
        await sub.unsubscribe()
    return seen


def kinds(events: list[tuple[int, Any]]) -> list[int]:
    return [e.type for _, e in events]


# --- backpressure ------------------------------------------------------------------------


async def test_execute_answers_resource_exhausted_with_retry_info_when_full(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """Full (1 running, no queue): a new run is refused with RetryInfo and the limit hit."""
    async with executor_with(
        tmp_path,
        nats_server.url,
        tokens,
        max_concurrent_runs=1,
        max_queued_runs=0,
        retry_after_min_s=2.5,
    ) as ex:
        busy = ex.request(SLEEP.format(s=60))
        await ex.stub.Execute(busy)
        await wait_for_event(ex, busy.run_id, EV.RUN_EVENT_TYPE_STARTED)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ex.stub.Execute(ex.request("print('late')\n"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        error = from_rpc_error(refused.value)
        assert isinstance(error, ResourceExhausted)
        assert error.retry_after_s == 2.5  # no run ended yet: the configured minimum
        assert [v.subject for v in error.violations] == ["executor:executor-test"]
        assert "max_concurrent_runs (1) + max_queued_runs (0)" in error.violations[0].description
        trailing: Any = refused.value.trailing_metadata()
        raw = next(value for key, value in trailing if key == DETAILS_KEY)
        details = status_pb2.Status.FromString(raw).details
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in details)
        assert retry.retry_delay.ToMilliseconds() == 2500

        # A repeated dispatch of the held run is still answered: it is not a new run.
        again = await ex.stub.Execute(busy)
        assert not again.newly_accepted

        await ex.stub.Cancel(executor_pb2.CancelRequest(run_id=busy.run_id))
        await ex.events(busy.run_id)
        accepted = await ex.stub.Execute(ex.request("print('now')\n"))
        assert accepted.newly_accepted


async def test_retry_hint_follows_run_time_within_bounds_when_full(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """After runs ended, the hint is estimated from their duration, within the bounds."""
    async with executor_with(
        tmp_path,
        nats_server.url,
        tokens,
        max_concurrent_runs=1,
        max_queued_runs=1,
        retry_after_min_s=0.5,
        retry_after_max_s=30,
    ) as ex:
        finished, _ = await ex.run(ex.request(SLEEP.format(s=1)))
        assert finished.state == RS.RUN_STATE_SUCCEEDED
        wall = finished.usage.wall_time.ToNanoseconds() / 1e9
        await ex.stub.Execute(ex.request(SLEEP.format(s=60)))
        await ex.stub.Execute(ex.request(SLEEP.format(s=60)))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ex.stub.Execute(ex.request("print('late')\n"))
        error = from_rpc_error(refused.value)
        assert isinstance(error, ResourceExhausted) and error.retry_after_s is not None
        # One run ended: average = its wall time; one waits per slot, so two runs' worth.
        assert error.retry_after_s == pytest.approx(max(min(2 * wall, 30), 0.5), abs=0.01)


# --- idempotency -------------------------------------------------------------------------


async def test_repeated_execute_of_running_and_finished_run_starts_one_copy(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """Execute again while RUNNING and after FINISHED: same acceptance, one STARTED."""
    marker = tmp_path / "copies.txt"
    script = f"import time\nopen({str(marker)!r}, 'a').write('x')\ntime.sleep(1)\n"
    async with executor_with(tmp_path, nats_server.url, tokens) as ex:
        request = ex.request(script)
        first = await ex.stub.Execute(request)
        assert first.newly_accepted
        await wait_for_event(ex, request.run_id, EV.RUN_EVENT_TYPE_STARTED)
        while_running = await ex.stub.Execute(request)
        assert not while_running.newly_accepted
        assert while_running.accepted_at == first.accepted_at

        finished = (await ex.events(request.run_id))[-1]
        assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
        after_finish = await ex.stub.Execute(request)
        assert not after_finish.newly_accepted
        assert after_finish.accepted_at == first.accepted_at
        active = await ex.stub.ListActiveRuns(executor_pb2.ListActiveRunsRequest())
        assert request.run_id not in [r.run_id for r in active.runs]

        events = kinds(await all_events(ex, request.run_id))
        assert events.count(EV.RUN_EVENT_TYPE_QUEUED) == 1
        assert events.count(EV.RUN_EVENT_TYPE_STARTED) == 1
        assert events[-1] == EV.RUN_EVENT_TYPE_FINISHED
        assert marker.read_text() == "x"


async def test_concurrent_duplicate_executes_start_one_copy(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """Ten Execute calls of one run id at once: one acceptance, one STARTED, one copy ran."""
    marker = tmp_path / "copies.txt"
    script = f"open({str(marker)!r}, 'a').write('x')\n"
    async with executor_with(tmp_path, nats_server.url, tokens) as ex:
        request = ex.request(script)
        replies = await asyncio.gather(*(ex.stub.Execute(request) for _ in range(10)))
        assert sum(r.newly_accepted for r in replies) == 1
        assert len({r.accepted_at.ToNanoseconds() for r in replies}) == 1
        finished = (await ex.events(request.run_id))[-1]
        assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
        events = kinds(await all_events(ex, request.run_id))
        assert events.count(EV.RUN_EVENT_TYPE_QUEUED) == 1
        assert events.count(EV.RUN_EVENT_TYPE_STARTED) == 1
        assert events.count(EV.RUN_EVENT_TYPE_FINISHED) == 1
        assert marker.read_text() == "x"


# --- heartbeats --------------------------------------------------------------------------


async def test_active_runs_get_heartbeats_in_order_and_none_after_finished(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """A 2 s run gets heartbeats carrying its reported state, and none once FINISHED."""
    async with executor_with(tmp_path, nats_server.url, tokens, heartbeat_interval_s=0.2) as ex:
        short = ex.request(SLEEP.format(s=2))
        long = ex.request(SLEEP.format(s=60))
        await ex.stub.Execute(short)
        await ex.stub.Execute(long)
        ended = await wait_for_event(ex, short.run_id, EV.RUN_EVENT_TYPE_FINISHED)
        finished_at = ended[-1][0]
        # Three more ticks beat for the long run after the short one's FINISHED...
        await wait_for_event(
            ex, long.run_id, EV.RUN_EVENT_TYPE_HEARTBEAT, count=3, after=finished_at
        )
        # ...and none of them for the short run.
        events = await all_events(ex, short.run_id)
        assert events[-1][1].type == EV.RUN_EVENT_TYPE_FINISHED
        beats = [e for _, e in events if e.type == EV.RUN_EVENT_TYPE_HEARTBEAT]
        assert len(beats) >= 3
        sequences = [e.sequence for _, e in events]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        started = kinds(events).index(EV.RUN_EVENT_TYPE_STARTED)
        for index, (_, event) in enumerate(events):
            if event.type == EV.RUN_EVENT_TYPE_HEARTBEAT:
                expected = RS.RUN_STATE_RUNNING if index > started else RS.RUN_STATE_QUEUED
                assert event.state == expected
                assert event.executor_id == "executor-test"

        await ex.stub.Cancel(executor_pb2.CancelRequest(run_id=long.run_id))
        assert (await ex.events(long.run_id))[-1].state == RS.RUN_STATE_CANCELLED


async def test_waiting_run_gets_heartbeats_as_queued(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """A run waiting for a slot is held too: its heartbeats say QUEUED."""
    async with executor_with(
        tmp_path,
        nats_server.url,
        tokens,
        heartbeat_interval_s=0.2,
        max_concurrent_runs=1,
        max_queued_runs=1,
    ) as ex:
        busy, waiting = ex.request(SLEEP.format(s=60)), ex.request("print('later')\n")
        await ex.stub.Execute(busy)
        await ex.stub.Execute(waiting)
        seen = await wait_for_event(ex, waiting.run_id, EV.RUN_EVENT_TYPE_HEARTBEAT, count=2)
        assert kinds(seen)[0] == EV.RUN_EVENT_TYPE_QUEUED
        assert {e.state for _, e in seen} == {RS.RUN_STATE_QUEUED}
        await ex.stub.Cancel(executor_pb2.CancelRequest(run_id=busy.run_id))
        finished = (await ex.events(waiting.run_id))[-1]
        assert finished.state == RS.RUN_STATE_SUCCEEDED


async def test_cancel_of_waiting_run_ends_it_without_waiting_for_a_slot(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """A run cancelled while waiting for a slot ends CANCELLED while the slot is still busy."""
    async with executor_with(
        tmp_path, nats_server.url, tokens, max_concurrent_runs=1, max_queued_runs=1
    ) as ex:
        busy, waiting = ex.request(SLEEP.format(s=60)), ex.request("print('never')\n")
        await ex.stub.Execute(busy)
        await wait_for_event(ex, busy.run_id, EV.RUN_EVENT_TYPE_STARTED)
        await ex.stub.Execute(waiting)
        reply = await ex.stub.Cancel(executor_pb2.CancelRequest(run_id=waiting.run_id))
        assert reply.cancelled
        events = await ex.events(waiting.run_id)
        assert EV.RUN_EVENT_TYPE_STARTED not in [e.type for e in events]
        assert events[-1].state == RS.RUN_STATE_CANCELLED
        assert events[-1].exit.message == "cancelled before start"
        active = await ex.stub.ListActiveRuns(executor_pb2.ListActiveRunsRequest())
        assert [r.run_id for r in active.runs] == [busy.run_id]
        # Its queue place is free again.
        assert (await ex.stub.Execute(ex.request("print('next')\n"))).newly_accepted
        await ex.stub.Cancel(executor_pb2.CancelRequest(run_id=busy.run_id))


# --- drain -------------------------------------------------------------------------------


async def test_shutdown_hands_back_waiting_runs_and_stops_running_ones_after_grace(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """On stop, waiting runs end at once as not started; a started run outliving the
    grace period is stopped; both are FAILED/INFRASTRUCTURE, and Execute is refused."""
    async with executor_with(
        tmp_path,
        nats_server.url,
        tokens,
        grace_s=1.0,
        max_concurrent_runs=1,
        max_queued_runs=2,
    ) as ex:
        running = ex.request(SLEEP.format(s=60))
        waiting = [ex.request("print('never')\n") for _ in range(2)]
        await ex.stub.Execute(running)
        await wait_for_event(ex, running.run_id, EV.RUN_EVENT_TYPE_STARTED)
        for request in waiting:
            await ex.stub.Execute(request)

        stop = asyncio.create_task(ex.stop(1.0))
        for request in waiting:
            events = await ex.events(request.run_id)
            assert EV.RUN_EVENT_TYPE_STARTED not in [e.type for e in events]
            finished = events[-1]
            assert finished.state == RS.RUN_STATE_FAILED
            assert finished.exit.reason == RS.FAILURE_REASON_INFRASTRUCTURE
            assert finished.exit.message == "executor shutting down; not started"
        # Draining: no new run is taken.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ex.stub.Execute(ex.request("print('too late')\n"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        await stop
        events = await ex.events(running.run_id)
        finished = events[-1]
        assert finished.state == RS.RUN_STATE_FAILED
        assert finished.exit.reason == RS.FAILURE_REASON_INFRASTRUCTURE
        assert finished.exit.message == "executor shut down during the run"


async def test_shutdown_lets_a_started_run_finish_within_grace(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """A started run that ends within the grace period ends with its own outcome."""
    async with executor_with(tmp_path, nats_server.url, tokens, grace_s=60.0) as ex:
        request = ex.request("import time\ntime.sleep(1)\nprint('done')\n")
        await ex.stub.Execute(request)
        await wait_for_event(ex, request.run_id, EV.RUN_EVENT_TYPE_STARTED)
        await ex.stop(5.0)
        finished = (await ex.events(request.run_id))[-1]
        assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
        assert finished.output.stdout == b"done\n"
