"""SchedulerService: proto <-> domain translation only."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar
from zoneinfo import ZoneInfo

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.scheduler import state as sm
from services.scheduler.dead_letters import DeadLetters
from services.scheduler.dispatch import Dispatcher
from services.scheduler.models import FireRow, QuarantineRow, RunRow, ScheduleRow, kept_messages
from services.scheduler.retries import Quarantines
from services.scheduler.run_store import dispatched_record
from services.scheduler.runs import Runs, cancel_run, new_run_id
from services.scheduler.schedules import Schedules, definition
from services.scheduler.watch import Change, Watchers
from shared.interceptors import current_principal

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
M = TypeVar("M", bound=Message)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A timestamp by integer arithmetic (Timestamp.FromDatetime costs ~5x more)."""
    if value is None:
        return None
    seconds, nanos = _since_epoch(value)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _since_epoch(value: datetime) -> tuple[int, int]:
    """A time (naive: UTC) as a Timestamp's seconds and nanos."""
    since = (value if value.tzinfo else value.replace(tzinfo=UTC)) - _EPOCH
    return since.days * 86400 + since.seconds, since.microseconds * 1000


def _stored(kind: type[M], value: Mapping[str, Any]) -> M:
    """A message kept as JSON in a run's row (limits, retry policy). Runs of one script
    store the same few, so each distinct one is parsed once (json_format costs 20-50 µs a
    message, more than the rest of a Run); the caller gets the shared instance and must
    copy it (a message constructor's field does) and not change it."""
    if not value:
        return kind()
    return _parsed(kind, json.dumps(value, sort_keys=True))  # type: ignore[arg-type,return-value]


@functools.lru_cache(maxsize=256)
def _parsed(kind: type[Message], text: str) -> Message:
    return json_format.Parse(text, kind())


def stored_usage(row: RunRow) -> common_pb2.ResourceUsage:
    """A run's usage from its JSON and its sandbox column (runs.usage_columns); the message
    the applied event carried when the record has it (the same fields, no JSON parse)."""
    kept = kept_messages(row)
    if kept is not None:
        return kept[0]
    usage = common_pb2.ResourceUsage()
    if row.usage:
        json_format.ParseDict(row.usage, usage)
    if row.sandbox:
        usage.sandbox = row.sandbox
    return usage


# The fields of a Run that never change once it is submitted (a watch converts them once,
# `run_fixed`) and those that move with its state (converted for every message).
FIXED_FIELDS = frozenset(
    {
        "id",
        "script",
        "script_version",
        "sha256",
        "execution_type",
        "parameters",
        "priority",
        "labels",
        "attempt",
        "parent_run_id",
        "schedule_id",
        "idempotency_key",
        "limits",
        "retry",
        "submitted_by",
        "create_time",
    }
)


def run_fixed(row: RunRow) -> scheduler_pb2.Run:
    """The fields of a run that never change (FIXED_FIELDS), alone in a Run."""
    params = struct_pb2.Struct()
    params.update({**row.parameters, **{name: "***" for name in row.secret_names}})
    return scheduler_pb2.Run(
        id=row.id,
        script=common_pb2.ScriptRef(name=row.script_name, version=row.version_selector),
        script_version=row.script_version,
        sha256=row.sha256,
        execution_type=common_pb2.ExecutionType.ValueType(row.execution_type),  # type: ignore[arg-type]
        parameters=params,  # type: ignore[arg-type]
        priority=row.priority,
        labels=row.labels,
        attempt=row.attempt,
        parent_run_id=row.parent_run_id or "",
        schedule_id=row.schedule_id or "",
        idempotency_key=row.idempotency_key or "",
        limits=_stored(common_pb2.ResourceLimits, row.limits),
        retry=_stored(common_pb2.RetryPolicy, row.retry),
        submitted_by=row.submitted_by,
        create_time=_ts(row.created_at),
    )


