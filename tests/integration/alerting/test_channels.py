"""Alert channels against real servers: aiosmtpd (plain, STARTTLS, implicit TLS, AUTH)
and a local HTTP/1.1 receiver (signatures, Slack shape, status classes, timeouts, SSRF)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from google.protobuf.duration_pb2 import Duration

from cli import natsd
from runbox.alerting.v1 import alerting_pb2
from services.alerting.channels import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    ChannelPolicy,
    DeliveryError,
    Notification,
    build_test_notification,
    new_http_client,
    redact,
    send,
    validate_channel,
    verify_signature,
)
from shared.errors import InvalidArgument

PASSWORD = "pw-Zq81-not-for-logs"
SECRET = "whsec-7f3a9c"
LOCAL = ChannelPolicy(allow_http=True, webhook_allow=["127.0.0.1/32"])


def notification(**changes: Any) -> Notification:
    """A firing notification of a failed backup run."""
    values: dict[str, Any] = {
        "delivery_id": "dlv-0001",
        "alert_id": "alert-1",
        "rule_id": "rule-1",
        "rule_name": "backup-failures",
        "kind": "firing",
        "severity": "critical",
        "title": "backup failed",
        "text": "Run c3a1 of backup reached FAILED (exit code 2).",
        "context": {"script_name": "backup", "run_id": "c3a1", "labels": {"team": "ops"}},
        "occurred_at": datetime(2026, 1, 1, 2, 10, tzinfo=UTC),
    }
    values.update(changes)
    return Notification(**values)


# --- SMTP -----------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps accepted messages, refuses recipients at refused.example."""

    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.endswith("@refused.example"):
            return "550 5.7.1 relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
        )
        return "250 Message accepted"


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"alerts"
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)  # unhandled failure: the server answers 535


@dataclass
class Smtp:
    mailbox: Mailbox
    port: int


@dataclass
class Certs:
    server: ssl.SSLContext
    ca_file: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(server=context, ca_file=ca_file)


def start_smtp(**kwargs: Any) -> Iterator[Smtp]:
    mailbox = Mailbox()
    port = natsd.free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield Smtp(mailbox, port)
    finally:
        controller.stop()


@pytest.fixture
def smtp_plain() -> Iterator[Smtp]:
    yield from start_smtp()


@pytest.fixture
def smtp_starttls(certs: Certs) -> Iterator[Smtp]:
    """STARTTLS and AUTH both required."""
    yield from start_smtp(
        tls_context=certs.server,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )


@pytest.fixture
def smtp_tls(certs: Certs) -> Iterator[Smtp]:
    """Implicit TLS (SMTPS) with AUTH."""
    # aiosmtpd only counts STARTTLS as TLS for AUTH; this session is TLS from the start.
    yield from start_smtp(
        ssl_context=certs.server,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )


def email_channel(port: int, **changes: Any) -> alerting_pb2.Channel:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "from_address": "runbox@example.com",
        "to_addresses": ["oncall@example.com", "ops@example.com"],
    }
    values.update(changes)
    return alerting_pb2.Channel(
        id="ch-mail", name="mail", email=alerting_pb2.EmailChannel(**values)
    )


async def test_send_email_delivers_over_plain_smtp(smtp_plain: Smtp) -> None:
    """A plain SMTP server receives one message with subject, headers and text."""
    channel = email_channel(smtp_plain.port)
    await validate_channel(channel, ChannelPolicy())
    await send(channel, notification(), ChannelPolicy())
    [(sender, recipients, message)] = smtp_plain.mailbox.messages
    assert sender == "runbox@example.com"
    assert recipients == ["oncall@example.com", "ops@example.com"]
    assert message["Subject"] == "[CRITICAL] backup failed"
    assert message[DELIVERY_HEADER] == "dlv-0001"
    assert "dlv-0001" in message["Message-ID"]
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert "reached FAILED (exit code 2)" in payload.decode()


