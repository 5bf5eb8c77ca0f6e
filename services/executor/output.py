"""Captured output: a byte budget that keeps the head and the tail and marks
what was dropped, and redaction of secret values (raw, base64, URL-encoded)."""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterable

MARKER = b"\n[... runbox: %d bytes truncated ...]\n"


class OutputBuffer:
    """Keeps the first half and the last half of a byte budget."""

    def __init__(self, budget: int) -> None:
        self._head_cap = budget // 2
        self._tail_cap = budget - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > self._tail_cap:
                del self._tail[: len(self._tail) - self._tail_cap]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._head) + len(self._tail)

    def value(self) -> bytes:
        if not self.truncated:
            return bytes(self._head + self._tail)
        dropped = self.total - len(self._head) - len(self._tail)
        return bytes(self._head) + MARKER % dropped + bytes(self._tail)


class Redactor:
    """Replaces every secret value, and its base64 / URL-encoded forms, by ***."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[bytes] = set()
        for secret in secrets:
            if len(secret) < 3:  # too short to redact without destroying output
                continue
            raw = secret.encode()
            forms.update(
                {
                    raw,
                    base64.b64encode(raw),
                    base64.b64encode(raw).rstrip(b"="),
                    base64.urlsafe_b64encode(raw).rstrip(b"="),
                    urllib.parse.quote(secret, safe="").encode(),
                    urllib.parse.quote_plus(secret).encode(),
                }
            )
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(f) for f in ordered)) if ordered else None
        self.longest = max((len(f) for f in ordered), default=0)

    def __call__(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        return self._pattern.sub(b"***", data)

    def safe_cut(self, data: bytes, cut: int) -> int:
        """Move a cut point past any secret occurrence that straddles it."""
        if self._pattern is None:
            return cut
        for match in self._pattern.finditer(data):
            if match.start() < cut < match.end():
                return match.end()
        return cut

    def text(self, value: str) -> str:
        return self(value.encode()).decode(errors="replace")
