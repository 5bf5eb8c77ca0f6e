"""Operator limits on channels (ChannelPolicy) and where a channel may connect to.

A webhook may reach a host only when every address its name resolves to is allowed:
public addresses (unless ``webhook_allow_public`` is off), addresses in an allow-listed
CIDR, or any address of an allow-listed host name. Private, loopback, link-local, shared
(100.64/10) and reserved addresses are refused unless allow-listed. The check runs when a
channel is created or updated and again before each send, which then connects to the
checked address itself, so a DNS answer that changes in between cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel, Field, PrivateAttr, field_validator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ChannelPolicy(BaseModel):
    """Limits on what channels may do (AlertingSettings.channels, RUNBOX_CHANNELS__*)."""

    # Host names ("hooks.example.com", "*.example.com") or CIDRs ("10.1.0.0/16",
    # "127.0.0.1/32") webhooks may reach in addition to public addresses.
    webhook_allow: list[str] = Field(default_factory=list)
    # Off: only the allow-list is reachable, public addresses too need listing.
    webhook_allow_public: bool = True
    # Plain http:// webhook URLs (https only by default).
    allow_http: bool = False
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    webhook_max_timeout_s: float = Field(default=30.0, gt=0, le=300)
    webhook_max_headers: int = Field(default=20, ge=0, le=100)
    # Largest request body a webhook sends; bigger notifications are shortened first.
    max_body_bytes: int = Field(default=256 * 1024, ge=4096, le=16 * 1024 * 1024)
    # How much of a webhook's response is read (for the error message only).
    max_response_bytes: int = Field(default=16 * 1024, ge=0, le=1024 * 1024)
    max_attempts: int = Field(default=50, ge=1, le=1000)
    dns_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # SMTP hosts (names or CIDRs) email channels may use; empty allows any host.
    smtp_hosts: list[str] = Field(default_factory=list)
    smtp_timeout_s: float = Field(default=15.0, gt=0, le=300)
    # Extra CA bundle (PEM) trusted for SMTP TLS, besides the system's.
    smtp_ca_file: str | None = None
    # AUTH over a connection without TLS sends the password in clear: refused unless on.
    smtp_allow_plaintext_auth: bool = False
    max_recipients: int = Field(default=50, ge=1, le=1000)

    _smtp_tls: tuple[str | None, ssl.SSLContext] | None = PrivateAttr(default=None)
    _webhook_tls: ssl.SSLContext | None = PrivateAttr(default=None)

    @field_validator("webhook_allow", "smtp_hosts")
    @classmethod
    def _entries(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            AddressRules.parse_entry(entry)
        return entries

    @field_validator("smtp_ca_file")
    @classmethod
    def _ca_file(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"smtp_ca_file {path!r} is not a file")
        return path

    # Built from the fields on each use (a few entries), so model_copy(update=...) is safe.
    @property
    def webhook_rules(self) -> AddressRules:
        return AddressRules.build(self.webhook_allow, self.webhook_allow_public)

    @property
    def smtp_rules(self) -> AddressRules:
        # An empty list means any host: mail relays are usually private or local.
        return AddressRules.build(
            self.smtp_hosts, allow_public=False, allow_any=not self.smtp_hosts
        )

    def webhook_tls_context(self) -> ssl.SSLContext:
        """httpx's default verifying context, built once (loading CAs takes ~70 ms)."""
        if self._webhook_tls is None:
            self._webhook_tls = httpx.create_ssl_context()
        return self._webhook_tls

    def smtp_tls_context(self) -> ssl.SSLContext:
        """The TLS context for SMTP (system CAs plus smtp_ca_file), built once."""
        if self._smtp_tls is None or self._smtp_tls[0] != self.smtp_ca_file:
            self._smtp_tls = (
                self.smtp_ca_file,
                ssl.create_default_context(cafile=self.smtp_ca_file),
            )
        return self._smtp_tls[1]


@dataclass(frozen=True)
class AddressRules:
    """Which (host name, address) pairs a channel may connect to."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]
    allow_public: bool
    allow_any: bool = False

    @classmethod
    def build(cls, entries: list[str], allow_public: bool, allow_any: bool = False) -> AddressRules:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            parsed = cls.parse_entry(entry)
            if isinstance(parsed, IPNetwork):
                networks.append(parsed)
            elif parsed.startswith("*."):
                suffixes.append(parsed[1:])
            else:
                names.add(parsed)
        return cls(frozenset(names), tuple(suffixes), tuple(networks), allow_public, allow_any)

    @staticmethod
    def parse_entry(entry: str) -> IPNetwork | str:
        text = entry.strip().lower().rstrip(".")
        if not text:
            raise ValueError("empty allow-list entry")
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            pass
        label = text[2:] if text.startswith("*.") else text
        if not all(part and part.replace("-", "").isalnum() for part in label.split(".")):
            raise ValueError(f"allow-list entry {entry!r} is neither a host name nor a CIDR")
        return text

    def name_listed(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return name in self.names or any(name.endswith(s) for s in self.suffixes)

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why ``address`` (resolved from ``host``) may not be used, or None."""
        address = _unmapped(address)
        if self.allow_any:
            return None
        if address.is_unspecified or address.is_multicast:
            return f"{address} is not a unicast address"
        if self.name_listed(host) or any(address in n for n in self.networks):
            return None
        if self.allow_public and address.is_global:
            return None
        if self.allow_public:
            return f"{host} resolves to non-public address {address} (not in the allow-list)"
        return f"{host} ({address}) is not in the allow-list"


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    """Every address of ``host`` (an IP literal resolves to itself), in resolver order."""
    try:
        return [_unmapped(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = _unmapped(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OSError(f"{host} has no addresses")
    return addresses


async def check_destination(
    rules: AddressRules, host: str, port: int, timeout_s: float
) -> list[IPAddress]:
    """Resolve ``host`` and return its addresses; ValueError if any is refused,
    OSError/TimeoutError if it does not resolve."""
    addresses = await resolve(host, port, timeout_s)
    for address in addresses:
        reason = rules.refusal(host, address)
        if reason is not None:
            raise ValueError(reason)
    return addresses
