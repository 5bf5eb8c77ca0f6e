"""Runs not yet ended, by state, as a gauge: the scheduler's queue depth (PENDING: waiting
for an executor, a retry's time or a concurrency limit), QUEUED and RUNNING on executors.

Counted every few seconds on the runs' (state, priority, created_at) index, off the hot
path. Every replica counts the whole table: aggregate replicas with max(), not sum()."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import RunRow
from shared.sampler import Sampler

RS = common_pb2.RunState
ACTIVE = (RS.RUN_STATE_PENDING, RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING)


class RunBacklog:
    """Keeps runbox_scheduler_active_runs{state} fresh."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metrics: SchedulerMetrics,
        *,
        interval_s: float = 5.0,
    ) -> None:
        self._sessions = sessions
        self._gauge = metrics.active_runs
        self._sampler = Sampler(self.measure, name="run-backlog", interval_s=interval_s)

    async def measure(self) -> dict[str, int]:
        """Count the runs of each active state once and set the gauge."""
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(RunRow.state, func.count())
                    .where(RunRow.state.in_(ACTIVE))
                    .group_by(RunRow.state)
                )
            ).all()
        found = {int(state): int(count) for state, count in rows}
        counts = {
            RS.Name(state).removeprefix("RUN_STATE_").lower(): found.get(state, 0)
            for state in ACTIVE
        }
        for name, count in counts.items():
            self._gauge.labels(name).set(count)
        return counts

    def start(self) -> None:
        self._sampler.start()

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self._sampler.stop(timeout_s)
