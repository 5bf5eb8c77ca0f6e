"""Applies RunEvents from JetStream (durable consumer "scheduler")."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from runbox.events.v1 import events_pb2
from services.scheduler.firing import FiresFirst
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.runs import Runs
from shared.telemetry import run_id_var

log = logging.getLogger(__name__)


class RunEventHandler:
    """Idempotent and forward-only: redelivered or old events change nothing."""

    def __init__(
        self,
        runs: Runs,
        metrics: SchedulerMetrics,
        *,
        first: FiresFirst | None = None,
        hold_finished_file: str = "",
    ) -> None:
        self._runs = runs
        # The counters' children, looked up once (not a labels() call per event).
        self._applied = metrics.events.labels("applied")
        self._ignored = metrics.events.labels("ignored")
        self._invalid = metrics.events.labels("invalid")
        self._first = first or FiresFirst()
        self._hold_file = hold_finished_file

    async def _hold_if_finished(self, events: list[events_pb2.RunEvent]) -> None:
        """TEST ONLY (setting fault_hold_finished_file, empty by default): on the first
        FINISHED event, write its run id to that file and never apply it nor ack it, so a
        test can kill -9 the process between a FINISHED event's delivery and its apply."""
        finished = [e.run_id for e in events if e.type == events_pb2.RUN_EVENT_TYPE_FINISHED]
        if not self._hold_file or not finished:
            return
        log.warning("fault injection: holding FINISHED of %s unapplied", finished)
        await asyncio.to_thread(Path(self._hold_file).write_text, "\n".join(finished))
        await asyncio.Event().wait()  # until the process is killed

    async def __call__(self, msg: Msg) -> None:
        try:
            event = events_pb2.RunEvent.FromString(msg.data)
        except DecodeError:
            log.warning("undecodable run event on %s; dropped", msg.subject)
            self._invalid.inc()
            return
        run_id_var.set(event.run_id)
        await self._hold_if_finished([event])
        changed = await self._runs.apply(event)
        (self._applied if changed else self._ignored).inc()

    async def many(self, messages: list[Msg]) -> None:
        """A fetched batch in one transaction (the consumer falls back to one message at a
        time if it fails, so one bad event never holds up the rest)."""
        events: list[events_pb2.RunEvent] = []
        for msg in messages:
            try:
                events.append(events_pb2.RunEvent.FromString(msg.data))
            except DecodeError:
                log.warning("undecodable run event on %s; dropped", msg.subject)
                self._invalid.inc()
        await self.events(events)

    async def events(self, events: list[events_pb2.RunEvent]) -> None:
        """Decoded events in one transaction: a fetched batch, or what the run links
        (services/scheduler/link.py) delivered meanwhile."""
        await self._first.wait()
        await self._hold_if_finished(events)
        for changed in await self._runs.apply_many(events):
            (self._applied if changed else self._ignored).inc()
