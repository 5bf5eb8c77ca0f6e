"""The lease sweeper: a background loop ending LOST the runs whose executor stopped
reporting (heartbeats, log chunks, state events) for longer than the lease.

Leases are set at dispatch and renewed by the run's events (Runs.renew_lease / apply); the
sweeper only reads them. Each lost run is ended in its own transaction by Runs.lose_expired
(FINISHED event through the outbox, on_terminal hooks: retry or dead letter), which is safe
with several scheduler replicas sweeping the same table.

The first sweep waits one lease after start: leases in the table are as old as the process's
downtime, and the heartbeats that renew them may still wait in the stream; by then the
consumer has caught up and every live executor has heartbeated again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.runs import Runs
from shared.tasks import stop_gracefully

log = logging.getLogger(__name__)


class LeaseSweeper:
    """Every interval, ends LOST (at most `batch` per round) the runs whose lease expired."""

    def __init__(
        self,
        runs: Runs,
        metrics: SchedulerMetrics,
        *,
        interval_s: float,
        start_delay_s: float,
        batch: int = 100,
    ) -> None:
        self._runs = runs
        self._metrics = metrics
        self._interval = interval_s
        self._start_delay = start_delay_s
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="lease-sweeper")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the run being ended, then stop."""
        self._stop.set()
        await stop_gracefully(self._task, timeout_s)

    async def _loop(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self._start_delay)
        while not self._stop.is_set():
            try:
                await self.sweep_once()
            except Exception:  # the next round tries again; leases are still in the table
                log.exception("lease sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    async def sweep_once(self) -> int:
        """One round; returns how many runs were ended LOST."""
        now = datetime.now(UTC)
        lost = 0
        while lost < self._batch and not self._stop.is_set():
            row = await self._runs.lose_expired(now)
            if row is None:
                break
            lost += 1
            self._metrics.lost.inc()
            log.warning("run %s LOST: %s", row.id, row.exit_message)
        return lost
