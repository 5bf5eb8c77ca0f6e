"""What a channel sends (Notification) and how one attempt fails (DeliveryError)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from runbox.alerting.v1 import alerting_pb2

Kind = Literal["firing", "resolved", "test"]
Severity = Literal["info", "warning", "critical"]
KINDS: frozenset[str] = frozenset({"firing", "resolved", "test"})
SEVERITIES: frozenset[str] = frozenset({"info", "warning", "critical"})
# The key of a delivery payload holding the W3C trace context of the evaluation that queued
# it (not part of the Notification: from_dict ignores it, so no channel ever sends it).
TRACE_KEY = "trace_context"


@dataclass(frozen=True)
class Notification:
    """One rendered message for one channel; JSON-safe, never carries a secret."""

    delivery_id: str
    alert_id: str
    rule_id: str
    rule_name: str
    kind: Kind
    severity: Severity
    title: str
    text: str
    context: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (webhook "json" bodies, delivery payloads)."""
        return {
            "delivery_id": self.delivery_id,
            "alert_id": self.alert_id,
            "rule_id": self.rule_id,
            "rule_name": self.rule_name,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "text": self.text,
            "occurred_at": _iso(self.occurred_at),
            "context": dict(self.context),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        """Inverse of as_dict (a delivery's stored payload back to a Notification)."""
        kind = str(data.get("kind", "firing"))
        severity = str(data.get("severity", "warning"))
        occurred = data.get("occurred_at")
        return cls(
            delivery_id=str(data.get("delivery_id", "")),
            alert_id=str(data.get("alert_id", "")),
            rule_id=str(data.get("rule_id", "")),
            rule_name=str(data.get("rule_name", "")),
            kind=kind if kind in KINDS else "firing",  # type: ignore[arg-type]
            severity=severity if severity in SEVERITIES else "warning",  # type: ignore[arg-type]
            title=str(data.get("title", "")),
            text=str(data.get("text", "")),
            context=dict(data.get("context") or {}),
            occurred_at=datetime.fromisoformat(occurred) if occurred else datetime.now(UTC),
        )


class DeliveryError(Exception):
    """One attempt failed; ``retryable`` tells the delivery worker whether to try again."""

    def __init__(
        self, message: str, *, retryable: bool, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        # A receiver's Retry-After (HTTP 429/503), when it sent one.
        self.retry_after_s = retry_after_s


def build_test_notification(
    channel: alerting_pb2.Channel, *, now: datetime | None = None
) -> Notification:
    """The message TestChannel sends: kind "test", no alert or rule behind it."""
    when = now or datetime.now(UTC)
    name = channel.name or channel.id
    return Notification(
        delivery_id=f"test-{uuid.uuid4()}",
        alert_id="",
        rule_id="",
        rule_name="",
        kind="test",
        severity="info",
        title=f"Runbox test notification for channel {name}",
        text=(
            f"This is a test message sent by Runbox through the channel {name!r} "
            f"at {_iso(when)}. If you can read it, the channel works."
        ),
        context={"channel_id": channel.id, "channel_name": channel.name, "test": True},
        occurred_at=when,
    )


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
