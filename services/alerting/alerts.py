"""The read and operator side of alerts and deliveries: list with filters,
acknowledge, resolve, and put a failed delivery back in the queue. Creating
alerts and deliveries is the engine's (engine.py, delivery.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting.models import AlertRow, DeliveryRow
from services.alerting.paging import page
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound

AS = pb.AlertState
DS = pb.DeliveryState
COMMENT_MAX = 1_000


def _now() -> datetime:
    return datetime.now(UTC)


def _known(values: Sequence[int], field: str, valid: set[int]) -> None:
    bad = [
        FieldViolation(f"{field}[{i}]", f"unknown value {v}")
        for i, v in enumerate(values)
        if v not in valid
    ]
    if bad:
        raise InvalidArgument(f"{field} is invalid", bad)


def _comment(comment: str) -> str:
    if len(comment) > COMMENT_MAX:
        raise InvalidArgument.field("comment", f"must be at most {COMMENT_MAX} characters")
    return comment


class Alerts:
    """Alerts: list, get, acknowledge, resolve."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = _now
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        # Called with the alert after a manual resolve commits (the engine may send a notice).
        self.on_resolve: list[Callable[[AlertRow], object]] = []

    async def list(self, request: pb.ListAlertsRequest) -> tuple[list[AlertRow], str]:
        """Newest first (by first_seen), filtered by states, rule and script."""
        valid = set(AS.values()) - {pb.ALERT_STATE_UNSPECIFIED}
        _known(list(request.states), "states", valid)
        query = select(AlertRow)
        if request.states:
            query = query.where(AlertRow.state.in_(list(request.states)))
        if request.rule_id:
            query = query.where(AlertRow.rule_id == request.rule_id)
        if request.script_name:
            query = query.where(AlertRow.script_name == request.script_name)
        async with self._sessions() as session:
            return await page(
                session,
                query,
                AlertRow.first_seen,
                AlertRow.id,
                request.page_size,
                request.page_token,
            )

    async def get(self, alert_id: str) -> AlertRow:
        if not alert_id:
            raise InvalidArgument.field("id", "alert id is required")
        async with self._sessions() as session:
            row = await session.get(AlertRow, alert_id)
        if row is None:
            raise NotFound("alert", alert_id)
        return row

    async def acknowledge(self, alert_id: str, comment: str, *, actor: str) -> AlertRow:
        """FIRING -> ACKNOWLEDGED; acknowledging again returns it unchanged."""
        comment = _comment(comment)
        async with self._sessions() as session, session.begin():
            row = await _locked(session, alert_id)
            if row.state == pb.ALERT_STATE_RESOLVED:
                raise FailedPrecondition(
                    f"alert {alert_id!r} is resolved; only a firing alert can be acknowledged",
                    [FieldViolation("id", "alert is RESOLVED")],
                )
            if row.state == pb.ALERT_STATE_FIRING:
                row.state = pb.ALERT_STATE_ACKNOWLEDGED
                row.acknowledged_by, row.acknowledged_at = actor, self._clock()
                row.comment = comment or row.comment
        return row

    async def resolve(self, alert_id: str, comment: str, *, actor: str) -> AlertRow:
        """FIRING or ACKNOWLEDGED -> RESOLVED (a new occurrence opens a new alert);
        resolving again returns it unchanged."""
        comment = _comment(comment)
        async with self._sessions() as session, session.begin():
            row = await _locked(session, alert_id)
            if row.state == pb.ALERT_STATE_RESOLVED:
                return row
            row.state, row.open_key = pb.ALERT_STATE_RESOLVED, None
            row.resolved_by, row.resolved_at = actor, self._clock()
            row.comment = comment or row.comment
        for hook in self.on_resolve:
            hook(row)
        return row


async def _locked(session: AsyncSession, alert_id: str) -> AlertRow:
    if not alert_id:
        raise InvalidArgument.field("id", "alert id is required")
    row = await session.get(AlertRow, alert_id, with_for_update=True)
    if row is None:
        raise NotFound("alert", alert_id)
    return row


class Deliveries:
    """Deliveries: list (dead-lettered ones included) and retry."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = _now
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        # Called after a retry commits (the delivery worker wakes up early).
        self.on_retry: list[Callable[[], None]] = []

    async def list(self, request: pb.ListDeliveriesRequest) -> tuple[list[DeliveryRow], str]:
        """Newest first, filtered by states, channel and alert."""
        valid = set(DS.values()) - {pb.DELIVERY_STATE_UNSPECIFIED}
        _known(list(request.states), "states", valid)
        query = select(DeliveryRow)
        if request.states:
            query = query.where(DeliveryRow.state.in_(list(request.states)))
        if request.channel_id:
            query = query.where(DeliveryRow.channel_id == request.channel_id)
        if request.alert_id:
            query = query.where(DeliveryRow.alert_id == request.alert_id)
        async with self._sessions() as session:
            return await page(
                session,
                query,
                DeliveryRow.created_at,
                DeliveryRow.id,
                request.page_size,
                request.page_token,
            )

    async def retry(self, delivery_id: str) -> DeliveryRow:
        """DEAD_LETTERED or RETRYING -> PENDING now, attempts reset; a PENDING one is
        returned unchanged; a DELIVERED one is FailedPrecondition."""
        if not delivery_id:
            raise InvalidArgument.field("id", "delivery id is required")
        now = self._clock()
        async with self._sessions() as session, session.begin():
            row = await session.get(DeliveryRow, delivery_id, with_for_update=True)
            if row is None:
                raise NotFound("delivery", delivery_id)
            if row.state == pb.DELIVERY_STATE_DELIVERED:
                raise FailedPrecondition(
                    f"delivery {delivery_id!r} was delivered; there is nothing to retry",
                    [FieldViolation("id", "delivery is DELIVERED")],
                )
            if row.state != pb.DELIVERY_STATE_PENDING:
                row.state, row.attempts = pb.DELIVERY_STATE_PENDING, 0
                row.next_attempt_at, row.dead_lettered_at = now, None
                row.updated_at = now
        for hook in self.on_retry:
            hook()
        return row
