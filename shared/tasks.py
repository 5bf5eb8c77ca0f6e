"""Stopping background loops without cutting them off mid-work."""

from __future__ import annotations

import asyncio
from typing import Any


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
