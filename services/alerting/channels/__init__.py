"""Alert channels: validate a channel, send one notification through it, redact it.

``send`` makes exactly one attempt; the delivery worker owns retries and reads
DeliveryError.retryable to decide. Secrets (SMTP password, webhook signing secret and
credential-like webhook headers) are used only to send and are cleared by ``redact``.
"""

from __future__ import annotations

import httpx

from runbox.alerting.v1 import alerting_pb2
from services.alerting.channels import email, webhook
from services.alerting.channels.notification import (
    DeliveryError,
    Notification,
    build_test_notification,
)
from services.alerting.channels.policy import ChannelPolicy
from services.alerting.channels.signature import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    sign,
    verify_signature,
)
from services.alerting.channels.webhook import new_http_client
from shared.errors import FieldViolation, InvalidArgument

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "ChannelPolicy",
    "DeliveryError",
    "Notification",
    "build_test_notification",
    "new_http_client",
    "redact",
    "send",
    "sign",
    "validate_channel",
    "verify_signature",
]

# Header names whose values are credentials: kept out of everything a caller reads back.
_SECRET_HEADER_WORDS = ("authorization", "token", "secret", "password", "key", "cookie", "auth")


async def validate_channel(channel: alerting_pb2.Channel, policy: ChannelPolicy) -> None:
    """Raise InvalidArgument naming every bad field ("webhook.url", "email.to_addresses[0]").

    Async because a webhook's (and a listed SMTP) host is resolved and every address
    checked against the policy."""
    kind = channel.WhichOneof("kind")
    bad: list[FieldViolation]
    if kind == "webhook":
        bad = await webhook.violations(channel.webhook, policy)
    elif kind == "email":
        bad = await email.violations(channel.email, policy)
    else:
        bad = [FieldViolation("kind", "set email or webhook")]
    if bad:
        summary = "; ".join(f"{v.field}: {v.description}" for v in bad)
        raise InvalidArgument(f"channel is invalid: {summary}", bad)


async def send(
    channel: alerting_pb2.Channel,
    notification: Notification,
    policy: ChannelPolicy,
    *,
    http: httpx.AsyncClient | None = None,
) -> None:
    """One delivery attempt; DeliveryError(retryable=...) if it did not go through.

    ``http``: a shared client from new_http_client (else one is made for this call)."""
    kind = channel.WhichOneof("kind")
    if kind == "webhook":
        await webhook.send_webhook(channel, notification, policy, http=http)
    elif kind == "email":
        await email.send_email(channel, notification, policy)
    else:
        raise DeliveryError("channel has no kind (email or webhook)", retryable=False)


def redact(channel: alerting_pb2.Channel) -> alerting_pb2.Channel:
    """A copy without secrets: password, signing secret, credential-like header values."""
    copy = alerting_pb2.Channel()
    copy.CopyFrom(channel)
    if copy.HasField("email"):
        copy.email.password = ""
    if copy.HasField("webhook"):
        copy.webhook.signing_secret = ""
        for name in list(copy.webhook.headers):
            if is_secret_header(name):
                copy.webhook.headers[name] = ""
    return copy


def is_secret_header(name: str) -> bool:
    """Whether a custom header's value is treated as a credential (cleared by redact)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_HEADER_WORDS)
