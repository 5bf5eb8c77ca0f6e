"""Per-stream output capture: redaction that also catches a secret split
across reads, the head/tail byte budget, and chunks pending for live LOG events."""

from __future__ import annotations

from services.executor.output import OutputBuffer, Redactor


class StreamCapture:
    """One output stream of one run."""

    def __init__(self, redactor: Redactor, budget: int) -> None:
        self._redact = redactor
        self._hold = max(redactor.longest - 1, 0)
        self._carry = b""
        self.buffer = OutputBuffer(budget)
        self.live = bytearray()
        self.offset = 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        data = self._carry + data
        if self._hold and len(data) > self._hold:
            # Keep back an unredacted tail that may be the start of a secret
            # continuing in the next read; never cut through a whole secret.
            cut = self._redact.safe_cut(data, len(data) - self._hold)
            ready, self._carry = self._redact(data[:cut]), data[cut:]
        elif self._hold:
            self._carry = data
            return
        else:
            ready, self._carry = data, b""
        self._emit(ready)

    def close(self) -> None:
        if self._carry:
            self._emit(self._redact(self._carry))
            self._carry = b""

    def _emit(self, data: bytes) -> None:
        self.buffer.write(data)
        self.live += data

    def take_live(self) -> tuple[bytes, int]:
        """Pending live bytes and their stream offset."""
        data, offset = bytes(self.live), self.offset
        self.offset += len(data)
        self.live.clear()
        return data, offset

    def summary(self) -> tuple[bytes, int, bool]:
        return self.buffer.value(), self.buffer.total, self.buffer.truncated
