"""A durable JetStream consumer's lag (num_pending) as a Prometheus gauge, polled from the
server so it moves even while nothing is delivered (a consumer stuck or behind)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from prometheus_client import Gauge

from shared.tasks import stop_gracefully

log = logging.getLogger(__name__)


class ConsumerLag:
    """Polls one durable consumer's num_pending into `gauge` every `interval_s`."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        gauge: Gauge,
        interval_s: float = 5.0,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._gauge = gauge
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def poll_once(self) -> int:
        """Read num_pending once and publish it; returns the value."""
        info = await self._js.consumer_info(self._stream, self._durable, timeout=2.0)
        pending = int(info.num_pending or 0)
        self._gauge.set(pending)
        return pending

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"lag:{self._durable}")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling. An event, not cancel(): on Python 3.11 a cancel that lands while a
        NATS request completes can be swallowed."""
        self._stopping.set()
        await stop_gracefully(self._task, timeout_s)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll_once()
            except Exception as exc:
                log.warning("consumer lag poll failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
