"""Child processes started ahead of demand for the runners of this machine (the local
backend's agent, the local execution type's rlimit shim).

Starting a Python interpreter costs tens of milliseconds (more on a busy machine), which
used to sit on every run's path. A warm process is that interpreter already started,
blocked on its stdin, holding nothing of any run: it learns its job from the one line it
is sent. A run takes an idle one (or starts one when none is idle) and the pool starts
its replacement in the background; each process serves one run and is never reused."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
P = TypeVar("P")


class WarmProcesses(Generic[P]):
    """Up to `size` idle processes made by `start`; `size` 0 starts every one on demand."""

    def __init__(
        self,
        size: int,
        *,
        start: Callable[[], Awaitable[P]],
        alive: Callable[[P], bool],
        discard: Callable[[P], Awaitable[None]],
    ) -> None:
        self._size = size
        self._start = start
        self._alive = alive
        self._discard = discard
        self._idle: deque[P] = deque()
        self._filler: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    def idle_processes(self) -> list[P]:
        return list(self._idle)

    async def take(self) -> P:
        """An idle process that is still alive, else a fresh one; either way the pool tops
        itself up in the background. Raises what `start` raises (OSError)."""
        while self._idle:
            proc = self._idle.popleft()
            if self._alive(proc):
                self._refill()
                return proc
            await self._discard(proc)  # died while idle (killed by someone): not handed out
        proc = await self._start()
        self._refill()
        return proc

    def _refill(self) -> None:
        if self._size and not self._closed and (self._filler is None or self._filler.done()):
            self._filler = asyncio.create_task(self._fill(), name="warm-processes")

    async def _fill(self) -> None:
        while not self._closed and len(self._idle) < self._size:
            try:
                proc = await self._start()
            except OSError as exc:  # the next run starts its own and says why if it fails
                log.warning("could not start a warm process: %s", exc)
                return
            if self._closed:
                await self._discard(proc)
                return
            self._idle.append(proc)

    async def close(self) -> None:
        """Stop filling and end every idle process."""
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
        while self._idle:
            await self._discard(self._idle.popleft())
