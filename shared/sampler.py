"""A background loop that refreshes gauges from a measurement every few seconds: for
figures a scrape cannot read itself (a database count), kept off every request's path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from shared.tasks import stop_gracefully

log = logging.getLogger(__name__)


class Sampler:
    """Calls `measure` now and then every `interval_s` until stopped; a failed measurement
    is logged (by exception type only) and leaves the gauges at their last values."""

    def __init__(
        self, measure: Callable[[], Awaitable[Any]], *, name: str, interval_s: float = 5.0
    ) -> None:
        self._measure = measure
        self._name = name
        self._interval = interval_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        await stop_gracefully(self._task, timeout_s)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._measure()
            except Exception as exc:
                log.warning("%s not measured: %s", self._name, type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
