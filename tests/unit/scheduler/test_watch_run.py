"""WatchRun against the in-process change feed (fake runs, real Watchers)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.models import RunRow
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.watch import Change, Watchers
from tests.unit.scheduler.test_run_proto import row

RS = common_pb2


class ChangedAfterRead:
    """Runs whose first read returns the run PENDING, and whose run then ends (committed,
    notified) before the caller does anything else; later reads return it ended."""

    def __init__(self, watchers: Watchers) -> None:
        self._watchers = watchers
        self.ended: RunRow = row(state=RS.RUN_STATE_SUCCEEDED)
        self.reads = 0

    async def get(self, run_id: str) -> RunRow:
        self.reads += 1
        if self.reads > 1:
            return self.ended
        self._watchers.notify(Change(run_id, row=self.ended))
        return row(state=RS.RUN_STATE_PENDING)


def servicer(runs: Any, watchers: Watchers) -> SchedulerServicer:
    return SchedulerServicer(
        SimpleNamespace(store=runs),  # type: ignore[arg-type]  # reads go to its store
        watchers,
        dispatcher=None,  # type: ignore[arg-type]
        executor_stubs={},
        watch_poll_s=3600,  # no poll in this test: only the change feed can end the stream
        schedules=None,  # type: ignore[arg-type]
        quarantines=None,  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
    )


async def test_watch_sees_change_committed_right_after_its_first_read() -> None:
    """A run that ends just after WatchRun's first read: the stream gets the end from the
    change feed (it subscribed before reading), not after a poll interval, without reading
    the run again."""
    watchers = Watchers()
    runs = ChangedAfterRead(watchers)
    states = []
    async with asyncio.timeout(10):
        async for reply in servicer(runs, watchers).WatchRun(
            scheduler_pb2.WatchRunRequest(id="r1"),
            None,  # type: ignore[arg-type]
        ):
            states.append(reply.run.state)
    assert states == [RS.RUN_STATE_PENDING, RS.RUN_STATE_SUCCEEDED]
    assert runs.reads == 1
    assert watchers._queues == {}  # unsubscribed at the end
