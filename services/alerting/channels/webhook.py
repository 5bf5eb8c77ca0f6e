"""Webhook channels: a signed JSON (or Slack incoming-webhook) POST to an allowed host.

One send is one attempt: the destination is resolved and checked against the policy, the
request goes to the checked address (Host header and TLS SNI keep the name), redirects are
not followed, and the status decides: 2xx delivered, 408/429/5xx retryable, others not.
Error messages name the host, never the URL (incoming-webhook URLs carry their token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from runbox.alerting.v1 import alerting_pb2
from services.alerting.channels.notification import DeliveryError, Notification
from services.alerting.channels.policy import ChannelPolicy, check_destination
from services.alerting.channels.signature import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from shared.errors import FieldViolation

log = logging.getLogger(__name__)

FORMATS = frozenset({"", "json", "slack"})
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL = 2048
MAX_HEADER_VALUE = 4096
MAX_SECRET = 4096
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Set by the channel itself: custom headers may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        SIGNATURE_HEADER.lower(),
        DELIVERY_HEADER.lower(),
    }
)
SLACK_COLOURS = {"critical": "#d0021b", "warning": "#f5a623", "info": "#4a90e2"}
RESOLVED_COLOUR = "#2eb886"
USER_AGENT = "runbox-alerting/1"


async def violations(
    hook: alerting_pb2.WebhookChannel, policy: ChannelPolicy
) -> list[FieldViolation]:
    """Every problem of a webhook channel, the URL's destination included."""
    bad = _static_violations(hook, policy)
    if any(v.field == "webhook.url" for v in bad):
        return bad
    url = httpx.URL(hook.url)
    try:
        await check_destination(policy.webhook_rules, url.host, _port(url), policy.dns_timeout_s)
    except ValueError as exc:
        bad.append(FieldViolation("webhook.url", f"not allowed: {exc}"))
    except (OSError, TimeoutError):
        bad.append(FieldViolation("webhook.url", f"host {url.host} does not resolve"))
    return bad


def _static_violations(
    hook: alerting_pb2.WebhookChannel, policy: ChannelPolicy
) -> list[FieldViolation]:
    bad = _url_violations(hook.url, policy)
    if len(hook.headers) > policy.webhook_max_headers:
        bad.append(
            FieldViolation("webhook.headers", f"at most {policy.webhook_max_headers} headers")
        )
    for name, value in hook.headers.items():
        field = f"webhook.headers[{name}]"
        if not _TOKEN.match(name):
            bad.append(FieldViolation(field, "not a valid header name"))
        elif name.lower() in RESERVED_HEADERS:
            bad.append(FieldViolation(field, "set by the channel itself; cannot be overridden"))
        elif len(value) > MAX_HEADER_VALUE or any(c in value for c in "\r\n\0"):
            bad.append(FieldViolation(field, "value too long or contains line breaks"))
    if hook.HasField("timeout"):
        seconds = hook.timeout.ToTimedelta().total_seconds()
        if not 0 < seconds <= policy.webhook_max_timeout_s:
            bad.append(
                FieldViolation(
                    "webhook.timeout", f"must be within (0, {policy.webhook_max_timeout_s}] s"
                )
            )
    if not 0 <= hook.max_attempts <= policy.max_attempts:
        bad.append(FieldViolation("webhook.max_attempts", f"must be 0..{policy.max_attempts}"))
    if hook.format not in FORMATS:
        bad.append(FieldViolation("webhook.format", 'must be "json" or "slack"'))
    if len(hook.signing_secret) > MAX_SECRET:
        bad.append(FieldViolation("webhook.signing_secret", f"at most {MAX_SECRET} characters"))
    return bad


def _url_violations(text: str, policy: ChannelPolicy) -> list[FieldViolation]:
    if not text:
        return [FieldViolation("webhook.url", "required")]
    if len(text) > MAX_URL:
        return [FieldViolation("webhook.url", f"longer than {MAX_URL} characters")]
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        return [FieldViolation("webhook.url", f"not a URL: {exc}")]
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if url.scheme not in schemes or not url.host:
        return [FieldViolation("webhook.url", f"must be an absolute {' or '.join(schemes)} URL")]
    if url.userinfo:
        return [FieldViolation("webhook.url", "must not carry credentials: use a header")]
    return []


def timeout_of(hook: alerting_pb2.WebhookChannel, policy: ChannelPolicy) -> float:
    """The channel's timeout, or the policy default, bounded by the policy maximum."""
    seconds = hook.timeout.ToTimedelta().total_seconds() if hook.HasField("timeout") else 0.0
    return min(seconds if seconds > 0 else policy.webhook_timeout_s, policy.webhook_max_timeout_s)


