"""A durable JetStream consumer's lag (num_pending) as a Prometheus gauge, polled from the
server so it moves even while nothing is delivered (a consumer stuck or behind)."""

from __future__ import annotations

from nats.js import JetStreamContext
from prometheus_client import Gauge

from shared.sampler import Sampler


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
        # The sampler stops on an event, not cancel(): on Python 3.11 a cancel that lands
        # while a NATS request completes can be swallowed.
        self._sampler = Sampler(self.poll_once, name=f"lag:{durable}", interval_s=interval_s)

    async def poll_once(self) -> int:
        """Read num_pending once and publish it; returns the value."""
        info = await self._js.consumer_info(self._stream, self._durable, timeout=2.0)
        pending = int(info.num_pending or 0)
        self._gauge.set(pending)
        return pending

    async def start(self) -> None:
        self._sampler.start()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling."""
        await self._sampler.stop(timeout_s)
