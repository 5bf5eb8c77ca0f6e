"""Alert rules: create, read, list, update, delete with validation naming every
bad field; and what the engine reads them through: `active_rules` (enabled rules
with their enabled channels, secrets included) and `RuleCache`.

A new rule is always enabled (proto3 cannot tell an unset `enabled` from false);
disable it with an update naming `enabled`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import field_mask_pb2
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting import validation
from services.alerting.definitions import (
    RULE_OUTPUT_ONLY,
    channel_to_proto,
    check_key,
    get_row,
    locked_row,
    mask_paths,
    merge,
    request_digest,
    rule_to_proto,
    same_request,
    to_dict,
    user_rule,
    utcnow,
)
from services.alerting.models import ChannelRow, RuleRow, WatchRow
from services.alerting.paging import page
from shared.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument


@dataclass(frozen=True)
class LoadedChannel:
    """A channel as delivery sees it: with its secrets."""

    id: str
    name: str
    enabled: bool
    channel: pb.Channel


@dataclass(frozen=True)
class LoadedRule:
    """An enabled rule (proto, with id) and its enabled channels, in the rule's order.
    Channel ids whose channel is disabled or gone are left out."""

    id: str
    name: str
    rule: pb.Rule
    channels: tuple[LoadedChannel, ...]


async def active_rules(session: AsyncSession) -> list[LoadedRule]:
    """Every enabled rule with its enabled channels, oldest rule first."""
    rules = (
        await session.scalars(
            select(RuleRow)
            .where(RuleRow.enabled.is_(True))
            .order_by(RuleRow.created_at, RuleRow.id)
        )
    ).all()
    channel_rows = (
        await session.scalars(select(ChannelRow).where(ChannelRow.enabled.is_(True)))
    ).all()
    by_id = {
        row.id: LoadedChannel(row.id, row.name, row.enabled, channel_to_proto(row, secrets=True))
        for row in channel_rows
    }
    loaded = []
    for row in rules:
        rule = rule_to_proto(row)
        chosen = tuple(by_id[c] for c in rule.channel_ids if c in by_id)
        loaded.append(LoadedRule(row.id, row.name, rule, chosen))
    return loaded


class RuleCache:
    """Enabled rules and channels, reloaded after a change made through this
    process (invalidate(), called by Rules and Channels) and at least every
    ttl_s (changes made by another replica). `version` grows on each reload."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl_s
        self._clock = clock
        self._rules: list[LoadedRule] = []
        self._loaded_at: float | None = None
        self._changes = 0  # invalidate() calls so far
        self.version = 0
        # Called after invalidate(): e.g. the dead-man's switch loop re-reads its watches.
        self.on_change: list[Callable[[], None]] = []

    def invalidate(self) -> None:
        self._loaded_at = None
        self._changes += 1
        for hook in self.on_change:
            hook()

    async def rules(self) -> Sequence[LoadedRule]:
        """The enabled rules, from the cache while it is fresh. A change made while they
        were being read may be missing from what was read: then the next call reads again
        (marking that read fresh would hide the change for a whole ttl)."""
        now = self._clock()
        if self._loaded_at is None or now - self._loaded_at >= self._ttl:
            changes = self._changes
            async with self._sessions() as session:
                self._rules = await active_rules(session)
            self._loaded_at = now if changes == self._changes else None
            self.version += 1
        return self._rules


class Rules:
    """The rule table's operations."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cache: RuleCache,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._cache = cache
        self._clock = clock

    async def create(self, request: pb.CreateRuleRequest, *, actor: str) -> RuleRow:
        """Validate and store an enabled rule; a retried idempotency key returns the first."""
        key = request.idempotency_key
        check_key(key)
        rule = user_rule(request.rule)
        validation.check_rule(rule)
        validation.fill_rule_defaults(rule)
        digest = request_digest(rule)
        if key and (existing := await self._by_key(key)) is not None:
            same_request("rule", existing, digest)
            return existing
        now = self._clock()
        row = RuleRow(
            id=uuid.uuid4().hex,
            name=rule.name,
            definition=to_dict(rule),
            enabled=True,
            idempotency_key=key or None,
            request_sha256=digest,
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._sessions() as session, session.begin():
                await check_channels(session, rule.channel_ids, "rule.channel_ids")
                session.add(row)
        except IntegrityError:
            existing = await self._by_key(key) if key else None
            if existing is None:
                raise AlreadyExists(f"a rule named {rule.name!r} already exists") from None
            same_request("rule", existing, digest)
            return existing
        self._cache.invalidate()
        return row

    async def _by_key(self, key: str) -> RuleRow | None:
        async with self._sessions() as session:
            return await session.scalar(select(RuleRow).where(RuleRow.idempotency_key == key))

    async def get(self, rule_id: str) -> RuleRow:
        return await get_row(self._sessions, RuleRow, "rule", rule_id)

    async def list(self, page_size: int, page_token: str) -> tuple[list[RuleRow], str]:
        """Newest first, keyset cursor on (created_at, id)."""
        query = select(RuleRow)
        async with self._sessions() as session:
            return await page(session, query, RuleRow.created_at, RuleRow.id, page_size, page_token)

    async def update(self, request: pb.UpdateRuleRequest) -> RuleRow:
        """Apply the masked fields, validate the result as a whole, store it."""
        if not request.rule.id:
            raise InvalidArgument.field("rule.id", "rule id is required")
        paths = mask_paths(request.update_mask, pb.Rule.DESCRIPTOR, RULE_OUTPUT_ONLY, "Rule")
        current = await self.get(request.rule.id)
        merged = rule_to_proto(current)
        merge(merged, request.rule, paths)
        enabled = merged.enabled
        rule = user_rule(merged)
        validation.check_rule(rule)
        validation.fill_rule_defaults(rule)
        try:
            async with self._sessions() as session, session.begin():
                row = await locked_row(session, RuleRow, "rule", current.id)
                await check_channels(session, rule.channel_ids, "rule.channel_ids")
                row.name, row.definition, row.enabled = rule.name, to_dict(rule), enabled
                row.updated_at = self._clock()
        except IntegrityError:
            raise AlreadyExists(f"a rule named {rule.name!r} already exists") from None
        self._cache.invalidate()
        return row

    async def set_enabled(self, rule_id: str, enabled: bool) -> RuleRow:
        request = pb.UpdateRuleRequest(
            rule=pb.Rule(id=rule_id, enabled=enabled),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
        return await self.update(request)

    async def delete(self, rule_id: str) -> str:
        """Delete a rule and its dead-man's switch watches; its alerts stay as history."""
        async with self._sessions() as session, session.begin():
            row = await locked_row(session, RuleRow, "rule", rule_id)
            await session.delete(row)
            await session.execute(delete(WatchRow).where(WatchRow.rule_id == rule_id))
        self._cache.invalidate()
        return rule_id


async def check_channels(session: AsyncSession, ids: Sequence[str], field: str) -> None:
    """Every id names a channel; the rows are locked so a concurrent delete waits."""
    if not ids:
        return
    found = set(
        (
            await session.scalars(
                select(ChannelRow.id).where(ChannelRow.id.in_(list(ids))).with_for_update()
            )
        ).all()
    )
    missing = [
        FieldViolation(f"{field}[{i}]", f"no channel with id {c!r}")
        for i, c in enumerate(ids)
        if c not in found
    ]
    if missing:
        raise FailedPrecondition(
            f"{len(missing)} channel(s) of the rule do not exist: create them first", missing
        )
