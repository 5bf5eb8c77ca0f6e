"""move_runs sets only the columns the events' write-back compares (run_store.MOVED)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

from google.protobuf import struct_pb2

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.scheduler.models import RunRow
from services.scheduler.run_store import MOVED, move_runs

RS = common_pb2


def _row() -> RunRow:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    return RunRow(
        id="r1",
        state=RS.RUN_STATE_PENDING,
        script_name="s",
        parameters={"n": 1},
        config={},
        labels={"a": "b"},
        created_at=now,
        updated_at=now,
        queued_at=None,
        started_at=None,
        finished_at=None,
        lease_expires_at=None,
        executor_id=None,
    )


def _event(kind: int, state: int, **fields: object) -> events_pb2.RunEvent:
    event = events_pb2.RunEvent(
        run_id="r1",
        type=kind,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        executor_id="e1",
        **fields,  # type: ignore[arg-type]
    )
    event.occurred_at.GetCurrentTime()
    return event


def test_every_column_an_event_sets_is_written_back() -> None:
    result = struct_pb2.Struct()
    result.update({"ok": True})
    events = [
        _event(events_pb2.RUN_EVENT_TYPE_STARTED, RS.RUN_STATE_RUNNING),
        _event(
            events_pb2.RUN_EVENT_TYPE_FINISHED,
            RS.RUN_STATE_FAILED,
            exit=RS.ExitInfo(
                exit_code=3, reason=RS.FAILURE_REASON_EXIT_CODE, message="m", signal=9
            ),
            usage=RS.ResourceUsage(cpu_seconds=1.5, peak_memory_bytes=10, sandbox="docker"),
            output=RS.OutputTail(stdout=b"o", stderr=b"e", truncated=True, stdout_total_bytes=5),
            result=result,
        ),
    ]
    events[1].finished_at.GetCurrentTime()
    row = _row()
    before = copy.deepcopy({k: v for k, v in vars(row).items() if not k.startswith("_")})
    moved, ended, finished = move_runs(
        {"r1": row}, events, [0, 1], datetime.now(UTC) + timedelta(seconds=20)
    )
    assert moved == [0, 1] and finished == [row] and ended == {"r1": row}
    after = {k: v for k, v in vars(row).items() if not k.startswith("_")}
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed, "the events changed nothing"
    assert changed <= set(MOVED), changed - set(MOVED)
