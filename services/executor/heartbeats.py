"""Liveness: one periodic task per executor publishes a HEARTBEAT event for every
run it holds, so the scheduler can tell a busy executor from a dead one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from runbox.events.v1 import events_pb2
from services.executor.events import EventPublisher, build_event
from shared.tasks import stop_gracefully

if TYPE_CHECKING:
    from services.executor.runs import ActiveRun

log = logging.getLogger(__name__)


class Heartbeats:
    """Every interval, one outbox transaction with a HEARTBEAT per active run.

    A heartbeat carries the state consumers were last told (never one they have not
    seen yet: it is staged after that event), its sequence number is in outbox order with
    the run's other events, and it is never sent once FINISHED is built.
    """

    def __init__(
        self,
        *,
        interval_s: float,
        runs: Callable[[], list[ActiveRun]],
        publisher: EventPublisher,
    ) -> None:
        self.interval_s = interval_s
        self._runs = runs
        self._publisher = publisher
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def ensure_started(self) -> None:
        """Start the loop (once; idempotent) — the executor's first run starts it."""
        if self._task is None and not self._stopping.is_set():
            self._task = asyncio.create_task(self._loop(), name="heartbeats")

    async def stop(self) -> None:
        self._stopping.set()
        await stop_gracefully(self._task, 10.0)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
                return
            try:
                await self.beat()
            except Exception:  # the next tick tries again; runs are unaffected
                log.exception("heartbeat tick failed")

    async def beat(self) -> int:
        """Publish one heartbeat per eligible run; returns how many were sent. Built and
        staged with no await in between, so each is in outbox order with the run's other
        events (EventPublisher.stage) and none follows a FINISHED."""
        held = [run for run in self._runs() if not run.finished and run.queued is not None]
        events = [build_event(r.ctx, events_pb2.RUN_EVENT_TYPE_HEARTBEAT, r.reported) for r in held]
        if events:
            await self._publisher.stage(events)
        return len(events)
