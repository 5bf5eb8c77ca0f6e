"""The delivery worker: sends the PENDING/RETRYING delivery rows the consumer recorded,
one attempt at a time, until each is DELIVERED or DEAD_LETTERED.

- Claim: due rows (next_attempt_at passed) are claimed by moving next_attempt_at past a
  lease (`claim_s`) and counting the attempt, in one transaction (FOR UPDATE SKIP LOCKED
  on servers, so replicas share the work). A worker that dies mid-send leaves the row
  claimed; it is sent again once the lease ends (at least once: receivers dedup on
  X-Runbox-Delivery, the delivery id).
- Bounded: at most `concurrency` sends in flight, and at most `per_channel` per channel,
  so a slow or failing channel holds only its own slots; each send also has an outer
  timeout. Rows of a channel at its limit stay unclaimed for others to take.
- Retries: a retryable failure sets RETRYING with next_attempt_at = now + an exponential
  backoff with jitter (tenacity's wait functions, at least the receiver's
  Retry-After); a permanent one, or the last of max_attempts, DEAD_LETTERED (listed by
  ListDeliveries, re-queued by RetryDelivery). A channel deleted or disabled meanwhile
  dead-letters its deliveries (RetryDelivery sends them once it is back).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from opentelemetry import trace
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import AsyncRetrying, RetryCallState, wait_exponential, wait_random

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting import channels
from services.alerting.channels import ChannelPolicy, DeliveryError, Notification
from services.alerting.channels.notification import TRACE_KEY
from services.alerting.config import DeliverySettings
from services.alerting.metrics import AlertingMetrics
from services.alerting.models import ChannelRow, DeliveryRow
from services.alerting.store import channel_to_proto
from shared.tasks import WakeableLoop
from shared.telemetry import current_span, extract_context, has_context, tracer_of

log = logging.getLogger(__name__)

DUE = (pb.DELIVERY_STATE_PENDING, pb.DELIVERY_STATE_RETRYING)
ERROR_LIMIT = 1_000
Send = Callable[[pb.Channel, Notification, ChannelPolicy], Awaitable[None]]


_RETRYING = AsyncRetrying()


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Delay after attempt `attempt`: initial * 2^(attempt-1) plus up to `initial` of
    random jitter, at most max (tenacity's wait_exponential + wait_random)."""
    state = RetryCallState(retry_object=_RETRYING, fn=None, args=(), kwargs={})
    state.attempt_number = max(attempt, 1)
    wait = wait_exponential(multiplier=initial_s, max=max_s) + wait_random(0, initial_s)
    return min(float(wait(state)), max_s)


@dataclass(frozen=True)
class Claimed:
    """A claimed delivery, detached from its session."""

    id: str
    channel_id: str
    attempts: int
    max_attempts: int
    payload: dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