def encode_body(fmt: str, notification: Notification, max_bytes: int) -> bytes:
    """The request body; an oversized notification is shortened, then refused."""
    body = _encode(fmt, notification)
    if len(body) <= max_bytes:
        return body
    short = replace(
        notification,
        title=notification.title[:1000],
        text=notification.text[: max_bytes // 8] + "…[truncated]",
        context={"truncated": True},
    )
    body = _encode(fmt, short)
    if len(body) <= max_bytes:
        return body
    raise DeliveryError(
        f"notification body is {len(body)} bytes, over the {max_bytes}-byte cap", retryable=False
    )


def _encode(fmt: str, notification: Notification) -> bytes:
    payload = slack_payload(notification) if fmt == "slack" else notification.as_dict()
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def slack_payload(n: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message: fallback text plus a coloured attachment."""
    label = "RESOLVED" if n.kind == "resolved" else n.severity.upper()
    if n.kind == "test":
        label = "TEST"
    headline = f"[{label}] {n.title}"
    colour = RESOLVED_COLOUR if n.kind == "resolved" else SLACK_COLOURS.get(n.severity, "#999999")
    footer = " · ".join(
        part
        for part in (n.rule_name and f"rule {n.rule_name}", n.kind, n.as_dict()["occurred_at"])
        if part
    )
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _slack_escape(n.text)[:3000] or " "},
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_escape(footer)}]},
    ]
    return {
        "text": _slack_escape(headline)[:3000],
        "attachments": [{"color": colour, "fallback": _slack_escape(headline), "blocks": blocks}],
    }


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def new_http_client(policy: ChannelPolicy) -> httpx.AsyncClient:
    """A client fit for webhooks: no proxies from the environment, no redirects.

    Cheap to make once the policy's TLS context exists; one shared client also reuses
    connections (pass it to send as ``http``)."""
    return httpx.AsyncClient(
        verify=policy.webhook_tls_context(),
        follow_redirects=False,
        trust_env=False,
        timeout=policy.webhook_timeout_s,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


async def send_webhook(
    channel: alerting_pb2.Channel,
    notification: Notification,
    policy: ChannelPolicy,
    *,
    http: httpx.AsyncClient | None = None,
) -> None:
    """POST one notification; raise DeliveryError unless the receiver answered 2xx."""
    hook = channel.webhook
    bad = _static_violations(hook, policy)
    if bad:
        raise DeliveryError(
            f"channel is invalid: {bad[0].field}: {bad[0].description}", retryable=False
        )
    url = httpx.URL(hook.url)
    targets = await _pinned(url, policy)
    body = encode_body(hook.format, notification, policy.max_body_bytes)
    request = _Request(body, _headers(hook, url, notification, body), timeout_of(hook, policy))
    if url.scheme == "https":
        request.extensions["sni_hostname"] = url.host
    client = http or new_http_client(policy)
    try:
        async with asyncio.timeout(request.timeout):
            status, snippet, retry_after = await _post_first(
                client, targets, request, policy.max_response_bytes
            )
    except (TimeoutError, httpx.TimeoutException):
        raise DeliveryError(
            f"webhook {url.host} timed out after {request.timeout:g}s", retryable=True
        ) from None
    except httpx.HTTPError as exc:
        raise DeliveryError(
            f"webhook {url.host} unreachable: {type(exc).__name__}: {exc}"[:500], retryable=True
        ) from None
    finally:
        if http is None:
            await client.aclose()
    _classify(url.host, status, snippet, retry_after)
    log.debug(
        "webhook delivered",
        extra={"delivery_id": notification.delivery_id, "host": url.host, "status": status},
    )


@dataclass
class _Request:
    body: bytes
    headers: dict[str, str]
    timeout: float
    extensions: dict[str, Any] = field(default_factory=dict)


async def _post_first(
    client: httpx.AsyncClient, targets: list[httpx.URL], request: _Request, cap: int
) -> tuple[int, bytes, float | None]:
    """POST to the first checked address that accepts a connection."""
    for index, target in enumerate(targets):
        try:
            async with client.stream(
                "POST",
                target,
                content=request.body,
                headers=request.headers,
                timeout=request.timeout,
                follow_redirects=False,
                extensions=request.extensions,
            ) as response:
                snippet = await _read_capped(response, cap)
                return response.status_code, snippet, _retry_after(response)
        except httpx.ConnectError:
            if index == len(targets) - 1:
                raise
    raise httpx.ConnectError("no address to connect to")


async def _pinned(url: httpx.URL, policy: ChannelPolicy) -> list[httpx.URL]:
    """The URL once per checked address of its host (the host replaced by the address)."""
    try:
        addresses = await check_destination(
            policy.webhook_rules, url.host, _port(url), policy.dns_timeout_s
        )
    except ValueError as exc:
        raise DeliveryError(f"webhook destination not allowed: {exc}", retryable=False) from None
    except (OSError, TimeoutError):
        raise DeliveryError(f"webhook host {url.host} does not resolve", retryable=True) from None
    return [url.copy_with(host=str(address)) for address in addresses]


def _headers(
    hook: alerting_pb2.WebhookChannel, url: httpx.URL, n: Notification, body: bytes
) -> dict[str, str]:
    headers = {k: v for k, v in hook.headers.items() if k.lower() not in RESERVED_HEADERS}
    headers.setdefault("User-Agent", USER_AGENT)
    headers["Host"] = url.netloc.decode("ascii")
    headers["Content-Type"] = "application/json"
    headers["Accept-Encoding"] = "identity"  # the error snippet is read raw and capped
    headers[DELIVERY_HEADER] = n.delivery_id
    if hook.signing_secret:
        headers[SIGNATURE_HEADER] = sign(hook.signing_secret, body)
    return headers


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_raw():
        data.extend(chunk[: cap - len(data)])
        if len(data) >= cap:
            break
    return bytes(data)


def _classify(host: str, status: int, snippet: bytes, retry_after: float | None) -> None:
    if 200 <= status < 300:
        return
    text = " ".join(snippet.decode("utf-8", "replace").split())[:200]
    detail = f"webhook {host} answered HTTP {status}" + (f": {text}" if text else "")
    if 300 <= status < 400:
        raise DeliveryError(f"{detail} (redirects are not followed)", retryable=False)
    if status in (408, 429) or status >= 500:
        raise DeliveryError(detail, retryable=True, retry_after_s=retry_after)
    raise DeliveryError(detail, retryable=False)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS.get(url.scheme, 443)
