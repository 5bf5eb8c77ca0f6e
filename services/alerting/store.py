"""The alerting store: rules (rules.py), channels (here), silences
(silences.py), alerts and deliveries (alerts.py), built together by
AlertingStore.build, plus TestChannel.

Definitions are stored as proto JSON (user-set fields only); the columns beside
them are what queries filter on and what the server sets. Channel secrets
(email password, webhook signing secret) are stored, read by delivery, and never
returned: API replies go through `channel_to_proto(row)`, which redacts them.
A new channel is always enabled; disable it with an update naming `enabled`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting import channels as kinds
from services.alerting import validation
from services.alerting.alerts import Alerts, Deliveries
from services.alerting.definitions import (
    CHANNEL_OUTPUT_ONLY,
    SECRETS,
    channel_to_proto,
    check_key,
    get_row,
    locked_row,
    log,
    mask_paths,
    merge,
    request_digest,
    rule_to_proto,
    same_request,
    silence_selector,
    to_dict,
    user_channel,
    utcnow,
)
from services.alerting.models import ChannelRow, RuleRow
from services.alerting.paging import page
from services.alerting.rules import LoadedChannel, LoadedRule, RuleCache, Rules, active_rules
from services.alerting.silences import Silences
from shared.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument

__all__ = [
    "AlertingStore",
    "Channels",
    "LoadedChannel",
    "LoadedRule",
    "RuleCache",
    "Rules",
    "Silences",
    "TestOutcome",
    "active_rules",
    "channel_to_proto",
    "rule_to_proto",
    "silence_selector",
    "test_channel",
]


class Channels:
    """The channel table's operations; policy is the deployment's ChannelPolicy."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cache: RuleCache,
        policy: kinds.ChannelPolicy,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._cache = cache
        self._policy = policy
        self._clock = clock

    async def check(self, channel: pb.Channel) -> None:
        """Name and kind here, the kind's fields (URL allow-list, addresses, ...) by channels."""
        bad: list[FieldViolation] = []
        validation.check_text(
            bad, "channel.name", channel.name, limit=validation.NAME_MAX, required=True
        )
        if channel.WhichOneof("kind") is None:
            bad.append(FieldViolation("channel.kind", "set exactly one of: email, webhook"))
        else:
            try:
                await kinds.validate_channel(channel, self._policy)
            except InvalidArgument as exc:
                bad.extend(
                    FieldViolation(
                        v.field if v.field.startswith("channel.") else f"channel.{v.field}",
                        v.description,
                    )
                    for v in exc.violations or [FieldViolation("kind", exc.message)]
                )
        if bad:
            raise InvalidArgument(f"channel is invalid: {bad[0].field}: {bad[0].description}", bad)

    async def create(self, request: pb.CreateChannelRequest, *, actor: str) -> ChannelRow:
        key = request.idempotency_key
        check_key(key)
        channel = user_channel(request.channel)
        await self.check(channel)
        digest = request_digest(channel)
        if key and (existing := await self._by_key(key)) is not None:
            same_request("channel", existing, digest)
            return existing
        now = self._clock()
        row = ChannelRow(
            id=uuid.uuid4().hex,
            name=channel.name,
            kind=channel.WhichOneof("kind") or "",
            definition=to_dict(channel),
            enabled=True,
            idempotency_key=key or None,
            request_sha256=digest,
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
        except IntegrityError:
            existing = await self._by_key(key) if key else None
            if existing is None:
                raise AlreadyExists(f"a channel named {channel.name!r} already exists") from None
            same_request("channel", existing, digest)
            return existing
        self._cache.invalidate()
        return row

    async def _by_key(self, key: str) -> ChannelRow | None:
        async with self._sessions() as session:
            return await session.scalar(select(ChannelRow).where(ChannelRow.idempotency_key == key))

    async def get(self, channel_id: str) -> ChannelRow:
        return await get_row(self._sessions, ChannelRow, "channel", channel_id)

    async def list(self, page_size: int, page_token: str) -> tuple[list[ChannelRow], str]:
        query = select(ChannelRow)
        async with self._sessions() as session:
            return await page(
                session, query, ChannelRow.created_at, ChannelRow.id, page_size, page_token
            )

    async def update(self, request: pb.UpdateChannelRequest) -> ChannelRow:
        """Apply the masked fields. A secret left empty keeps the stored one, unless
        the mask names the secret itself (`webhook.signing_secret`): that clears it."""
        if not request.channel.id:
            raise InvalidArgument.field("channel.id", "channel id is required")
        paths = mask_paths(
            request.update_mask, pb.Channel.DESCRIPTOR, CHANNEL_OUTPUT_ONLY, "Channel"
        )
        current = await self.get(request.channel.id)
        stored = channel_to_proto(current, secrets=True)
        merged = pb.Channel()
        merged.CopyFrom(stored)
        merge(merged, request.channel, paths)
        for kind, secret in SECRETS:
            if merged.WhichOneof("kind") != kind:
                continue
            target = getattr(merged, kind)
            if f"{kind}.{secret}" in paths:  # named: set to what was sent, "" clears it
                setattr(target, secret, getattr(getattr(request.channel, kind), secret))
            elif not getattr(target, secret) and stored.WhichOneof("kind") == kind:
                setattr(target, secret, getattr(getattr(stored, kind), secret))
        if merged.HasField("webhook") and stored.HasField("webhook"):
            # Credential-like header values are redacted on the way out: an empty one
            # sent back keeps the stored value (drop the header to remove it).
            for name, value in merged.webhook.headers.items():
                if not value and kinds.is_secret_header(name):
                    merged.webhook.headers[name] = stored.webhook.headers.get(name, "")
        enabled = merged.enabled
        channel = user_channel(merged)
        await self.check(channel)
        try:
            async with self._sessions() as session, session.begin():
                row = await locked_row(session, ChannelRow, "channel", current.id)
                row.name, row.kind = channel.name, channel.WhichOneof("kind") or ""
                row.definition, row.enabled = to_dict(channel), enabled
                row.updated_at = self._clock()
        except IntegrityError:
            raise AlreadyExists(f"a channel named {channel.name!r} already exists") from None
        self._cache.invalidate()
        return row

    async def delete(self, channel_id: str) -> str:
        """Delete a channel no rule uses; FailedPrecondition names the rules that do."""
        async with self._sessions() as session, session.begin():
            row = await locked_row(session, ChannelRow, "channel", channel_id)
            users = [
                rule
                for rule in (await session.scalars(select(RuleRow).order_by(RuleRow.name))).all()
                if channel_id in rule.definition.get("channel_ids", [])
            ]
            if users:
                raise FailedPrecondition(
                    f"channel {channel_id!r} is used by {len(users)} rule(s): "
                    + ", ".join(repr(r.name) for r in users[:10])
                    + "; remove it from them first",
                    [
                        FieldViolation(f"rules[{r.id}]", f"rule {r.name!r} notifies this channel")
                        for r in users
                    ],
                )
            await session.delete(row)
        self._cache.invalidate()
        return channel_id


@dataclass(frozen=True)
class TestOutcome:
    """What TestChannel reports: delivered, or why not (never a secret)."""

    delivered: bool
    error: str
    latency_s: float
    retryable: bool


ERROR_MAX = 1_000


async def test_channel(
    channels: Channels, channel_id: str, *, policy: kinds.ChannelPolicy, timeout_s: float
) -> TestOutcome:
    """Send one test notification through a stored channel (enabled or not) and report
    the outcome. A channel the current policy refuses (say, its webhook host was taken
    off the allow-list) is FailedPrecondition with the fields; send failures come back
    in the outcome."""
    row = await channels.get(channel_id)
    channel = channel_to_proto(row, secrets=True)
    try:
        await channels.check(user_channel(channel))
    except InvalidArgument as exc:
        raise FailedPrecondition(
            f"channel {row.name!r} is not valid under the current policy: {exc.message}",
            exc.violations,
        ) from None
    notification = kinds.build_test_notification(channel, now=utcnow())
    started = time.perf_counter()
    try:
        await asyncio.wait_for(kinds.send(channel, notification, policy), timeout_s)
    except kinds.DeliveryError as exc:
        return TestOutcome(
            False, str(exc)[:ERROR_MAX], time.perf_counter() - started, exc.retryable
        )
    except TimeoutError:
        error = f"no answer within {timeout_s:g} s"
        return TestOutcome(False, error, time.perf_counter() - started, True)
    except Exception as exc:  # a channel bug must not become INTERNAL: report its type only
        log.warning(
            "test send failed unexpectedly",
            extra={"channel_id": row.id, "error": type(exc).__name__},
        )
        error = f"unexpected error ({type(exc).__name__})"
        return TestOutcome(False, error, time.perf_counter() - started, False)
    return TestOutcome(True, "", time.perf_counter() - started, False)


@dataclass
class AlertingStore:
    """Everything the API and the engine read and write, built once in server.py."""

    cache: RuleCache
    rules: Rules
    channels: Channels
    silences: Silences
    alerts: Alerts
    deliveries: Deliveries
    policy: kinds.ChannelPolicy
    sessions: async_sessionmaker[AsyncSession]

    @classmethod
    def build(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        policy: kinds.ChannelPolicy,
        *,
        rules_cache_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> AlertingStore:
        cache = RuleCache(sessions, ttl_s=rules_cache_s)
        return cls(
            cache=cache,
            rules=Rules(sessions, cache, clock=clock),
            channels=Channels(sessions, cache, policy, clock=clock),
            silences=Silences(sessions, clock=clock),
            alerts=Alerts(sessions, clock=clock),
            deliveries=Deliveries(sessions, clock=clock),
            policy=policy,
            sessions=sessions,
        )
