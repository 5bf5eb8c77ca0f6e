"""The lease sweeper: a background loop ending LOST the runs whose executor stopped
reporting (heartbeats, log chunks, state events) for longer than the lease.

Leases are set at dispatch and renewed by the run's events (Runs.renew_lease / apply); the
sweeper only reads them. Each lost run is ended in its own transaction by Runs.lose_expired
(FINISHED event through the outbox, run-end hooks: retry or dead letter), which is safe
with several scheduler replicas sweeping the same table.

The first sweep waits a lease plus the events' ack wait after start (server.py): leases in the
table are as old as the process's downtime, the heartbeats that renew them may still wait in
the stream, and events a killed predecessor held unacked come back after the ack wait; by
then the consumer has caught up and every live executor has heartbeated again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.runs import Runs
from shared.tasks import WakeableLoop

log = logging.getLogger(__name__)


class LeaseSweeper(WakeableLoop):
    """Every interval, ends LOST (at most `batch` per round) the runs whose lease expired."""

    name = "lease-sweeper"

    def __init__(
        self,
        runs: Runs,
        metrics: SchedulerMetrics,
        *,
        interval_s: float,
        start_delay_s: float,
        batch: int = 100,
        read_through: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        super().__init__(interval_s, start_delay_s=start_delay_s)
        self._read_through = read_through
        self._runs = runs
        self._metrics = metrics
        self._batch = batch

    async def step(self) -> int:
        return await self.sweep_once()

    async def sweep_once(self) -> int:
        """One round; returns how many runs were ended LOST. A lease is judged on the
        events this scheduler has read: while its event reader is behind (a burst), the
        cutoff is the time of the last event it applied, not now, so a run whose executor
        did report, in events not read yet, is not ended LOST."""
        now = datetime.now(UTC)
        behind = self._read_through()
        if behind is not None:
            now = min(now, behind)
        lost = 0
        while lost < self._batch and not self._stopping:
            row = await self._runs.lose_expired(now)
            if row is None:
                break
            lost += 1
            self._metrics.lost.inc()
            log.warning("run %s LOST: %s", row.id, row.exit_message)
        return lost
