"""Stopping background loops without cutting them off mid-work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)


def being_cancelled() -> bool:
    """Whether the current task itself was asked to stop. A CancelledError that arrives
    without it came from something the task awaited (grpc.aio raises CancelledError for
    an RPC its peer cancelled; a shared future was cancelled): a background loop must
    survive that one, or it ends silently and its work stops."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop_gracefully(task: asyncio.Task[Any] | None, timeout_s: float) -> None:
    """Wait for a loop that was asked to stop to finish its current step;
    cancel it only if it does not within the timeout."""
    if task is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class WakeableLoop:
    """A background task that runs `step()` every `interval_s`, or as soon as `notify()` is
    called, or at once after a step that did some work (returned a true value, such as a
    positive count: a full batch may have left more waiting). A failing step is logged and
    the loop goes on (the next step retries from stored state); `stop()` lets the step in
    flight finish. `start_delay_s` holds the first step back (woken early only by stop)."""

    name = "loop"

    def __init__(self, interval_s: float, *, start_delay_s: float = 0.0) -> None:
        self._interval = interval_s
        self._start_delay = start_delay_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def step(self) -> object:
        raise NotImplementedError

    def notify(self) -> None:
        self._wake.set()

    def wait_s(self) -> float:
        """How long to wait for a notify() before the next step (the interval; a loop that
        knows when its next work is due can say sooner)."""
        return self._interval

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the step in flight, then stop."""
        self._stopping = True
        self._wake.set()
        await stop_gracefully(self._task, timeout_s)

    async def _loop(self) -> None:
        if self._start_delay:
            deadline = asyncio.get_running_loop().time() + self._start_delay
            while not self._stopping:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
                self._wake.clear()
        while not self._stopping:
            worked: object = False
            try:
                worked = await self.step()
            except asyncio.CancelledError:
                if being_cancelled():
                    raise
                log.warning("%s: step failed: a call it awaited was cancelled; retrying", self.name)
            except Exception:
                log.exception("%s: step failed; retrying", self.name)
            if self._stopping:
                return
            if worked:
                await asyncio.sleep(0)  # let the others in before the next step
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.wait_s())
            self._wake.clear()
