"""The alerting side of the event stream: every lifecycle event, once per
event id (durable consumer "alerting"). Rules and notifications build on
this; for now it records each event id and logs what it saw. Messages that
are not usable events are logged, counted and acknowledged so they never
block the stream; a database failure raises, so the event comes back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.events.v1 import events_pb2
from services.alerting.events import Event, InvalidEvent, describe, parse
from services.alerting.metrics import AlertingMetrics
from services.alerting.models import ProcessedEvent
from shared.tasks import stop_gracefully
from shared.telemetry import extract_context, run_id_var

log = logging.getLogger(__name__)


class EventRecorder:
    """Handler of the alerting consumer: parse, deduplicate by event id, log."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        metrics: AlertingMetrics,
        prefix: str,
        tracer: trace.Tracer,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._prefix = prefix
        self._tracer = tracer

    async def __call__(self, msg: Msg) -> None:
        self._observe_lag(msg)
        try:
            event = parse(msg.subject, msg.data, msg.headers, self._prefix)
        except InvalidEvent as exc:
            self._metrics.events.labels(exc.kind, "invalid").inc()
            log.warning(
                "invalid event dropped",
                extra={"subject": msg.subject, "reason": exc.reason, "size": len(msg.data)},
            )
            return
        run_id = event.message.run_id if isinstance(event.message, events_pb2.RunEvent) else ""
        token = run_id_var.set(run_id)
        try:
            with self._tracer.start_as_current_span(
                "alerting.consume", context=extract_context(msg.headers)
            ):
                await self._handle(event, msg.subject)
        finally:
            run_id_var.reset(token)

    async def _handle(self, event: Event, subject: str) -> None:
        if event.ignored:
            self._metrics.events.labels(event.kind, "ignored").inc()
            return
        if not await self._record(event, subject):
            self._metrics.events.labels(event.kind, "duplicate").inc()
            log.debug("duplicate event %s skipped", event.event_id)
            return
        self._metrics.events.labels(event.kind, "processed").inc()
        log.info(
            "event received",
            extra={"kind": event.kind, "event_id": event.event_id, **describe(event.message)},
        )

    async def _record(self, event: Event, subject: str) -> bool:
        """Insert the event id; False if it was already there (a redelivery)."""
        try:
            async with self._sessions() as session, session.begin():
                session.add(
                    ProcessedEvent(
                        event_id=event.event_id,
                        kind=event.kind,
                        subject=subject,
                        received_at=datetime.now(UTC),
                    )
                )
        except IntegrityError:
            return False
        return True

    def _observe_lag(self, msg: Msg) -> None:
        # The delivery metadata says how many messages still wait behind this one.
        with contextlib.suppress(Exception):
            self._metrics.lag.set(msg.metadata.num_pending)


class LagMonitor:
    """Polls the durable consumer's num_pending into the lag gauge, so the
    gauge moves even while no message is delivered."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        metrics: AlertingMetrics,
        interval_s: float,
    ) -> None:
        self._js = js
        self._stream = stream
        self._durable = durable
        self._metrics = metrics
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def poll_once(self) -> int:
        """Read num_pending once and publish it; returns the value."""
        info = await self._js.consumer_info(self._stream, self._durable, timeout=2.0)
        pending = int(info.num_pending or 0)
        self._metrics.lag.set(pending)
        return pending

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"lag:{self._durable}")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling. An event, not cancel(): on Python 3.11 a cancel that
        lands while a NATS request completes can be swallowed."""
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
