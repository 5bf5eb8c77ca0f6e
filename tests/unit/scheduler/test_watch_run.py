"""WatchRun and SubmitAndWatchRun against the in-process change feed (fake runs, real
Watchers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.models import RunRow
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.watch import Change, Watchers
from shared.auth import Principal
from shared.interceptors import _principal
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


class EndedInCommit:
    """Runs whose submit commits the run and sees it end (notified) before it returns; or,
    with `existing`, finds that run for the idempotency key instead (its later reads: ended).
    The dispatcher's part of a submit: `direct()` and `hand()`, recorded."""

    def __init__(self, watchers: Watchers, existing: RunRow | None = None) -> None:
        self._watchers = watchers
        self._existing = existing
        self.store = self  # reads go to the store
        self.reads = 0
        self.handed: list[str] = []

    async def submit(self, request: Any, *, actor: str, run_id: str | None) -> RunRow:
        if self._existing is not None:
            return self._existing
        assert run_id is not None
        self._watchers.notify(Change(run_id, row=row(id=run_id, state=RS.RUN_STATE_SUCCEEDED)))
        return row(id=run_id, state=RS.RUN_STATE_PENDING, submitted_by=actor)

    async def get(self, run_id: str) -> RunRow:
        self.reads += 1
        return row(id=run_id, state=RS.RUN_STATE_SUCCEEDED)

    @contextlib.contextmanager
    def direct(self) -> Iterator[None]:
        yield None

    def hand(self, run: RunRow, direct: None) -> None:
        self.handed.append(run.id)


def servicer(runs: Any, watchers: Watchers, dispatcher: Any = None) -> SchedulerServicer:
    return SchedulerServicer(
        runs if dispatcher is not None else SimpleNamespace(store=runs),
        watchers,
        dispatcher=dispatcher,
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


async def submit_and_watch(runs: EndedInCommit, watchers: Watchers) -> list[scheduler_pb2.Run]:
    token = _principal.set(Principal("alice", frozenset({"*"})))
    try:
        async with asyncio.timeout(10):
            return [
                reply.run
                async for reply in servicer(runs, watchers, runs).SubmitAndWatchRun(
                    scheduler_pb2.SubmitAndWatchRunRequest(),
                    None,  # type: ignore[arg-type]
                )
            ]
    finally:
        _principal.reset(token)


async def test_submit_and_watch_sees_change_made_before_the_submit_returns() -> None:
    """A run that ends before its submit returns: the stream gets the end from the change
    feed (it subscribed under the new id before the commit), with no read of the run."""
    watchers = Watchers()
    runs = EndedInCommit(watchers)
    streamed = await submit_and_watch(runs, watchers)
    assert [r.state for r in streamed] == [RS.RUN_STATE_PENDING, RS.RUN_STATE_SUCCEEDED]
    assert streamed[0].submitted_by == "alice"
    assert runs.handed == [streamed[0].id] and runs.reads == 0
    assert watchers._queues == {}


async def test_submit_and_watch_of_existing_run_reads_it_once_after_subscribing() -> None:
    """A repeated idempotency key: the existing run as the submit found it, then (read back
    once, as it may have moved before the watch subscribed) its later state."""
    watchers = Watchers()
    runs = EndedInCommit(watchers, existing=row(id="old", state=RS.RUN_STATE_RUNNING))
    streamed = await submit_and_watch(runs, watchers)
    assert [(r.id, r.state) for r in streamed] == [
        ("old", RS.RUN_STATE_RUNNING),
        ("old", RS.RUN_STATE_SUCCEEDED),
    ]
    assert runs.reads == 1
    assert watchers._queues == {}
