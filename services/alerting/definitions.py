"""Shared pieces of the alerting store: stored definitions <-> protos (secrets
only on request), update masks, idempotency keys, and row lookups that report
NotFound / InvalidArgument precisely."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import field_mask_pb2, json_format
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting import channels as kinds
from services.alerting.models import ChannelRow, RuleRow, SilenceRow
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound

log = logging.getLogger(__name__)


RULE_OUTPUT_ONLY = ("id", "create_time", "update_time")


CHANNEL_OUTPUT_ONLY = ("id", "create_time")


SECRETS = (("email", "password"), ("webhook", "signing_secret"))


KEY_MAX = 200


Row = TypeVar("Row", RuleRow, ChannelRow, SilenceRow)


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def request_digest(message: Message) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def stamp(message: Any, field: str, value: datetime | None) -> None:
    if value is not None:
        getattr(message, field).FromDatetime(value)


def rule_to_proto(row: RuleRow) -> pb.Rule:
    """A stored rule: its definition plus id, enabled and times."""
    rule = json_format.ParseDict(row.definition, pb.Rule(), ignore_unknown_fields=True)
    rule.id, rule.enabled = row.id, row.enabled
    stamp(rule, "create_time", row.created_at)
    stamp(rule, "update_time", row.updated_at)
    return rule


def channel_to_proto(row: ChannelRow, *, secrets: bool = False) -> pb.Channel:
    """A stored channel; its secrets only with secrets=True (delivery, never the API)."""
    channel = json_format.ParseDict(row.definition, pb.Channel(), ignore_unknown_fields=True)
    channel.id, channel.enabled = row.id, row.enabled
    stamp(channel, "create_time", row.created_at)
    return channel if secrets else kinds.redact(channel)


def silence_selector(row: SilenceRow) -> pb.Selector:
    return json_format.ParseDict(row.selector, pb.Selector(), ignore_unknown_fields=True)


def user_rule(rule: pb.Rule) -> pb.Rule:
    result = pb.Rule()
    result.CopyFrom(rule)
    for name in (*RULE_OUTPUT_ONLY, "enabled"):
        result.ClearField(name)  # type: ignore[arg-type]
    return result


def user_channel(channel: pb.Channel) -> pb.Channel:
    result = pb.Channel()
    result.CopyFrom(channel)
    for name in (*CHANNEL_OUTPUT_ONLY, "enabled"):
        result.ClearField(name)  # type: ignore[arg-type]
    return result


def mask_paths(
    mask: field_mask_pb2.FieldMask, descriptor: Any, output_only: Sequence[str], kind: str
) -> list[str]:
    if not mask.paths:
        raise InvalidArgument.field("update_mask", "name the fields to update")
    bad: list[FieldViolation] = []
    for i, path in enumerate(mask.paths):
        if path.split(".")[0] in output_only:
            bad.append(FieldViolation(f"update_mask.paths[{i}]", f"{path!r} is output only"))
        elif not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(descriptor):
            bad.append(FieldViolation(f"update_mask.paths[{i}]", f"no field {path!r} in {kind}"))
    if bad:
        raise InvalidArgument("update_mask is invalid", bad)
    return list(mask.paths)


def merge(current: Message, request: Message, paths: list[str]) -> None:
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(
        request, current, replace_message_field=True, replace_repeated_field=True
    )


def check_key(key: str) -> None:
    if len(key) > KEY_MAX:
        raise InvalidArgument.field("idempotency_key", f"must be at most {KEY_MAX} characters")


def same_request(kind: str, existing: Any, digest: str) -> None:
    if existing.request_sha256 != digest:
        raise FailedPrecondition(
            f"idempotency key already used for a different {kind} ({existing.id})",
            [FieldViolation("idempotency_key", "already used with another request")],
        )


async def get_row(
    sessions: async_sessionmaker[AsyncSession], model: type[Row], kind: str, ident: str
) -> Row:
    if not ident:
        raise InvalidArgument.field("id", f"{kind} id is required")
    async with sessions() as session:
        row = await session.get(model, ident)
    if row is None:
        raise NotFound(kind, ident)
    return row


async def locked_row(session: AsyncSession, model: type[Row], kind: str, ident: str) -> Row:
    if not ident:
        raise InvalidArgument.field("id", f"{kind} id is required")
    row = await session.get(model, ident, with_for_update=True)
    if row is None:
        raise NotFound(kind, ident)
    return row