class DeliveryWorker(WakeableLoop):
    """Claims due deliveries and sends them through their channels."""

    name = "delivery"

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        metrics: AlertingMetrics,
        policy: ChannelPolicy,
        settings: DeliverySettings,
        send: Send | None = None,
        clock: Callable[[], datetime] = _now,
        tracer: trace.Tracer | None = None,
    ) -> None:
        super().__init__(settings.poll_s)
        self._tracer = tracer or tracer_of(None, __name__)
        self._sessions = sessions
        self._metrics = metrics
        self._policy = policy
        self._settings = settings
        # One HTTP client for every webhook send (connections reused); closed on stop.
        self._http: httpx.AsyncClient | None = None
        self._send = send or self._send_shared
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: Counter[str] = Counter()
        # Outer bound of one send: the channels time out themselves well before it.
        self._timeout_s = max(policy.webhook_max_timeout_s, policy.smtp_timeout_s * 4) + 5.0

    async def _send_shared(
        self, channel: pb.Channel, notification: Notification, policy: ChannelPolicy
    ) -> None:
        if self._http is None:
            self._http = channels.new_http_client(policy)
        await channels.send(channel, notification, policy, http=self._http)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def step(self) -> int:
        free = self._settings.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        for row in await self.claim(min(free, self._settings.batch)):
            self._busy[row.channel_id] += 1
            task = asyncio.create_task(self._attempt(row), name=f"delivery:{row.id}")
            self._tasks.add(task)
            task.add_done_callback(self._done(row.channel_id))
        self._metrics.deliveries_in_flight.set(len(self._tasks))
        return 0  # finished sends wake the loop (notify) when they free a slot

    def _done(self, channel_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._busy[channel_id] -= 1
            if self._busy[channel_id] <= 0:
                del self._busy[channel_id]
            self._metrics.deliveries_in_flight.set(len(self._tasks))
            if not task.cancelled() and task.exception() is not None:
                log.error("delivery task failed", exc_info=task.exception())
            self.notify()

        return done

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming; give sends in flight drain_s, then cut them off (their rows stay
        claimed and are sent again after the lease)."""
        await super().stop(timeout_s)
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._settings.drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def claim(self, limit: int) -> Sequence[Claimed]:
        """Claim up to `limit` due rows, leaving channels at their in-flight limit alone."""
        now = self._clock()
        per_channel = self._settings.per_channel
        full = [c for c, n in self._busy.items() if n >= per_channel]
        query = (
            select(DeliveryRow)
            .where(DeliveryRow.state.in_(DUE), DeliveryRow.next_attempt_at <= now)
            .order_by(DeliveryRow.next_attempt_at, DeliveryRow.id)
            .limit(limit * 4)
        )
        if full:
            query = query.where(DeliveryRow.channel_id.not_in(full))
        picked: list[Claimed] = []
        taken = Counter(self._busy)
        async with self._sessions() as session, session.begin():
            if session.get_bind().dialect.name != "sqlite":
                query = query.with_for_update(skip_locked=True)
            for row in (await session.scalars(query)).all():
                if len(picked) >= limit or taken[row.channel_id] >= per_channel:
                    continue
                taken[row.channel_id] += 1
                row.attempts += 1
                row.next_attempt_at = now + timedelta(seconds=self._settings.claim_s)
                row.updated_at = now
                picked.append(
                    Claimed(row.id, row.channel_id, row.attempts, row.max_attempts, row.payload)
                )
        return picked

    async def _attempt(self, row: Claimed) -> None:
        """One attempt of one delivery, and its outcome recorded: a span in the trace of the
        event whose evaluation queued it (none for a delivery queued outside a trace)."""
        carrier = row.payload.get(TRACE_KEY)
        if not isinstance(carrier, dict) or not has_context(carrier):
            await self._attempt_once(row)
            return
        attributes: dict[str, str | int] = {
            "runbox.delivery.id": row.id,
            "runbox.delivery.attempt": row.attempts,
            "runbox.channel.id": row.channel_id,
            "runbox.alert.id": str(row.payload.get("alert_id", "")),
            "runbox.rule.id": str(row.payload.get("rule_id", "")),
        }
        with current_span(
            self._tracer,
            "alerting.deliver",
            context=extract_context(carrier),
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
        ):
            await self._attempt_once(row)

    async def _attempt_once(self, row: Claimed) -> None:
        channel = await self._channel(row.channel_id)
        kind = "unknown"
        if channel is None:
            await self._failed(row, kind, "channel was deleted", retryable=False)
            return
        kind = channel.WhichOneof("kind") or "unknown"
        trace.get_current_span().set_attribute("runbox.channel.kind", kind)
        if not channel.enabled:
            await self._failed(row, kind, "channel is disabled", retryable=False)
            return
        notification = Notification.from_dict(row.payload)
        try:
            await asyncio.wait_for(self._send(channel, notification, self._policy), self._timeout_s)
        except DeliveryError as exc:
            trace.get_current_span().set_status(trace.StatusCode.ERROR, "delivery failed")
            await self._failed(row, kind, exc.message, exc.retryable, exc.retry_after_s)
        except TimeoutError:
            await self._failed(row, kind, f"no answer within {self._timeout_s:g}s", True)
        except Exception as exc:
            log.exception("delivery %s: channel %s raised", row.id, row.channel_id)
            await self._failed(row, kind, f"unexpected error: {type(exc).__name__}", True)
        else:
            await self._delivered(row, kind, notification.occurred_at)

    async def _channel(self, channel_id: str) -> pb.Channel | None:
        async with self._sessions() as session:
            found = await session.get(ChannelRow, channel_id)
            return channel_to_proto(found, secrets=True) if found is not None else None

    async def _record(self, row: Claimed, **values: Any) -> bool:
        """Write an outcome unless the row changed hands meanwhile (RetryDelivery)."""
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(
                update(DeliveryRow)
                .where(
                    DeliveryRow.id == row.id,
                    DeliveryRow.state.in_(DUE),
                    DeliveryRow.attempts == row.attempts,
                )
                .values(updated_at=self._clock(), **values)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)

    async def _delivered(self, row: Claimed, kind: str, occurred_at: datetime) -> None:
        now = self._clock()
        await self._record(
            row,
            state=pb.DELIVERY_STATE_DELIVERED,
            delivered_at=now,
            next_attempt_at=None,
            last_error="",
        )
        self._metrics.deliveries.labels(kind, "delivered").inc()
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)
        latency = max((now - occurred_at).total_seconds(), 0.0)
        self._metrics.delivery_latency.labels(kind).observe(latency)

    async def _failed(
        self,
        row: Claimed,
        kind: str,
        error: str,
        retryable: bool,
        retry_after_s: float | None = None,
    ) -> None:
        now = self._clock()
        error = error[:ERROR_LIMIT]
        if retryable and row.attempts < row.max_attempts:
            delay = backoff_s(
                row.attempts, self._settings.backoff_initial_s, self._settings.backoff_max_s
            )
            delay = max(delay, min(retry_after_s or 0.0, self._settings.backoff_max_s))
            await self._record(
                row,
                state=pb.DELIVERY_STATE_RETRYING,
                next_attempt_at=now + timedelta(seconds=delay),
                last_error=error,
            )
            self._metrics.deliveries.labels(kind, "retrying").inc()
            log.info(
                "delivery %s attempt %d failed (%s); retry in %.1fs",
                row.id,
                row.attempts,
                error,
                delay,
            )
            return
        await self._record(
            row,
            state=pb.DELIVERY_STATE_DEAD_LETTERED,
            next_attempt_at=None,
            dead_lettered_at=now,
            last_error=error,
        )
        self._metrics.deliveries.labels(kind, "dead_lettered").inc()
        log.warning(
            "delivery %s dead-lettered after %d attempt(s): %s", row.id, row.attempts, error
        )