def run_to_proto(
    row: RunRow, fixed: scheduler_pb2.Run | None = None, *, into: scheduler_pb2.Run | None = None
) -> scheduler_pb2.Run:
    """A run as clients see it; secret parameters show as ***. `fixed`: `run_fixed` of the
    same run made before (a watch's), merged instead of converting those fields again.
    `into`: an empty Run to fill (a WatchRunResponse's own, not a Run copied into it).
    Fields are set in place, not through constructors of sub-messages that are then
    copied (~4 µs less a message)."""
    run = scheduler_pb2.Run() if into is None else into
    run.MergeFrom(fixed if fixed is not None else run_fixed(row))
    run.state = row.state  # type: ignore[assignment]
    exit_ = run.exit
    exit_.SetInParent()
    exit_.exit_code, exit_.signal = row.exit_code, row.exit_signal
    exit_.reason, exit_.message = row.failure_reason, row.exit_message  # type: ignore[assignment]
    run.usage.CopyFrom(stored_usage(row))
    run.usage.SetInParent()  # an empty one is set, as a constructor's field is
    output = run.output
    output.SetInParent()
    output.stdout, output.stderr = row.stdout_tail, row.stderr_tail
    output.truncated = row.output_truncated
    output.stdout_total_bytes, output.stderr_total_bytes = row.stdout_total, row.stderr_total
    run.executor_id, run.dead_lettered = row.executor_id, row.dead_lettered
    run.retry_run_id = row.retry_run_id or ""
    _set_ts(run.queue_time, row.queued_at)
    _set_ts(run.start_time, row.started_at)
    _set_ts(run.finish_time, row.finished_at)
    kept = kept_messages(row)
    if kept is not None:
        run.result.CopyFrom(kept[1])
        run.result.SetInParent()
    elif row.result:
        json_format.ParseDict(row.result, run.result)
    else:
        run.result.SetInParent()  # an empty result reads {} as it always has (not unset)
    if row.state == common_pb2.RUN_STATE_SCHEDULED:
        _set_ts(run.due_time, row.next_dispatch_at)
    if row.started_at and row.finished_at:
        run.duration.SetInParent()  # a zero duration is set too
        run.duration.FromTimedelta(row.finished_at - row.started_at)
    return run


