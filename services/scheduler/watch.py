"""In-process fan-out of run changes to WatchRun streams. Watchers also poll
the database, so a change applied by another replica is seen too."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.scheduler.models import RunRow


@dataclass(frozen=True)
class Dispatched:
    """An executor accepted the run: what the dispatch mark wrote to it if it was PENDING
    (run_store.dispatched_record)."""

    executor_id: str
    address: str
    at: datetime
    lease_expiry: datetime


@dataclass(frozen=True)
class Change:
    """Something happened to a run: its state changed, or output arrived. `row`, when set,
    is the run as the transaction that changed it committed it (no one else holds that
    object), and `dispatched` what the dispatch mark wrote, so a watcher need not read it
    back."""

    run_id: str
    log_stream: str = ""
    log_data: bytes = b""
    row: RunRow | None = None
    dispatched: Dispatched | None = None


class Watchers:
    """Per-run subscriber queues (bounded: a slow watcher drops log lines,
    never blocks event processing)."""

    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[Change]]] = defaultdict(set)

    def subscribe(self, run_id: str) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=1000)
        self._queues[run_id].add(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[Change]) -> None:
        queues = self._queues.get(run_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._queues[run_id]

    def notify(self, change: Change) -> None:
        for queue in self._queues.get(change.run_id, ()):
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                pass
