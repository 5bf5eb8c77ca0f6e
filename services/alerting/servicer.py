"""AlertingService: proto <-> store translation only."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.alerting.v1 import alerting_pb2_grpc
from services.alerting.models import AlertRow, DeliveryRow, SilenceRow
from services.alerting.store import (
    AlertingStore,
    channel_to_proto,
    rule_to_proto,
    silence_selector,
    test_channel,
)
from shared.interceptors import current_principal

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def alert_to_proto(row: AlertRow) -> pb.Alert:
    return pb.Alert(
        id=row.id,
        rule_id=row.rule_id,
        group_key=row.group_key,
        state=row.state,  # type: ignore[arg-type]
        severity=row.severity,  # type: ignore[arg-type]
        summary=row.summary,
        script_name=row.script_name,
        schedule_id=row.schedule_id,
        run_id=row.run_id,
        occurrences=row.occurrences,
        first_seen=_ts(row.first_seen),
        last_seen=_ts(row.last_seen),
        acknowledged_by=row.acknowledged_by,
        acknowledge_time=_ts(row.acknowledged_at),
        resolve_time=_ts(row.resolved_at),
        resolved_by=row.resolved_by,
        comment=row.comment,
    )


def delivery_to_proto(row: DeliveryRow) -> pb.Delivery:
    """A delivery without its payload (the rendered message stays server-side)."""
    return pb.Delivery(
        id=row.id,
        alert_id=row.alert_id,
        channel_id=row.channel_id,
        rule_id=row.rule_id,
        kind=row.kind,
        state=row.state,  # type: ignore[arg-type]
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        last_error=row.last_error,
        create_time=_ts(row.created_at),
        deliver_time=_ts(row.delivered_at),
        next_attempt_time=_ts(row.next_attempt_at),
        dead_letter_time=_ts(row.dead_lettered_at),
    )


def silence_to_proto(row: SilenceRow) -> pb.Silence:
    return pb.Silence(
        id=row.id,
        selector=silence_selector(row),
        starts_at=_ts(row.starts_at),
        ends_at=_ts(row.ends_at),
        comment=row.comment,
        created_by=row.created_by,
        expire_time=_ts(row.expired_at),
        create_time=_ts(row.created_at),
    )


class AlertingServicer(alerting_pb2_grpc.AlertingServiceServicer):
    """Rules, channels, alerts, silences and deliveries over gRPC."""

    def __init__(self, store: AlertingStore, *, test_timeout_s: float) -> None:
        self._store = store
        self._test_timeout = test_timeout_s

    async def CreateRule(self, request: pb.CreateRuleRequest, context: Ctx) -> pb.Rule:
        row = await self._store.rules.create(request, actor=current_principal().name)
        return rule_to_proto(row)

    async def GetRule(self, request: pb.GetRuleRequest, context: Ctx) -> pb.Rule:
        return rule_to_proto(await self._store.rules.get(request.id))

    async def ListRules(self, request: pb.ListRulesRequest, context: Ctx) -> pb.ListRulesResponse:
        rows, token = await self._store.rules.list(request.page_size, request.page_token)
        return pb.ListRulesResponse(rules=[rule_to_proto(r) for r in rows], next_page_token=token)

    async def UpdateRule(self, request: pb.UpdateRuleRequest, context: Ctx) -> pb.Rule:
        return rule_to_proto(await self._store.rules.update(request))

    async def DeleteRule(
        self, request: pb.DeleteRuleRequest, context: Ctx
    ) -> pb.DeleteRuleResponse:
        return pb.DeleteRuleResponse(id=await self._store.rules.delete(request.id))

    async def CreateChannel(self, request: pb.CreateChannelRequest, context: Ctx) -> pb.Channel:
        row = await self._store.channels.create(request, actor=current_principal().name)
        return channel_to_proto(row)

    async def GetChannel(self, request: pb.GetChannelRequest, context: Ctx) -> pb.Channel:
        return channel_to_proto(await self._store.channels.get(request.id))

    async def ListChannels(
        self, request: pb.ListChannelsRequest, context: Ctx
    ) -> pb.ListChannelsResponse:
        rows, token = await self._store.channels.list(request.page_size, request.page_token)
        return pb.ListChannelsResponse(
            channels=[channel_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateChannel(self, request: pb.UpdateChannelRequest, context: Ctx) -> pb.Channel:
        return channel_to_proto(await self._store.channels.update(request))

    async def DeleteChannel(
        self, request: pb.DeleteChannelRequest, context: Ctx
    ) -> pb.DeleteChannelResponse:
        return pb.DeleteChannelResponse(id=await self._store.channels.delete(request.id))

    async def TestChannel(
        self, request: pb.TestChannelRequest, context: Ctx
    ) -> pb.TestChannelResponse:
        outcome = await test_channel(
            self._store.channels,
            request.id,
            policy=self._store.policy,
            timeout_s=self._test_timeout,
        )
        latency = duration_pb2.Duration()
        latency.FromNanoseconds(int(outcome.latency_s * 1e9))
        return pb.TestChannelResponse(
            delivered=outcome.delivered,
            error=outcome.error,
            latency=latency,
            retryable=outcome.retryable,
        )

    async def ListAlerts(
        self, request: pb.ListAlertsRequest, context: Ctx
    ) -> pb.ListAlertsResponse:
        rows, token = await self._store.alerts.list(request)
        return pb.ListAlertsResponse(
            alerts=[alert_to_proto(r) for r in rows], next_page_token=token
        )

    async def GetAlert(self, request: pb.GetAlertRequest, context: Ctx) -> pb.Alert:
        return alert_to_proto(await self._store.alerts.get(request.id))

    async def AcknowledgeAlert(self, request: pb.AcknowledgeAlertRequest, context: Ctx) -> pb.Alert:
        row = await self._store.alerts.acknowledge(
            request.id, request.comment, actor=current_principal().name
        )
        return alert_to_proto(row)

    async def ResolveAlert(self, request: pb.ResolveAlertRequest, context: Ctx) -> pb.Alert:
        row = await self._store.alerts.resolve(
            request.id, request.comment, actor=current_principal().name
        )
        return alert_to_proto(row)

    async def CreateSilence(self, request: pb.CreateSilenceRequest, context: Ctx) -> pb.Silence:
        row = await self._store.silences.create(request, actor=current_principal().name)
        return silence_to_proto(row)

    async def ListSilences(
        self, request: pb.ListSilencesRequest, context: Ctx
    ) -> pb.ListSilencesResponse:
        rows, token = await self._store.silences.list(
            request.page_size, request.page_token, include_expired=request.include_expired
        )
        return pb.ListSilencesResponse(
            silences=[silence_to_proto(r) for r in rows], next_page_token=token
        )

    async def ExpireSilence(self, request: pb.ExpireSilenceRequest, context: Ctx) -> pb.Silence:
        return silence_to_proto(await self._store.silences.expire(request.id))

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Ctx
    ) -> pb.ListDeliveriesResponse:
        rows, token = await self._store.deliveries.list(request)
        return pb.ListDeliveriesResponse(
            deliveries=[delivery_to_proto(r) for r in rows], next_page_token=token
        )

    async def RetryDelivery(self, request: pb.RetryDeliveryRequest, context: Ctx) -> pb.Delivery:
        return delivery_to_proto(await self._store.deliveries.retry(request.id))
