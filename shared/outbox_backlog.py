"""The outbox's backlog as Prometheus gauges: events committed and not yet published.

Measured off the hot path by a loop that counts the table's unsent rows every few seconds
(one indexed query on published_at), so the gauges move even when the relay is stuck: a
NATS outage, a relay that keeps failing, or a burst it has not caught up with. Rows sent but
not yet marked (the relay marks in the background within a fraction of a second) count too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.sampler import Sampler


class OutboxBacklog:
    """Keeps runbox_<service>_outbox_unsent_events and ..._oldest_unsent_age_seconds fresh."""

    def __init__(
        self,
        table: Table,
        sessions: async_sessionmaker[AsyncSession],
        registry: CollectorRegistry,
        service: str,
        *,
        interval_s: float = 5.0,
    ) -> None:
        self._table = table
        self._sessions = sessions
        self.unsent = Gauge(
            f"runbox_{service}_outbox_unsent_events",
            "Events committed to the outbox and not yet published to JetStream.",
            registry=registry,
        )
        self.oldest_age = Gauge(
            f"runbox_{service}_outbox_oldest_unsent_age_seconds",
            "Age of the oldest unsent outbox event (0 when none waits).",
            registry=registry,
        )
        self._sampler = Sampler(self.measure, name="outbox-backlog", interval_s=interval_s)

    async def measure(self) -> tuple[int, float]:
        """Count the unsent rows once and set the gauges; (unsent, oldest age in seconds)."""
        table = self._table
        async with self._sessions() as session:
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(table.c.created_at)).where(
                        table.c.published_at.is_(None)
                    )
                )
            ).one()
        age = 0.0
        if oldest is not None:
            if oldest.tzinfo is None:  # SQLite keeps no zone: stored as UTC
                oldest = oldest.replace(tzinfo=UTC)
            age = max((datetime.now(UTC) - oldest).total_seconds(), 0.0)
        self.unsent.set(int(count))
        self.oldest_age.set(age)
        return int(count), age

    def start(self) -> None:
        self._sampler.start()

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self._sampler.stop(timeout_s)
