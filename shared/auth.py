"""Bearer-token authentication and permission checks.

Tokens are never stored: principals are configured with the SHA-256 of their
token (tokens are 256-bit random values, so a plain digest is enough), and
lookups compare digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from shared.errors import PermissionDenied, Unauthenticated

PERMISSIONS: frozenset[str] = frozenset(
    {
        "script:read",
        "script:write",
        "script:delete",
        "script:execute",
        "script:manage",
        "script_execution:read",
        "script_execution:write",
        "script_execution:manage",
        "script_schedule:read",
        "script_schedule:write",
        "script_schedule:delete",
        "script_schedule:manage",
        # Alerting scope, named like the others (documented in docs/architecture.md).
        "alert:read",
        "alert:write",
        "alert:delete",
        "alert:manage",
    }
)
ALL = "*"
# What an RPC needs: a permission, or several that are all needed (an RPC doing what two
# others do needs what both need).
Needs: TypeAlias = str | tuple[str, ...]
# Marks an RPC open to any caller (health checks for probes).
PUBLIC = "public"
# Marks an RPC open to any authenticated principal (reflection).
AUTHENTICATED = "authenticated"


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token, as stored in principal configuration."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random bearer token."""
    return "rbx_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller and what it may do."""

    name: str
    permissions: frozenset[str]

    def allows(self, permission: str) -> bool:
        return ALL in self.permissions or permission in self.permissions


class Authenticator:
    """Maps bearer tokens to principals."""

    def __init__(self, principals: Iterable[tuple[str, str, Iterable[str]]]) -> None:
        self._by_digest: dict[str, Principal] = {}
        for name, digest, perms in principals:
            perm_set = frozenset(perms)
            unknown = perm_set - PERMISSIONS - {ALL}
            if unknown:
                raise ValueError(f"principal {name!r}: unknown permissions {sorted(unknown)}")
            if len(digest) != 64:
                raise ValueError(f"principal {name!r}: token_sha256 must be 64 hex chars")
            self._by_digest[digest.lower()] = Principal(name, perm_set)

    @classmethod
    def from_config(cls, principals_file: str, inline: list[dict[str, object]]) -> Authenticator:
        """Build from a JSON file ({"principals": [...]}) plus inline entries."""
        entries: list[Mapping[str, object]] = list(inline)
        if principals_file:
            data = json.loads(Path(principals_file).read_text())
            entries.extend(data.get("principals", []))
        return cls(
            (str(e["name"]), str(e["token_sha256"]), [str(p) for p in e.get("permissions", [])])  # type: ignore[attr-defined]
            for e in entries
        )

    def authenticate(self, authorization: str | None) -> Principal:
        """Resolve an `authorization` metadata value; raise Unauthenticated."""
        if not authorization:
            raise Unauthenticated("missing bearer token (metadata 'authorization')")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be 'Bearer <token>'")
        digest = hash_token(token.strip())
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthenticated("invalid token")


def require(principal: Principal, permission: str) -> None:
    """Raise PermissionDenied unless the principal holds the permission."""
    if permission in (PUBLIC, AUTHENTICATED):
        return
    if not principal.allows(permission):
        raise PermissionDenied(f"principal {principal.name!r} lacks permission {permission!r}")
