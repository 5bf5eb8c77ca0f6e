"""The alerting side of the event stream: every lifecycle event, once per event id
(durable consumer "alerting"), evaluated against the enabled rules.

One transaction per message (or per fetched batch, `many`) holds the processed event
id, the run history, the alerts and the PENDING delivery rows it makes: a redelivered
event finds its id and changes nothing; a crash before the commit leaves no trace and
the event comes back. Messages that are not usable events are logged, counted and
acknowledged so they never block the stream; a failing rule or template is logged,
counted and skipped (the other rules still see the event); a database failure raises,
so the event comes back. In flight: at most the consumer's batch per fetch and
4 x batch unacknowledged (max_ack_pending)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.events.v1 import events_pb2
from services.alerting.deadman import record_success
from services.alerting.engine import ScriptTags, occurrence_of
from services.alerting.events import Event, InvalidEvent, describe, parse
from services.alerting.metrics import AlertingMetrics
from services.alerting.models import ProcessedEvent
from services.alerting.notices import Effects, Notices
from services.alerting.store import LoadedRule, RuleCache
from shared.consumer_lag import ConsumerLag
from shared.jetstream import consume_context
from shared.telemetry import RUN_ID, SCRIPT_NAME, current_span, run_id_var

log = logging.getLogger(__name__)


class EventRecorder:
    """Handler of the alerting consumer: parse, deduplicate by event id, evaluate rules."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        metrics: AlertingMetrics,
        prefix: str,
        tracer: trace.Tracer,
        rules: RuleCache,
        notices: Notices,
        tags: ScriptTags,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._prefix = prefix
        self._tracer = tracer
        self._rules = rules
        self.notices = notices
        self._tags = tags
        # Called after a commit that queued deliveries (wakes the delivery worker).
        self.on_queued = on_queued

    async def __call__(self, msg: Msg) -> None:
        self._observe_lag(msg)
        event = self._parse(msg)
        if event is None:
            return
        run_id = event.message.run_id if isinstance(event.message, events_pb2.RunEvent) else ""
        token = run_id_var.set(run_id)
        try:
            await self._apply([(event, msg.subject)])
        finally:
            run_id_var.reset(token)

    async def many(self, messages: list[Msg]) -> None:
        """A fetched batch in one transaction (if it fails, the consumer hands the messages
        to __call__ one by one, so one bad event never holds up the rest)."""
        if messages:
            self._observe_lag(messages[-1])
        parsed = [(e, m.subject) for m in messages if (e := self._parse(m)) is not None]
        await self._apply(parsed)

    def _parse(self, msg: Msg) -> Event | None:
        try:
            return parse(msg.subject, msg.data, msg.headers, self._prefix)
        except InvalidEvent as exc:
            self._metrics.events.labels(exc.kind, "invalid").inc()
            log.warning(
                "invalid event dropped",
                extra={"subject": msg.subject, "reason": exc.reason, "size": len(msg.data)},
            )
            return None

    async def _apply(self, items: Sequence[tuple[Event, str]]) -> None:
        """Record and evaluate the events in one transaction; count and log after it."""
        wanted = [(e, s) for e, s in items if not e.ignored]
        for event, _ in items:
            if event.ignored:
                self._metrics.events.labels(event.kind, "ignored").inc()
        if not wanted:
            return
        rules = await self._rules.rules()
        effects = Effects()
        results: list[tuple[Event, str]] = []
        now = datetime.now(UTC)
        async with self._sessions() as session, session.begin():
            ids = [e.event_id for e, _ in wanted]
            seen = set(
                await session.scalars(
                    select(ProcessedEvent.event_id).where(ProcessedEvent.event_id.in_(ids))
                )
            )
            for event, subject in wanted:
                if event.event_id in seen:
                    results.append((event, "duplicate"))
                    continue
                seen.add(event.event_id)
                session.add(
                    ProcessedEvent(
                        event_id=event.event_id, kind=event.kind, subject=subject, received_at=now
                    )
                )
                await self._evaluate(session, event, rules, effects, now)
                results.append((event, "processed"))
        effects.apply(self._metrics)
        if effects.queued:
            self.on_queued()
        self._report(results)

    async def _evaluate(
        self,
        session: AsyncSession,
        event: Event,
        rules: Sequence[LoadedRule],
        effects: Effects,
        now: datetime,
    ) -> None:
        if isinstance(event.message, events_pb2.ScriptEvent):
            self._tags.forget(event.message.script_name)  # tags may have changed
            return
        occ = occurrence_of(event, now)
        if occ is None:
            return
        parent = consume_context(event.event_id)
        if parent is None:  # an event outside any trace
            await record_success(session, occ, now)
            await self.notices.handle(session, occ, rules, effects, now)
            return
        # In the event's trace (its consume span; in a batch, each event its own), so the
        # deliveries it queues carry that trace on to their sends.
        attributes: dict[str, str | int] = {
            RUN_ID: occ.run_id,
            SCRIPT_NAME: occ.script_name,
            "runbox.rules": len(rules),
        }
        with current_span(
            self._tracer, "alerting.evaluate", context=parent, attributes=attributes
        ) as span:
            queued = effects.queued
            await record_success(session, occ, now)
            await self.notices.handle(session, occ, rules, effects, now)
            span.set_attribute("runbox.deliveries_queued", effects.queued - queued)

    def _report(self, results: Sequence[tuple[Event, str]]) -> None:
        for event, result in results:
            self._metrics.events.labels(event.kind, result).inc()
            if result == "duplicate":
                log.debug("duplicate event %s skipped", event.event_id)
                continue
            log.info(
                "event received",
                extra={"kind": event.kind, "event_id": event.event_id, **describe(event.message)},
            )

    def _observe_lag(self, msg: Msg) -> None:
        # The delivery metadata says how many messages still wait behind this one.
        with contextlib.suppress(Exception):
            self._metrics.lag.set(msg.metadata.num_pending)


class LagMonitor(ConsumerLag):
    """Polls the alerting consumer's num_pending into runbox_alerting_consumer_lag_messages,
    so the gauge moves even while no message is delivered."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        metrics: AlertingMetrics,
        interval_s: float,
    ) -> None:
        super().__init__(
            js, stream=stream, durable=durable, gauge=metrics.lag, interval_s=interval_s
        )
