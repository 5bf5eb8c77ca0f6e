"""Failure handling for real: leases and LOST, retries, dead letters and replay, quarantine.

Real catalogue and scheduler gRPC servers, real SQLite, real nats-server. Where a run's
lifecycle must be steered (a lost executor, an OOM), the test publishes the RunEvents an
executor would publish to JetStream, on a scheduler without executors; quarantine runs
real scripts on a real (local-backend) executor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from cli import natsd
from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.leases import LeaseSweeper
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import OUTBOX, QuarantineRow, RunRow
from services.scheduler.retries import Quarantines, RetryOrDeadLetter
from services.scheduler.run_events import RunEvents
from services.scheduler.run_listeners import RunListeners
from services.scheduler.run_store import RunStore
from services.scheduler.runs import Runs
from services.scheduler.server import MIGRATIONS
from services.scheduler.watch import Watchers
from shared import db
from shared.db_transactions import transactions_of
from shared.outbox import Outbox
from shared.settings import DatabaseSettings
from shared.status import DETAILS_KEY, from_rpc_error
from tests.integration.stack import RunPath, start_run_path

RS = common_pb2
MIB = 1024 * 1024
# Short leases so a silent run is LOST within seconds; three failures quarantine a script.
FAST = {
    "lease_s": 2.0,
    "lease_sweep_interval_s": 0.2,
    "events_ack_wait_s": 2.0,  # the first sweep waits a lease + this after start
    "quarantine_failures": 3,
    "quarantine_window_s": 600,
}


@pytest.fixture
async def path(tmp_path: Path, nats_server, tokens) -> AsyncIterator[RunPath]:  # type: ignore[no-untyped-def]
    """No executor: runs move only by the events the test publishes."""
    stack = await start_run_path(
        tmp_path, nats_server.url, tokens, with_executor=False, scheduler=FAST
    )
    yield stack
    await stack.close()


@pytest.fixture
async def js(nats_server) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


async def eventually(
    probe: Callable[[], Awaitable[Any]], until: Callable[[Any], bool], wait_s: float = 20
) -> Any:
    """Poll `probe` until `until(value)`; fail after `wait_s`."""

    async def poll() -> Any:
        while True:
            value = await probe()
            if until(value):
                return value
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), wait_s)


async def get(stub: Any, run_id: str) -> scheduler_pb2.Run:
    return await stub.GetRun(scheduler_pb2.GetRunRequest(id=run_id))  # type: ignore[no-any-return]


async def publish(js: Any, run: scheduler_pb2.Run, kind: int, state: int, **fields: Any) -> None:
    """Publish one RunEvent as the executor holding `run` would."""
    event = events_pb2.RunEvent(
        event_id=f"{run.id}:test:{uuid.uuid4().hex}",
        run_id=run.id,
        attempt=run.attempt,
        type=kind,
        state=state,
        executor_id="ghost-executor",
        script_name=run.script.name,
        **fields,
    )
    event.occurred_at.GetCurrentTime()
    await js.publish(
        f"runbox.events.run.{run.id}",
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id},
    )


async def start(js: Any, stub: Any, run: scheduler_pb2.Run) -> None:
    """QUEUED then RUNNING, as an executor reports them (the run's lease starts)."""
    await publish(js, run, events_pb2.RUN_EVENT_TYPE_QUEUED, RS.RUN_STATE_QUEUED)
    await publish(js, run, events_pb2.RUN_EVENT_TYPE_STARTED, RS.RUN_STATE_RUNNING)
    await eventually(lambda: get(stub, run.id), lambda r: r.state == RS.RUN_STATE_RUNNING)


async def finish(
    js: Any, run: scheduler_pb2.Run, state: int, reason: int, **fields: Any
) -> events_pb2.RunEvent:
    exit_info = common_pb2.ExitInfo(reason=reason, exit_code=1, message="boom")
    await publish(js, run, events_pb2.RUN_EVENT_TYPE_FINISHED, state, exit=exit_info, **fields)
    return exit_info  # type: ignore[return-value]


def request(
    name: str, retry: common_pb2.RetryPolicy | None = None, **params: object
) -> scheduler_pb2.SubmitRunRequest:
    values = struct_pb2.Struct()
    values.update(params)
    req = scheduler_pb2.SubmitRunRequest(script=RS.ScriptRef(name=name), parameters=values)
    if retry is not None:
        req.retry.CopyFrom(retry)
    return req


def precondition_subjects(error: grpc.aio.AioRpcError) -> set[str]:
    """Subjects of the PreconditionFailure detail of a FAILED_PRECONDITION."""
    subjects: set[str] = set()
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY:
            for detail in status_pb2.Status.FromString(value).details:
                failure = error_details_pb2.PreconditionFailure()
                if detail.Unpack(failure):
                    subjects |= {v.subject for v in failure.violations}
    return subjects


def next_dispatch_delay(tmp: Path, run_id: str) -> float:
    """Seconds from a run's creation to when it may first be dispatched (its backoff)."""
    with sqlite3.connect(tmp / "scheduler.db") as db:
        created, due = db.execute(
            "SELECT created_at, next_dispatch_at FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    return (datetime.fromisoformat(due) - datetime.fromisoformat(created)).total_seconds()


async def test_silent_run_is_lost_then_retried_after_its_backoff(path: RunPath, js: Any) -> None:
    """Heartbeats keep a run alive past its lease; when they stop it ends LOST and a new run
    (attempt 2, parent_run_id) is created, due after the backoff. A late FINISHED from the
    lost executor changes nothing."""
    params = [
        catalogue_pb2.ParameterDefinition(name="n", type=catalogue_pb2.PARAMETER_TYPE_INTEGER)
    ]
    await path.publish("flaky", "print(1)\n", params=params)
    stub = path.scheduler_stub()
    policy = common_pb2.RetryPolicy(
        max_attempts=2,
        initial_backoff=duration_pb2.Duration(seconds=30),
        jitter=0.5,
        retry_on=[RS.FAILURE_REASON_LOST],
    )
    run = await stub.SubmitRun(request("flaky", policy, n=7))
    await start(js, stub, run)
    for _ in range(15):  # 3 s of heartbeats: longer than the 2 s lease
        await publish(js, run, events_pb2.RUN_EVENT_TYPE_HEARTBEAT, RS.RUN_STATE_RUNNING)
        await asyncio.sleep(0.2)
    assert (await get(stub, run.id)).state == RS.RUN_STATE_RUNNING
    lost = await eventually(lambda: get(stub, run.id), lambda r: r.state == RS.RUN_STATE_LOST)
    assert lost.exit.reason == RS.FAILURE_REASON_LOST
    assert "ghost-executor" in lost.exit.message and lost.retry_run_id
    retry = await get(stub, lost.retry_run_id)
    assert (retry.attempt, retry.parent_run_id, retry.state) == (2, run.id, RS.RUN_STATE_PENDING)
    assert (retry.sha256, retry.script_version) == (run.sha256, run.script_version)
    assert retry.parameters == run.parameters and not retry.dead_lettered
    assert 15 <= next_dispatch_delay(path.tmp, retry.id) <= 30  # 30 s, less up to 50 % jitter

    await finish(js, run, RS.RUN_STATE_SUCCEEDED, 0)
    await asyncio.sleep(1.0)
    after = await get(stub, run.id)
    assert after.state == RS.RUN_STATE_LOST and after.retry_run_id == retry.id


async def test_retry_classes_are_respected(path: RunPath, js: Any) -> None:
    """A policy retrying timeouts retries a TIMED_OUT run and dead-letters a non-zero exit."""
    await path.publish("classes", "print(1)\n")
    stub = path.scheduler_stub()
    policy = common_pb2.RetryPolicy(max_attempts=3, retry_on=[RS.FAILURE_REASON_TIMEOUT])
    timed_out = await stub.SubmitRun(request("classes", policy))
    exited = await stub.SubmitRun(request("classes", policy))
    for run in (timed_out, exited):
        await start(js, stub, run)
    await finish(js, timed_out, RS.RUN_STATE_TIMED_OUT, RS.FAILURE_REASON_TIMEOUT)
    await finish(js, exited, RS.RUN_STATE_FAILED, RS.FAILURE_REASON_EXIT_CODE)
    first = await eventually(lambda: get(stub, timed_out.id), lambda r: bool(r.retry_run_id))
    assert not first.dead_lettered
    second = await eventually(lambda: get(stub, exited.id), lambda r: r.dead_lettered)
    assert not second.retry_run_id
    letters = await stub.ListDeadLetters(
        scheduler_pb2.ListDeadLettersRequest(script_name="classes")
    )
    assert [d.run.id for d in letters.dead_letters] == [exited.id]
    assert "exit_code is not a failure class" in letters.dead_letters[0].reason


async def test_oom_retries_get_more_memory_up_to_the_cap_then_dead_letter(
    path: RunPath, js: Any
) -> None:
    """Each OOM retry doubles the memory limit, capped; when attempts are spent the last run
    is dead-lettered and listed with its inputs, usage and output tail."""
    params = [
        catalogue_pb2.ParameterDefinition(name="size", type=catalogue_pb2.PARAMETER_TYPE_INTEGER)
    ]
    await path.publish("hungry", "print(1)\n", params=params)
    stub = path.scheduler_stub()
    policy = common_pb2.RetryPolicy(
        max_attempts=3,
        initial_backoff=duration_pb2.Duration(seconds=1),
        oom_memory_factor=2,
        oom_memory_cap_bytes=300 * MIB,
    )
    submit = request("hungry", policy, size=5)
    submit.limits.memory_bytes = 100 * MIB
    run = await stub.SubmitRun(submit)
    memories = [run.limits.memory_bytes]
    for attempt in (1, 2, 3):
        assert run.attempt == attempt
        await start(js, stub, run)
        await finish(
            js,
            run,
            RS.RUN_STATE_FAILED,
            RS.FAILURE_REASON_OOM_KILLED,
            usage=common_pb2.ResourceUsage(peak_memory_bytes=run.limits.memory_bytes),
            output=common_pb2.OutputTail(stderr=b"MemoryError at step %d\n" % attempt),
        )
        ended = await eventually(
            lambda rid=run.id: get(stub, rid), lambda r: bool(r.retry_run_id) or r.dead_lettered
        )
        if attempt < 3:
            run = await get(stub, ended.retry_run_id)
            memories.append(run.limits.memory_bytes)
    assert memories == [100 * MIB, 200 * MIB, 300 * MIB]
    letters = await stub.ListDeadLetters(scheduler_pb2.ListDeadLettersRequest(script_name="hungry"))
    [letter] = letters.dead_letters
    assert letter.run.id == run.id and letter.run.attempt == 3
    assert "3 of 3 attempts" in letter.reason and letter.dead_lettered_at.seconds > 0
    assert letter.run.parameters["size"] == 5
    assert letter.run.usage.peak_memory_bytes == 300 * MIB
    assert letter.run.output.stderr == b"MemoryError at step 3\n"


async def test_replay_validates_new_parameters_and_is_recorded_once(
    path: RunPath, js: Any, tokens
) -> None:  # type: ignore[no-untyped-def]
    """Replay with bad parameters is INVALID_ARGUMENT and stores nothing; with good ones it
    creates a new run (parent_run_id, attempt 1) recorded on the dead letter; the same
    idempotency key returns it again; a second replay is FAILED_PRECONDITION."""
    params = [
        catalogue_pb2.ParameterDefinition(
            name="n", type=catalogue_pb2.PARAMETER_TYPE_INTEGER, required=True
        )
    ]
    await path.publish("replayable", "print(1)\n", params=params)
    stub = path.scheduler_stub()
    run = await stub.SubmitRun(request("replayable", n=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReplayDeadLetter(scheduler_pb2.ReplayDeadLetterRequest(run_id=run.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # not dead-lettered yet
    await start(js, stub, run)
    await finish(js, run, RS.RUN_STATE_FAILED, RS.FAILURE_REASON_EXIT_CODE)
    await eventually(lambda: get(stub, run.id), lambda r: r.dead_lettered)

    bad = struct_pb2.Struct()
    bad.update({"n": "many"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReplayDeadLetter(
            scheduler_pb2.ReplayDeadLetterRequest(run_id=run.id, parameters=bad)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in from_rpc_error(err.value).violations} == {"parameters.n"}  # type: ignore[attr-defined]
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="replayable"))
    assert [r.id for r in listed.runs] == [run.id]
    letters = await stub.ListDeadLetters(scheduler_pb2.ListDeadLettersRequest())
    assert [(d.run.id, d.replay_run_id) for d in letters.dead_letters] == [(run.id, "")]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await path.scheduler_stub(tokens.reader).ReplayDeadLetter(
            scheduler_pb2.ReplayDeadLetterRequest(run_id=run.id)
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    good = struct_pb2.Struct()
    good.update({"n": 2})
    replay_request = scheduler_pb2.ReplayDeadLetterRequest(
        run_id=run.id, parameters=good, idempotency_key="replay-1"
    )
    replay = await stub.ReplayDeadLetter(replay_request)
    assert (replay.parent_run_id, replay.attempt, replay.state) == (run.id, 1, RS.RUN_STATE_PENDING)
    assert replay.parameters["n"] == 2 and replay.script_version == run.script_version
    assert (await stub.ReplayDeadLetter(replay_request)).id == replay.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReplayDeadLetter(scheduler_pb2.ReplayDeadLetterRequest(run_id=run.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert replay.id in (err.value.details() or "")
    letters = await path.scheduler_stub(tokens.reader).ListDeadLetters(
        scheduler_pb2.ListDeadLettersRequest(script_name="replayable")
    )
    assert [(d.run.id, d.replay_run_id) for d in letters.dead_letters] == [(run.id, replay.id)]


async def test_replay_with_a_new_version(path: RunPath, js: Any) -> None:
    """Replay can move a dead letter to another published version; the policy is kept."""
    await path.publish("versioned", "raise SystemExit(1)\n")
    await path.publish("versioned", "print('fixed')\n", version="1.1.0")
    stub = path.scheduler_stub()
    submit = request("versioned", common_pb2.RetryPolicy(max_attempts=1, jitter=0.25))
    submit.script.version = "1.0.0"
    run = await stub.SubmitRun(submit)
    await start(js, stub, run)
    await finish(js, run, RS.RUN_STATE_FAILED, RS.FAILURE_REASON_EXIT_CODE)
    await eventually(lambda: get(stub, run.id), lambda r: r.dead_lettered)
    replay = await stub.ReplayDeadLetter(
        scheduler_pb2.ReplayDeadLetterRequest(run_id=run.id, version="1.1.0")
    )
    assert replay.script_version == "1.1.0" and replay.sha256 != run.sha256
    assert (replay.retry.max_attempts, replay.retry.jitter) == (1, 0.25)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReplayDeadLetter(
            scheduler_pb2.ReplayDeadLetterRequest(run_id="0" * 32, version="9.9.9")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_redelivered_finished_event_creates_no_second_retry(path: RunPath, js: Any) -> None:
    """The same FINISHED delivered again (even under a new message id) retries once."""
    await path.publish("twice", "print(1)\n")
    stub = path.scheduler_stub()
    policy = common_pb2.RetryPolicy(
        max_attempts=5, initial_backoff=duration_pb2.Duration(seconds=60)
    )
    run = await stub.SubmitRun(request("twice", policy))
    await start(js, stub, run)
    for _ in range(3):
        await finish(js, run, RS.RUN_STATE_FAILED, RS.FAILURE_REASON_EXIT_CODE)
    ended = await eventually(lambda: get(stub, run.id), lambda r: bool(r.retry_run_id))
    await asyncio.sleep(1.0)
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="twice"))
    assert sorted(r.id for r in listed.runs) == sorted([run.id, ended.retry_run_id])


async def test_secret_parameters_are_dead_lettered_not_retried_without_them(
    path: RunPath, js: Any
) -> None:
    """A retry would run without the secret values (never stored): the run is dead-lettered
    saying so, and a replay must bring parameters."""
    params = [
        catalogue_pb2.ParameterDefinition(name="token", type=catalogue_pb2.PARAMETER_TYPE_PASSWORD)
    ]
    await path.publish("secretive", "print(1)\n", params=params)
    stub = path.scheduler_stub()
    policy = common_pb2.RetryPolicy(max_attempts=3)
    run = await stub.SubmitRun(request("secretive", policy, token="s3cret-value"))
    await start(js, stub, run)
    await finish(js, run, RS.RUN_STATE_FAILED, RS.FAILURE_REASON_EXIT_CODE)
    dead = await eventually(lambda: get(stub, run.id), lambda r: r.dead_lettered)
    assert not dead.retry_run_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReplayDeadLetter(scheduler_pb2.ReplayDeadLetterRequest(run_id=run.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_subjects(err.value) == {"parameters"}
    letters = await stub.ListDeadLetters(
        scheduler_pb2.ListDeadLettersRequest(script_name="secretive")
    )
    assert "secret" in letters.dead_letters[0].reason
    assert b"s3cret-value" not in letters.SerializeToString()


async def test_dead_letters_page_newest_first(path: RunPath, js: Any) -> None:
    """ListDeadLetters pages with a cursor and filters by script."""
    await path.publish("pages", "print(1)\n")
    await path.publish("other", "print(1)\n")
    stub = path.scheduler_stub()
    ids = []
    for name in ("pages", "other", "pages", "pages"):
        run = await stub.SubmitRun(request(name))
        await start(js, stub, run)
        await finish(js, run, RS.RUN_STATE_FAILED, RS.FAILURE_REASON_EXIT_CODE)
        await eventually(lambda: get(stub, run.id), lambda r: r.dead_lettered)  # noqa: B023
        if name == "pages":
            ids.append(run.id)
    seen, token = [], ""
    while True:
        page = await stub.ListDeadLetters(
            scheduler_pb2.ListDeadLettersRequest(script_name="pages", page_size=2, page_token=token)
        )
        seen += [d.run.id for d in page.dead_letters]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListDeadLetters(scheduler_pb2.ListDeadLettersRequest(page_token="%%%"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (common_pb2.RetryPolicy(max_attempts=-1), "retry.max_attempts"),
        (common_pb2.RetryPolicy(max_attempts=0), "retry.max_attempts"),
        (common_pb2.RetryPolicy(max_attempts=2**31 - 1), "retry.max_attempts"),
        (
            common_pb2.RetryPolicy(
                max_attempts=2, initial_backoff=duration_pb2.Duration(seconds=-1)
            ),
            "retry.initial_backoff",
        ),
        (
            # 2^63 itself does not fit a Duration's int64 seconds; its largest value does not fit
            # any sane backoff either.
            common_pb2.RetryPolicy(
                max_attempts=2, max_backoff=duration_pb2.Duration(seconds=2**63 - 1)
            ),
            "retry.max_backoff",
        ),
        (common_pb2.RetryPolicy(max_attempts=2, jitter=-0.1), "retry.jitter"),
        (
            common_pb2.RetryPolicy(max_attempts=2, oom_memory_cap_bytes=-1),
            "retry.oom_memory_cap_bytes",
        ),
    ],
)
async def test_bad_retry_policy_is_rejected_and_nothing_stored(
    path: RunPath, policy: common_pb2.RetryPolicy, field: str
) -> None:
    """Negative or absurd retry settings at SubmitRun: INVALID_ARGUMENT naming the field."""
    await path.publish("strict", "print(1)\n")
    stub = path.scheduler_stub()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitRun(request("strict", policy))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in from_rpc_error(err.value).violations] == [field]  # type: ignore[attr-defined]
    listed = await stub.ListRuns(scheduler_pb2.ListRunsRequest(script_name="strict"))
    assert list(listed.runs) == []


async def last_quarantine_event(js: Any, script: str) -> events_pb2.ScheduleEvent:
    message = await js.get_last_msg("RUNBOX_EVENTS", f"runbox.events.quarantine.{script}")
    return events_pb2.ScheduleEvent.FromString(message.data)


async def test_crash_loop_quarantines_until_released(
    tmp_path: Path, nats_server, tokens, js: Any
) -> None:  # type: ignore[no-untyped-def]
    """Three failed runs in a row quarantine the script (with an event); its next run waits
    PENDING through several dispatch rounds, and runs once the quarantine is released."""
    stack = await start_run_path(tmp_path, nats_server.url, tokens, scheduler=FAST)
    try:
        await stack.publish("crashy", "raise SystemExit(3)\n")
        stub = stack.scheduler_stub()
        for _ in range(3):
            run = await stub.SubmitRun(request("crashy"))
            failed = await eventually(
                lambda: get(stub, run.id),  # noqa: B023
                lambda r: r.state == RS.RUN_STATE_FAILED,
                wait_s=30,
            )
            assert failed.exit.exit_code == 3
        listed = await eventually(
            lambda: stub.ListQuarantines(scheduler_pb2.ListQuarantinesRequest()),
            lambda r: len(r.quarantines) == 1,
        )
        [held] = listed.quarantines
        assert held.script_name == "crashy" and held.consecutive_failures == 3
        assert run.id in held.reason
        event = await eventually(
            lambda: last_quarantine_event(js, "crashy"), lambda e: e is not None
        )
        assert event.type == events_pb2.SCHEDULE_EVENT_TYPE_SCRIPT_QUARANTINED
        assert event.run_id == run.id

        await stack.publish("crashy", "print('fixed')\n", version="1.0.1")
        waiting = await stub.SubmitRun(request("crashy"))
        await asyncio.sleep(1.5)  # several 0.2 s dispatch rounds
        assert (await get(stub, waiting.id)).state == RS.RUN_STATE_PENDING

        reader = stack.scheduler_stub(tokens.reader)
        assert (
            len((await reader.ListQuarantines(scheduler_pb2.ListQuarantinesRequest())).quarantines)
            == 1
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reader.ReleaseQuarantine(
                scheduler_pb2.ReleaseQuarantineRequest(script_name="crashy")
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

        released = await stub.ReleaseQuarantine(
            scheduler_pb2.ReleaseQuarantineRequest(script_name="crashy")
        )
        assert released.released.script_name == "crashy"
        done = await eventually(
            lambda: get(stub, waiting.id), lambda r: r.state == RS.RUN_STATE_SUCCEEDED, wait_s=30
        )
        assert done.output.stdout == b"fixed\n"
        event = await eventually(
            lambda: last_quarantine_event(js, "crashy"),
            lambda e: e.type == events_pb2.SCHEDULE_EVENT_TYPE_SCRIPT_RELEASED,
        )
        empty = await stub.ListQuarantines(scheduler_pb2.ListQuarantinesRequest())
        assert list(empty.quarantines) == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ReleaseQuarantine(
                scheduler_pb2.ReleaseQuarantineRequest(script_name="crashy")
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await stack.close()


async def test_two_replicas_sweep_each_lost_run_once_and_quarantine_once(
    database_url: str,
) -> None:
    """Two schedulers on one database (every dialect; PostgreSQL is the replicated case):
    each expired run ends LOST once, with one FINISHED event and one retry, and LOST runs
    never quarantine a script (they say nothing of it). Script failures applied through
    both replicas at once quarantine the script once (by the next failure at the latest:
    runs ending at the same moment do not see each other's end), and its PENDING runs are
    no longer selected."""
    await db.upgrade(MIGRATIONS, database_url)
    replicas = [_replica(database_url) for _ in range(2)]
    now = datetime.now(UTC)
    policy = {"max_attempts": 2, "initial_backoff": "60s"}
    async with replicas[0].sessions() as session, session.begin():
        for i in range(5):
            session.add(_row(f"lost{i}", "flaky-host", RS.RUN_STATE_RUNNING, now, retry=policy))
        for i in range(5):
            running = _row(f"crash{i}", "looping", RS.RUN_STATE_RUNNING, now, retry=policy)
            running.lease_expires_at = now + timedelta(hours=1)
            session.add(running)
        session.add(_row("waiting", "looping", RS.RUN_STATE_PENDING, now))
        session.add(_row("other", "healthy", RS.RUN_STATE_PENDING, now))
    try:
        swept = await asyncio.gather(*(r.sweeper.sweep_once() for r in replicas for _ in range(3)))
        assert sum(swept) == 5
        await asyncio.gather(*(replicas[i % 2].runs.apply(_crashed(f"crash{i}")) for i in range(4)))
        assert await replicas[1].runs.apply(_crashed("crash4"))  # the next failure
        async with replicas[0].sessions() as session:
            rows = {r.id: r for r in (await session.scalars(select(RunRow))).all()}
            subjects = list((await session.scalars(select(OUTBOX.c.subject))).all())
            [held] = (await session.scalars(select(QuarantineRow))).all()
        for i in range(5):
            lost = rows[f"lost{i}"]
            assert lost.state == RS.RUN_STATE_LOST and lost.failure_reason == RS.FAILURE_REASON_LOST
            assert rows[lost.retry_run_id or ""].parent_run_id == lost.id
            mine = [s for s in subjects if s.startswith(f"runbox.events.run.{lost.id}.")]
            assert sorted(mine) == [  # FINISHED + RETRIED, the type in the subject
                f"runbox.events.run.{lost.id}.finished",
                f"runbox.events.run.{lost.id}.retried",
            ]
        for i in range(5):
            crashed = rows[f"crash{i}"]
            assert crashed.state == RS.RUN_STATE_FAILED and crashed.exit_code == 3
            assert rows[crashed.retry_run_id or ""].parent_run_id == crashed.id
        assert len(rows) == 5 + 5 + 2 + 10
        assert held.script_name == "looping" and held.consecutive_failures >= 3
        assert subjects.count("runbox.events.quarantine.looping") == 1
        assert "runbox.events.quarantine.flaky-host" not in subjects
        pending = await replicas[1].runs.store.claim_pending(10, claim_s=30)
        assert [r.id for r in pending] == ["other"]
    finally:
        for replica in replicas:
            await replica.engine.dispose()


def _crashed(run_id: str) -> events_pb2.RunEvent:
    """The executor's FINISHED event of a script that exited 3."""
    event = events_pb2.RunEvent(
        event_id=f"{run_id}:finished",
        run_id=run_id,
        attempt=1,
        type=events_pb2.RUN_EVENT_TYPE_FINISHED,
        state=RS.RUN_STATE_FAILED,
        exit=common_pb2.ExitInfo(exit_code=3, reason=common_pb2.FAILURE_REASON_EXIT_CODE),
    )
    event.occurred_at.GetCurrentTime()
    event.finished_at.GetCurrentTime()
    return event


@dataclass
class Replica:
    engine: Any
    sessions: Any
    runs: Runs
    sweeper: LeaseSweeper


def _replica(url: str) -> Replica:
    """The failure-handling parts of one scheduler process on `url`."""
    engine = db.create_engine(DatabaseSettings(url=url))
    sessions = db.sessionmaker(engine)
    outbox = Outbox(OUTBOX, sessions)
    metrics = SchedulerMetrics(CollectorRegistry())
    catalogue: Any = None  # not reached: nothing is submitted
    events = RunEvents(outbox, subjects_prefix="runbox.events")
    quarantines = Quarantines(
        sessions,
        outbox,
        metrics,
        subjects_prefix="runbox.events",
        failures=3,
        window_s=600,
    )
    runs = Runs(
        sessions,
        RunStore(sessions, transactions_of(sessions)),
        events,
        catalogue,
        Watchers(),
        metrics,
        lease_s=1,
        listeners=RunListeners(run_ended=[RetryOrDeadLetter(events, metrics), quarantines]),
    )
    sweeper = LeaseSweeper(runs, metrics, interval_s=1, start_delay_s=0)
    return Replica(engine, sessions, runs, sweeper)


def _row(
    run_id: str, script: str, state: int, now: datetime, retry: dict[str, Any] | None = None
) -> RunRow:
    return RunRow(
        id=run_id,
        script_name=script,
        script_version="1.0.0",
        sha256="0" * 64,
        execution_type=RS.EXECUTION_TYPE_PYTHON,
        state=state,
        retry=retry or {},
        executor_id="gone",
        created_at=now,
        updated_at=now,
        lease_expires_at=now - timedelta(seconds=5) if state == RS.RUN_STATE_RUNNING else None,
    )


# Runs until the process that started it (the executor's runner) is gone.
ORPHAN_AWARE = (
    "import os, time\n"
    "print('started', flush=True)\n"
    "parent = os.getppid()\n"
    "while os.getppid() == parent:\n"
    "    time.sleep(0.1)\n"
)


def _processes_under(path: str) -> list[int]:
    """Processes whose command line names a file under `path`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if path.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


async def test_executor_killed_mid_run_is_lost_then_retried(
    tmp_path: Path, nats_server, tokens
) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of an executor process while its run is RUNNING: heartbeats stop, the lease
    expires, the run ends LOST and its retry (attempt 2, parent_run_id) is created."""
    address = f"127.0.0.1:{natsd.free_port()}"
    stack = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        with_executor=False,
        scheduler=FAST | {"executors": [address]},
    )
    env = os.environ | {
        "RUNBOX_INSTANCE_ID": "executor-doomed",
        "RUNBOX_GRPC__HOST": "127.0.0.1",
        "RUNBOX_GRPC__PORT": address.rsplit(":", 1)[1],
        "RUNBOX_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'executor.db'}",
        "RUNBOX_NATS__URL": nats_server.url,
        "RUNBOX_METRICS__PORT": "-1",
        "RUNBOX_AUTH__PRINCIPALS_FILE": str(tokens.principals_file),
        "RUNBOX_AUTH__SERVICE_TOKEN": tokens.service,
        "RUNBOX_SANDBOX__BACKEND": "local",
        "RUNBOX_SANDBOX__ALLOW_UNSANDBOXED": "true",
        "RUNBOX_WORK_DIR": str(tmp_path / "work"),
        "RUNBOX_CATALOGUE__ADDRESS": stack.catalogue.address,
        "RUNBOX_HEARTBEAT_INTERVAL_S": "0.5",
    }
    executor = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.executor",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await stack.publish("doomed", ORPHAN_AWARE)
        stub = stack.scheduler_stub()
        policy = common_pb2.RetryPolicy(
            max_attempts=2,
            initial_backoff=duration_pb2.Duration(seconds=1),
            retry_on=[RS.FAILURE_REASON_LOST],
        )
        run = await stub.SubmitRun(request("doomed", policy))
        await eventually(
            lambda: get(stub, run.id), lambda r: r.state == RS.RUN_STATE_RUNNING, wait_s=60
        )
        os.killpg(executor.pid, signal.SIGKILL)
        lost = await eventually(
            lambda: get(stub, run.id), lambda r: r.state == RS.RUN_STATE_LOST, wait_s=30
        )
        assert lost.exit.reason == RS.FAILURE_REASON_LOST
        assert "executor-doomed" in lost.exit.message
        retry = await get(stub, lost.retry_run_id)
        assert (retry.attempt, retry.parent_run_id) == (2, run.id)
        # Nothing of the run is left on the host: the local agent and the script died with
        # the executor (the script itself would otherwise wait for its parent forever).
        work = str(tmp_path / "work")
        await eventually(
            lambda: asyncio.to_thread(_processes_under, work), lambda pids: not pids, wait_s=10
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(executor.pid, signal.SIGKILL)
        await asyncio.wait_for(executor.wait(), 30)
        await stack.close()
