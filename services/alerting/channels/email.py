"""Email channels: one plain-text message over SMTP (plain, STARTTLS or implicit TLS).

The password is used for AUTH and nowhere else: no log line, error or message carries it.
Failures are classified for the delivery worker: an unreachable or timing-out server and
4xx replies are retryable; refused logins, refused senders/recipients and missing TLS
support are not (they fail the same way until someone changes the channel).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib
from email_validator import EmailNotValidError, validate_email

from runbox.alerting.v1 import alerting_pb2
from services.alerting.channels.notification import DeliveryError, Notification
from services.alerting.channels.policy import ChannelPolicy, check_destination
from services.alerting.channels.signature import DELIVERY_HEADER
from shared.errors import FieldViolation

log = logging.getLogger(__name__)

MAX_SUBJECT = 200
# Failures that say nothing about the channel itself: the server may be back later.
_TRANSIENT = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPServerDisconnected,
    OSError,
    TimeoutError,
)


def default_port(email: alerting_pb2.EmailChannel) -> int:
    """465 for implicit TLS, 587 for STARTTLS, 25 otherwise."""
    if email.smtp_port:
        return email.smtp_port
    return 465 if email.use_tls else 587 if email.starttls else 25


async def violations(
    email: alerting_pb2.EmailChannel, policy: ChannelPolicy
) -> list[FieldViolation]:
    """Every problem of an email channel (the SMTP host checked when smtp_hosts is set)."""
    bad = _static_violations(email, policy)
    if email.smtp_host and not policy.smtp_rules.allow_any:
        try:
            await check_destination(
                policy.smtp_rules, email.smtp_host, default_port(email), policy.dns_timeout_s
            )
        except ValueError as exc:
            bad.append(FieldViolation("email.smtp_host", f"not allowed: {exc}"))
        except (OSError, TimeoutError):
            bad.append(FieldViolation("email.smtp_host", "does not resolve"))
    return bad


def _static_violations(
    email: alerting_pb2.EmailChannel, policy: ChannelPolicy
) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    host = email.smtp_host
    if not host:
        bad.append(FieldViolation("email.smtp_host", "required"))
    elif len(host) > 253 or any(c.isspace() or c in "/@?#" for c in host):
        bad.append(FieldViolation("email.smtp_host", "not a host name or address"))
    if not 0 <= email.smtp_port <= 65535:
        bad.append(FieldViolation("email.smtp_port", "must be 0..65535 (0: the default)"))
    if email.starttls and email.use_tls:
        bad.append(FieldViolation("email.use_tls", "use either starttls or use_tls, not both"))
    if email.username and not (email.starttls or email.use_tls or policy.smtp_allow_plaintext_auth):
        bad.append(
            FieldViolation(
                "email.username", "SMTP AUTH needs starttls or use_tls (plain text refused)"
            )
        )
    if not email.from_address:
        bad.append(FieldViolation("email.from_address", "required"))
    else:
        bad.extend(_address_violation(email.from_address, "email.from_address"))
    if not email.to_addresses:
        bad.append(FieldViolation("email.to_addresses", "at least one recipient is required"))
    elif len(email.to_addresses) > policy.max_recipients:
        bad.append(
            FieldViolation("email.to_addresses", f"at most {policy.max_recipients} recipients")
        )
    for index, address in enumerate(email.to_addresses[: policy.max_recipients]):
        bad.extend(_address_violation(address, f"email.to_addresses[{index}]"))
    return bad


def _address_violation(address: str, field: str) -> list[FieldViolation]:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return [FieldViolation(field, f"not a valid email address: {exc}")]
    return []


def build_message(email: alerting_pb2.EmailChannel, n: Notification) -> EmailMessage:
    """The message: subject "[SEVERITY] title", the notification text as the body."""
    label = {"resolved": "RESOLVED", "test": "TEST"}.get(n.kind, n.severity.upper())
    subject = " ".join(f"[{label}] {n.title}".split())[:MAX_SUBJECT]
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = email.from_address
    message["To"] = ", ".join(email.to_addresses)
    message["Date"] = format_datetime(n.occurred_at)
    message["Message-ID"] = make_msgid(
        idstring=n.delivery_id.replace("@", "-")[:64], domain="runbox"
    )
    message[DELIVERY_HEADER] = n.delivery_id
    message.set_content(n.text or n.title)
    return message


async def send_email(
    channel: alerting_pb2.Channel, notification: Notification, policy: ChannelPolicy
) -> None:
    """Send one message; raise DeliveryError (retryable or not) when it was not accepted."""
    email = channel.email
    bad = _static_violations(email, policy)
    if bad:
        raise DeliveryError(
            f"channel is invalid: {bad[0].field}: {bad[0].description}", retryable=False
        )
    port = default_port(email)
    where = f"{email.smtp_host}:{port}"
    if not policy.smtp_rules.allow_any:
        try:
            await check_destination(policy.smtp_rules, email.smtp_host, port, policy.dns_timeout_s)
        except ValueError as exc:
            raise DeliveryError(f"SMTP host not allowed: {exc}", retryable=False) from None
        except (OSError, TimeoutError):
            raise DeliveryError(
                f"SMTP host {email.smtp_host} does not resolve", retryable=True
            ) from None
    smtp = aiosmtplib.SMTP(
        hostname=email.smtp_host,
        port=port,
        use_tls=email.use_tls,
        start_tls=email.starttls,
        tls_context=policy.smtp_tls_context() if email.use_tls or email.starttls else None,
        timeout=policy.smtp_timeout_s,
    )
    try:
        async with asyncio.timeout(policy.smtp_timeout_s * 3):
            refused = await _exchange(smtp, email, build_message(email, notification))
    except DeliveryError:
        raise
    except Exception as exc:
        raise _classify(where, email.username, exc) from None
    finally:
        smtp.close()
    if refused:
        log.warning(
            "some email recipients refused",
            extra={"delivery_id": notification.delivery_id, "refused": sorted(refused)},
        )


async def _exchange(
    smtp: aiosmtplib.SMTP, email: alerting_pb2.EmailChannel, message: EmailMessage
) -> dict[str, aiosmtplib.SMTPResponse]:
    """Connect, log in, send; the recipients the server refused (some were accepted)."""
    await smtp.connect()
    if email.username:
        await smtp.login(email.username, email.password)
    refused, _ = await smtp.send_message(message)
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass  # accepted already; a rude goodbye changes nothing
    return refused


def _classify(where: str, username: str, exc: Exception) -> DeliveryError:
    """A DeliveryError for an SMTP failure; never includes the password."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return DeliveryError(
            f"SMTP server {where} refused the login of {username!r}: {exc.code} {exc.message}"[
                :500
            ],
            retryable=False,
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        parts = [f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients]
        transient = all(400 <= r.code < 500 for r in exc.recipients)
        return DeliveryError(
            f"SMTP server {where} refused all recipients: {'; '.join(parts)}"[:500],
            retryable=transient,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(
        exc, aiosmtplib.SMTPConnectResponseError
    ):
        what = "refused the sender" if isinstance(exc, aiosmtplib.SMTPSenderRefused) else "answered"
        return DeliveryError(
            f"SMTP server {where} {what}: {exc.code} {exc.message}"[:500],
            retryable=400 <= exc.code < 500,
        )
    if _certificate_problem(exc):
        return DeliveryError(f"SMTP server {where}: TLS certificate not trusted", retryable=False)
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, _TRANSIENT):
        return DeliveryError(f"SMTP server {where} unreachable: {reason}"[:500], retryable=True)
    if isinstance(exc, aiosmtplib.SMTPException):  # a capability the channel needs is missing
        return DeliveryError(f"SMTP server {where}: {reason}"[:500], retryable=False)
    return DeliveryError(f"SMTP delivery via {where} failed: {type(exc).__name__}", retryable=True)


def _certificate_problem(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