async def test_send_email_starttls_with_auth_delivers(
    smtp_starttls: Smtp, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """STARTTLS upgrade and AUTH with the channel's password; the password is not logged."""
    caplog.set_level(logging.DEBUG, logger="services.alerting")
    channel = email_channel(smtp_starttls.port, starttls=True, username="alerts", password=PASSWORD)
    policy = ChannelPolicy(smtp_ca_file=str(certs.ca_file))
    await validate_channel(channel, policy)
    await send(channel, notification(kind="resolved"), policy)
    [(_, _, message)] = smtp_starttls.mailbox.messages
    assert message["Subject"] == "[RESOLVED] backup failed"
    assert PASSWORD not in caplog.text


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_send_email_implicit_tls_delivers(smtp_tls: Smtp, certs: Certs) -> None:
    """use_tls connects with TLS from the first byte."""
    channel = email_channel(smtp_tls.port, use_tls=True, username="alerts", password=PASSWORD)
    await send(channel, notification(), ChannelPolicy(smtp_ca_file=str(certs.ca_file)))
    assert len(smtp_tls.mailbox.messages) == 1


async def test_send_email_wrong_password_is_not_retryable(
    smtp_starttls: Smtp, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login fails for good; neither error nor logs carry the password."""
    caplog.set_level(logging.DEBUG, logger="services.alerting")
    wrong = "wrong-" + PASSWORD
    channel = email_channel(smtp_starttls.port, starttls=True, username="alerts", password=wrong)
    with pytest.raises(DeliveryError) as caught:
        await send(channel, notification(), ChannelPolicy(smtp_ca_file=str(certs.ca_file)))
    assert not caught.value.retryable
    assert "refused the login of 'alerts'" in caught.value.message
    assert wrong not in caught.value.message and wrong not in caplog.text
    assert smtp_starttls.mailbox.messages == []


# aiosmtplib leaves the plain socket of a failed STARTTLS upgrade to the garbage collector
# (its ResourceWarning then surfaced, as an unraisable exception, in whichever test ran
# next): collected here, under this filter, so no other test is blamed for it.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_send_email_untrusted_certificate_is_not_retryable(smtp_starttls: Smtp) -> None:
    """A server certificate no trusted CA signed is refused (no smtp_ca_file)."""
    channel = email_channel(smtp_starttls.port, starttls=True, username="alerts", password=PASSWORD)
    with pytest.raises(DeliveryError) as caught:
        await send(channel, notification(), ChannelPolicy())
    assert not caught.value.retryable
    assert "certificate" in caught.value.message
    assert smtp_starttls.mailbox.messages == []
    gc.collect()


async def test_send_email_without_required_starttls_is_not_retryable(smtp_starttls: Smtp) -> None:
    """A server demanding STARTTLS refuses a plain session with a 5xx."""
    with pytest.raises(DeliveryError) as caught:
        await send(email_channel(smtp_starttls.port), notification(), ChannelPolicy())
    assert not caught.value.retryable
    assert "530" in caught.value.message


async def test_send_email_unreachable_server_is_retryable() -> None:
    """Nothing listening: a retryable error naming host and port."""
    port = natsd.free_port()
    with pytest.raises(DeliveryError) as caught:
        await send(email_channel(port), notification(), ChannelPolicy(smtp_timeout_s=2))
    assert caught.value.retryable
    assert f"127.0.0.1:{port} unreachable" in caught.value.message


async def test_send_email_all_recipients_refused_is_not_retryable(smtp_plain: Smtp) -> None:
    """Every recipient refused with 550: not retryable, refusals listed."""
    channel = email_channel(smtp_plain.port, to_addresses=["a@refused.example"])
    with pytest.raises(DeliveryError) as caught:
        await send(channel, notification(), ChannelPolicy())
    assert not caught.value.retryable
    assert "a@refused.example (550" in caught.value.message
    assert smtp_plain.mailbox.messages == []


async def test_send_email_some_recipients_refused_delivers_to_the_rest(smtp_plain: Smtp) -> None:
    """A partly refused message counts as delivered (a retry would duplicate it)."""
    channel = email_channel(smtp_plain.port, to_addresses=["a@refused.example", "b@example.com"])
    await send(channel, notification(), ChannelPolicy())
    [(_, recipients, _)] = smtp_plain.mailbox.messages
    assert recipients == ["b@example.com"]


async def test_validate_email_channel_names_every_bad_field() -> None:
    """Bad addresses, both TLS modes and AUTH without TLS each get a field violation."""
    channel = email_channel(
        25,
        from_address="not-an-address",
        to_addresses=["ok@example.com", "bad@@example.com"],
        starttls=True,
        use_tls=True,
    )
    with pytest.raises(InvalidArgument) as caught:
        await validate_channel(channel, ChannelPolicy())
    fields = {v.field for v in caught.value.violations}
    assert fields == {"email.from_address", "email.to_addresses[1]", "email.use_tls"}

    plain_auth = email_channel(25, username="alerts", password=PASSWORD)
    with pytest.raises(InvalidArgument) as caught:
        await validate_channel(plain_auth, ChannelPolicy())
    assert [v.field for v in caught.value.violations] == ["email.username"]
    assert PASSWORD not in str(caught.value)


async def test_validate_email_channel_refuses_smtp_host_outside_list() -> None:
    """With smtp_hosts set, other SMTP hosts are refused."""
    policy = ChannelPolicy(smtp_hosts=["10.0.0.0/8"])
    with pytest.raises(InvalidArgument) as caught:
        await validate_channel(email_channel(25), policy)
    assert [v.field for v in caught.value.violations] == ["email.smtp_host"]
    await validate_channel(email_channel(25), ChannelPolicy(smtp_hosts=["127.0.0.1"]))


# --- HTTP ----------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A tiny HTTP/1.1 server: /ok -> 200, /status/<n> -> n, /slow -> never answers."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._server: asyncio.Server | None = None
        self._release = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, path, headers, body))
            status, extra = 200, ""
            if path == "/slow":
                await self._release.wait()
            elif path.startswith("/status/"):
                status = int(path.rsplit("/", 1)[1])
                extra = "Location: /ok\r\n" if 300 <= status < 400 else ""
                extra += "Retry-After: 7\r\n" if status == 429 else ""
            payload = b'{"error": "receiver says no"}' if status >= 400 else b"ok"
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n{extra}"
                "Connection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


def webhook_channel(url: str, **changes: Any) -> alerting_pb2.Channel:
    values: dict[str, Any] = {"url": url, "signing_secret": SECRET}
    values.update(changes)
    return alerting_pb2.Channel(
        id="ch-hook", name="hook", webhook=alerting_pb2.WebhookChannel(**values)
    )


async def test_send_webhook_json_body_is_signed(receiver: Receiver) -> None:
    """JSON body with alert fields and context; the signature verifies only with the
    right secret and a fresh timestamp."""
    channel = webhook_channel(receiver.url("/ok"), headers={"X-Team": "ops"})
    await validate_channel(channel, LOCAL)
    await send(channel, notification(), LOCAL)
    [request] = receiver.requests
    assert request.method == "POST" and request.path == "/ok"
    body = json.loads(request.body)
    assert body["alert_id"] == "alert-1" and body["severity"] == "critical"
    assert body["occurred_at"] == "2026-01-01T02:10:00Z"
    assert body["context"]["labels"] == {"team": "ops"}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-team"] == "ops"
    assert request.headers[DELIVERY_HEADER.lower()] == "dlv-0001"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    header = request.headers[SIGNATURE_HEADER.lower()]
    assert verify_signature(SECRET, header, request.body)
    assert verify_signature(SECRET.encode(), header, request.body)
    assert not verify_signature("other-secret", header, request.body)
    assert not verify_signature(SECRET, header, request.body + b" ")
    timestamp = int(header.split(",")[0].removeprefix("t="))
    assert not verify_signature(SECRET, header, request.body, now=timestamp + 301)
    assert verify_signature(SECRET, header, request.body, now=timestamp + 299)
    assert SECRET not in request.body.decode()


async def test_send_webhook_slack_format_has_text_and_coloured_blocks(receiver: Receiver) -> None:
    """format "slack": fallback text plus an attachment coloured by severity."""
    channel = webhook_channel(receiver.url("/ok"), format="slack", signing_secret="")
    await send(channel, notification(text="a < b & c"), LOCAL)
    [request] = receiver.requests
    assert SIGNATURE_HEADER.lower() not in request.headers
    body = json.loads(request.body)
    assert body["text"] == "[CRITICAL] backup failed"
    [attachment] = body["attachments"]
    assert attachment["color"] == "#d0021b"
    kinds = [block["type"] for block in attachment["blocks"]]
    assert kinds == ["header", "section", "context"]
    assert attachment["blocks"][1]["text"] == {"type": "mrkdwn", "text": "a &lt; b &amp; c"}

    await send(channel, notification(kind="resolved", severity="warning"), LOCAL)
    resolved = json.loads(receiver.requests[1].body)
    assert resolved["text"].startswith("[RESOLVED]")
    assert resolved["attachments"][0]["color"] == "#2eb886"


async def test_send_webhook_times_out_with_retryable_error(receiver: Receiver) -> None:
    """A receiver that never answers fails within the channel timeout, retryable."""
    channel = webhook_channel(receiver.url("/slow"), timeout=Duration(nanos=300_000_000))
    with pytest.raises(DeliveryError) as caught:
        await asyncio.wait_for(send(channel, notification(), LOCAL), timeout=10)
    assert caught.value.retryable
    assert "timed out after 0.3s" in caught.value.message


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (408, True), (429, True), (400, False), (404, False), (302, False)],
)
async def test_send_webhook_classifies_status(
    receiver: Receiver, status: int, retryable: bool
) -> None:
    """408/429/5xx retry, other 4xx and 3xx do not; redirects are never followed."""
    with pytest.raises(DeliveryError) as caught:
        await send(webhook_channel(receiver.url(f"/status/{status}")), notification(), LOCAL)
    assert caught.value.retryable is retryable
    assert f"answered HTTP {status}" in caught.value.message
    assert [r.path for r in receiver.requests] == [f"/status/{status}"]
    if status == 429:
        assert caught.value.retry_after_s == 7
    if status >= 400:
        assert "receiver says no" in caught.value.message


async def test_send_webhook_shortens_oversized_notification(receiver: Receiver) -> None:
    """A notification over the body cap is sent shortened, marked truncated."""
    policy = LOCAL.model_copy(update={"max_body_bytes": 8192})
    big = notification(text="x" * 1_000_000, context={"blob": "y" * 1_000_000})
    await send(webhook_channel(receiver.url("/ok")), big, policy)
    [request] = receiver.requests
    assert len(request.body) <= 8192
    body = json.loads(request.body)
    assert body["context"] == {"truncated": True}
    assert body["text"].endswith("[truncated]")


async def test_send_webhook_with_shared_client_and_test_notification(receiver: Receiver) -> None:
    """TestChannel's notification goes through a client shared across sends."""
    channel = webhook_channel(receiver.url("/ok"))
    test = build_test_notification(channel)
    async with new_http_client(LOCAL) as http:
        await send(channel, test, LOCAL, http=http)
        await send(channel, test, LOCAL, http=http)
    bodies = [json.loads(r.body) for r in receiver.requests]
    assert [b["kind"] for b in bodies] == ["test", "test"]
    assert bodies[0]["context"] == {"channel_id": "ch-hook", "channel_name": "hook", "test": True}
    assert bodies[0]["delivery_id"].startswith("test-")


@pytest.mark.parametrize(
    ("url", "policy"),
    [
        ("http://127.0.0.1:8080/hook", ChannelPolicy(allow_http=True)),
        ("http://localhost:8080/hook", ChannelPolicy(allow_http=True)),
        ("http://[::ffff:127.0.0.1]/hook", ChannelPolicy(allow_http=True)),
        ("https://169.254.169.254/latest/meta-data", ChannelPolicy()),
        ("https://10.1.2.3/hook", ChannelPolicy(webhook_allow=["10.9.0.0/16"])),
        ("https://0.0.0.0/hook", ChannelPolicy(webhook_allow=["0.0.0.0/0"])),
        ("https://93.184.216.34/hook", ChannelPolicy(webhook_allow_public=False)),
        ("http://127.0.0.1/hook", ChannelPolicy(webhook_allow=["127.0.0.1/32"])),
        ("https://user:pw@127.0.0.1/hook", LOCAL),
        ("ftp://127.0.0.1/hook", LOCAL),
    ],
)
async def test_validate_webhook_refuses_url_outside_allow_list(
    url: str, policy: ChannelPolicy
) -> None:
    """Loopback, private, link-local, unlisted and non-http(s) URLs: InvalidArgument on
    webhook.url."""
    with pytest.raises(InvalidArgument) as caught:
        await validate_channel(webhook_channel(url), policy)
    assert [v.field for v in caught.value.violations] == ["webhook.url"]


async def test_validate_webhook_accepts_allow_listed_and_public_urls() -> None:
    """Listed CIDRs and names, and public addresses by default, pass."""
    await validate_channel(
        webhook_channel("https://10.1.2.3/x"), ChannelPolicy(webhook_allow=["10.1.0.0/16"])
    )
    await validate_channel(webhook_channel("https://93.184.216.34/x"), ChannelPolicy())
    await validate_channel(
        webhook_channel("http://localhost:9/x"),
        ChannelPolicy(allow_http=True, webhook_allow=["localhost"]),
    )


async def test_send_webhook_rechecks_destination_at_send(receiver: Receiver) -> None:
    """A channel valid under one policy is refused at send under a stricter one."""
    channel = webhook_channel(receiver.url("/ok"))
    await validate_channel(channel, LOCAL)
    with pytest.raises(DeliveryError) as caught:
        await send(channel, notification(), ChannelPolicy(allow_http=True))
    assert not caught.value.retryable
    assert "not allowed" in caught.value.message
    assert receiver.requests == []


async def test_validate_webhook_names_every_bad_field() -> None:
    """Reserved headers, unknown format, out-of-range timeout and attempts are refused."""
    channel = webhook_channel(
        "http://127.0.0.1/x",
        headers={"Content-Type": "text/plain", "X-Runbox-Signature": "t=1,v1=00", "Bad Name": "v"},
        format="xml",
        timeout=Duration(seconds=600),
        max_attempts=-1,
    )
    with pytest.raises(InvalidArgument) as caught:
        await validate_channel(channel, LOCAL)
    assert {v.field for v in caught.value.violations} == {
        "webhook.headers[Content-Type]",
        "webhook.headers[X-Runbox-Signature]",
        "webhook.headers[Bad Name]",
        "webhook.format",
        "webhook.timeout",
        "webhook.max_attempts",
    }
    with pytest.raises(InvalidArgument) as caught:
        await validate_channel(alerting_pb2.Channel(name="none"), LOCAL)
    assert [v.field for v in caught.value.violations] == ["kind"]


def test_redact_clears_secrets_and_keeps_the_rest() -> None:
    """Password, signing secret and credential headers are cleared in a copy."""
    hook = webhook_channel(
        "https://hooks.example.com/x", headers={"Authorization": "Bearer t0k", "X-Team": "ops"}
    )
    mail = email_channel(25, username="alerts", password=PASSWORD)
    redacted_hook, redacted_mail = redact(hook), redact(mail)
    assert redacted_hook.webhook.signing_secret == "" and hook.webhook.signing_secret == SECRET
    assert dict(redacted_hook.webhook.headers) == {"Authorization": "", "X-Team": "ops"}
    assert redacted_hook.webhook.url == "https://hooks.example.com/x"
    assert redacted_mail.email.password == "" and redacted_mail.email.username == "alerts"
    assert PASSWORD not in str(redacted_mail) and SECRET not in str(redacted_hook)


async def test_send_webhook_connects_to_checked_address_keeping_host_name(
    receiver: Receiver,
) -> None:
    """A listed name is resolved and pinned; the Host header still carries the name."""
    policy = ChannelPolicy(allow_http=True, webhook_allow=["localhost"])
    channel = webhook_channel(f"http://localhost:{receiver.port}/ok")
    await validate_channel(channel, policy)
    await send(channel, notification(), policy)
    [request] = receiver.requests
    assert request.headers["host"] == f"localhost:{receiver.port}"


def test_notification_round_trips_through_its_stored_payload() -> None:
    """as_dict/from_dict keep every field (the delivery worker stores the dict)."""
    original = notification()
    assert Notification.from_dict(json.loads(json.dumps(original.as_dict()))) == original


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", "t=1700000000", "garbage"])
def test_verify_signature_rejects_malformed_header(header: str) -> None:
    """Headers without a timestamp and a v1 MAC never verify."""
    assert not verify_signature(SECRET, header, b"{}", now=1700000000)