def _set_ts(target: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    """`_ts(value)` set in place on a message's field (left unset for None)."""
    if value is None:
        return
    target.seconds, target.nanos = _since_epoch(value)
    target.SetInParent()


def watch_reply(row: RunRow, fixed: scheduler_pb2.Run) -> scheduler_pb2.WatchRunResponse:
    """A WatchRun message showing `row`, its Run built in place."""
    reply = scheduler_pb2.WatchRunResponse()
    run_to_proto(row, fixed, into=reply.run)
    return reply


def fire_to_proto(row: FireRow) -> scheduler_pb2.Fire:
    return scheduler_pb2.Fire(
        schedule_id=row.schedule_id,
        nominal_time=_ts(row.nominal_at),
        outcome=row.outcome,  # type: ignore[arg-type]
        run_id=row.run_id or "",
        reason=row.reason,
        record_time=_ts(row.recorded_at),
    )


def _duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def schedule_to_proto(row: ScheduleRow) -> scheduler_pb2.Schedule:
    """A stored schedule: its definition plus the fields the server keeps."""
    schedule = definition(row)
    schedule.id, schedule.created_by = row.id, row.created_by
    schedule.state = row.state  # type: ignore[assignment]
    schedule.consecutive_failures = row.consecutive_failures
    for field, value in (
        ("next_fire_time", row.next_fire_at),
        ("last_fire_time", row.last_fire_at),
        ("create_time", row.created_at),
        ("update_time", row.updated_at),
    ):
        ts = _ts(value)
        if ts is not None:
            getattr(schedule, field).CopyFrom(ts)
    return schedule


def dead_letter_to_proto(row: RunRow) -> scheduler_pb2.DeadLetter:
    return scheduler_pb2.DeadLetter(
        run=run_to_proto(row),
        dead_lettered_at=_ts(row.dead_lettered_at),
        reason=row.dead_letter_reason,
        replay_run_id=row.replay_run_id or "",
    )


def quarantine_to_proto(row: QuarantineRow) -> scheduler_pb2.Quarantine:
    return scheduler_pb2.Quarantine(
        script_name=row.script_name,
        since=_ts(row.since),
        reason=row.reason,
        consecutive_failures=row.consecutive_failures,
    )


async def _next(queue: asyncio.Queue[Change], timeout_s: float) -> Change | None:
    """The next change of a watched run, or None after `timeout_s` without one (asyncio.timeout:
    no task per wait, as asyncio.wait_for makes on Python 3.11)."""
    if not queue.empty():
        return queue.get_nowait()
    try:
        async with asyncio.timeout(timeout_s):
            return await queue.get()
    except TimeoutError:
        return None


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Runs, dead letters and quarantines, schedules, their fires and statistics."""

    def __init__(
        self,
        runs: Runs,
        watchers: Watchers,
        dispatcher: Dispatcher,
        executor_stubs: Mapping[str, Any],
        *,
        watch_poll_s: float,
        schedules: Schedules,
        quarantines: Quarantines,
        dead_letters: DeadLetters,
    ) -> None:
        self._runs = runs
        self._dead_letters = dead_letters
        self._quarantines = quarantines
        self._schedules = schedules
        self._watchers = watchers
        self._dispatcher = dispatcher
        self._executors = executor_stubs
        self._poll = watch_poll_s

    async def SubmitRun(
        self, request: scheduler_pb2.SubmitRunRequest, context: Ctx
    ) -> scheduler_pb2.Run:
        return run_to_proto(await self._submit(request))

    async def _submit(
        self, request: scheduler_pb2.SubmitRunRequest, run_id: str | None = None
    ) -> RunRow:
        """Commit the run (`run_id`: its id if new) and hand it to dispatch; the run as
        stored, or the existing one for a repeated idempotency key."""
        with self._dispatcher.direct() as direct:
            row = await self._runs.submit(request, actor=current_principal().name, run_id=run_id)
        self._dispatcher.hand(row, direct)  # sent now, not at the next dispatch round
        return row

    async def GetRun(self, request: scheduler_pb2.GetRunRequest, context: Ctx) -> scheduler_pb2.Run:
        return run_to_proto(await self._runs.store.get(request.id))

    async def ListRuns(
        self, request: scheduler_pb2.ListRunsRequest, context: Ctx
    ) -> scheduler_pb2.ListRunsResponse:
        rows, token = await self._runs.store.list(request)
        return scheduler_pb2.ListRunsResponse(
            runs=[run_to_proto(r) for r in rows], next_page_token=token
        )

    async def CancelRun(
        self, request: scheduler_pb2.CancelRunRequest, context: Ctx
    ) -> scheduler_pb2.Run:
        return run_to_proto(
            await cancel_run(self._runs, self._executors, request.id, request.reason)
        )

    async def WatchRun(
        self, request: scheduler_pb2.WatchRunRequest, context: Ctx
    ) -> AsyncIterator[scheduler_pb2.WatchRunResponse]:
        # Subscribed before the first read: a change committed just after it is queued, not
        # missed until the next poll.
        with self._watching(request.id) as queue:
            first = await self._runs.store.get(request.id)
            async for reply in self._follow(first, queue, logs=request.include_logs):
                yield reply

    async def SubmitAndWatchRun(
        self, request: scheduler_pb2.SubmitAndWatchRunRequest, context: Ctx
    ) -> AsyncIterator[scheduler_pb2.WatchRunResponse]:
        # Subscribed under the new run's id before its commit (and its hand-off to an
        # executor): every change of the run is queued. A refused request raises before
        # the first message, so the caller gets SubmitRun's status and details.
        run_id = new_run_id()
        with self._watching(run_id) as queue:
            row = await self._submit(request.submit, run_id)
            if row.id == run_id:
                async for reply in self._follow(row, queue, logs=request.include_logs):
                    yield reply
                return
        # A repeated idempotency key: the existing run, read before this watch subscribed
        # to it, so it is read once more after subscribing (WatchRun's order).
        with self._watching(row.id) as queue:
            async for reply in self._follow(row, queue, logs=request.include_logs, reread=True):
                yield reply

    @contextlib.contextmanager
    def _watching(self, run_id: str) -> Iterator[asyncio.Queue[Change]]:
        """The changes of a run, queued while in the block."""
        queue = self._watchers.subscribe(run_id)
        try:
            yield queue
        finally:
            self._watchers.unsubscribe(run_id, queue)

    async def _follow(
        self, last: RunRow, queue: asyncio.Queue[Change], *, logs: bool, reread: bool = False
    ) -> AsyncIterator[scheduler_pb2.WatchRunResponse]:
        """WatchRun's stream from `last`, a state of the run no older than `queue`'s
        subscription (unless `reread`: then the run is read back once first): `last`, then
        each later state (and with `logs` the output lines) until a terminal one."""
        fixed = run_fixed(last)  # converted once per watch
        yield watch_reply(last, fixed)
        while not sm.is_terminal(last.state):
            change = None if reread else await _next(queue, self._poll)
            reread = False
            if change is not None and change.log_data:
                if logs:
                    yield scheduler_pb2.WatchRunResponse(
                        log=scheduler_pb2.LogLine(stream=change.log_stream, data=change.log_data)
                    )
                continue
            row = await self._moved(last.id, last, change)
            if row is None:
                continue
            if row.state != last.state:
                yield watch_reply(row, fixed)
            last = row

    async def _moved(self, run_id: str, last: RunRow, change: Change | None) -> RunRow | None:
        """The run after `change`, from the change feed when it tells (the committed row,
        or the dispatch mark applied to the PENDING run shown last); otherwise (a poll,
        another replica's change, a change of a state not shown yet) read back. None: the
        change shows nothing past what was shown (states only move forward)."""
        if change is not None and change.row is not None:
            if sm.can_move(last.state, change.row.state):
                return change.row
        elif change is not None and change.dispatched is not None:
            if last.state == common_pb2.RUN_STATE_PENDING:
                d = change.dispatched
                return dispatched_record(last, d.executor_id, d.address, d.at, d.lease_expiry)
            if not sm.can_move(last.state, common_pb2.RUN_STATE_QUEUED):
                return None
        return await self._runs.store.get(run_id)

    async def ListDeadLetters(
        self, request: scheduler_pb2.ListDeadLettersRequest, context: Ctx
    ) -> scheduler_pb2.ListDeadLettersResponse:
        rows, token = await self._dead_letters.list(request)
        return scheduler_pb2.ListDeadLettersResponse(
            dead_letters=[dead_letter_to_proto(r) for r in rows], next_page_token=token
        )

    async def ReplayDeadLetter(
        self, request: scheduler_pb2.ReplayDeadLetterRequest, context: Ctx
    ) -> scheduler_pb2.Run:
        row = await self._dead_letters.replay(request, actor=current_principal().name)
        return run_to_proto(row)

    async def ListQuarantines(
        self, request: scheduler_pb2.ListQuarantinesRequest, context: Ctx
    ) -> scheduler_pb2.ListQuarantinesResponse:
        rows, token = await self._quarantines.list(request.page_size, request.page_token)
        return scheduler_pb2.ListQuarantinesResponse(
            quarantines=[quarantine_to_proto(r) for r in rows], next_page_token=token
        )

    async def ReleaseQuarantine(
        self, request: scheduler_pb2.ReleaseQuarantineRequest, context: Ctx
    ) -> scheduler_pb2.ReleaseQuarantineResponse:
        row = await self._quarantines.release(request.script_name)
        self._dispatcher.notify()  # its PENDING runs may go now
        return scheduler_pb2.ReleaseQuarantineResponse(released=quarantine_to_proto(row))

    async def CreateSchedule(
        self, request: scheduler_pb2.CreateScheduleRequest, context: Ctx
    ) -> scheduler_pb2.Schedule:
        row = await self._schedules.create(request, actor=current_principal().name)
        return schedule_to_proto(row)

    async def GetSchedule(
        self, request: scheduler_pb2.GetScheduleRequest, context: Ctx
    ) -> scheduler_pb2.Schedule:
        return schedule_to_proto(await self._schedules.get(request.id))

    async def ListSchedules(
        self, request: scheduler_pb2.ListSchedulesRequest, context: Ctx
    ) -> scheduler_pb2.ListSchedulesResponse:
        rows, token = await self._schedules.list(request)
        return scheduler_pb2.ListSchedulesResponse(
            schedules=[schedule_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateSchedule(
        self, request: scheduler_pb2.UpdateScheduleRequest, context: Ctx
    ) -> scheduler_pb2.Schedule:
        return schedule_to_proto(await self._schedules.update(request))

    async def DeleteSchedule(
        self, request: scheduler_pb2.DeleteScheduleRequest, context: Ctx
    ) -> scheduler_pb2.DeleteScheduleResponse:
        return scheduler_pb2.DeleteScheduleResponse(id=await self._schedules.delete(request.id))

    async def PauseSchedule(
        self, request: scheduler_pb2.PauseScheduleRequest, context: Ctx
    ) -> scheduler_pb2.Schedule:
        return schedule_to_proto(await self._schedules.pause(request.id, request.reason))

    async def ResumeSchedule(
        self, request: scheduler_pb2.ResumeScheduleRequest, context: Ctx
    ) -> scheduler_pb2.Schedule:
        return schedule_to_proto(await self._schedules.resume(request.id))

    async def PreviewSchedule(
        self, request: scheduler_pb2.PreviewScheduleRequest, context: Ctx
    ) -> scheduler_pb2.PreviewScheduleResponse:
        fires, zone_name = await self._schedules.preview(request)
        zone = ZoneInfo(zone_name)
        return scheduler_pb2.PreviewScheduleResponse(
            fire_times=[
                scheduler_pb2.FireTime(utc=_ts(f), local=f.astimezone(zone).isoformat())
                for f in fires
            ]
        )

    async def ListFires(
        self, request: scheduler_pb2.ListFiresRequest, context: Ctx
    ) -> scheduler_pb2.ListFiresResponse:
        rows, token = await self._schedules.fires(request)
        return scheduler_pb2.ListFiresResponse(
            fires=[fire_to_proto(r) for r in rows], next_page_token=token
        )

    async def GetStatistics(
        self, request: scheduler_pb2.GetStatisticsRequest, context: Ctx
    ) -> scheduler_pb2.Statistics:
        stats = await self._schedules.statistics(request)
        return scheduler_pb2.Statistics(
            runs_by_state=stats.by_state,
            success_rate=stats.success_rate,
            average_duration=_duration(stats.average),
            p95_duration=_duration(stats.p95),
            last_fire_time=_ts(stats.last_fire),
            next_fire_time=_ts(stats.next_fire),
            total_runs=stats.total,
            fires_by_outcome=stats.fires_by_outcome,
        )
