"""Per-stream output capture: redaction that also catches a secret split
across reads, the head/tail byte budget, and chunks pending for live LOG events."""

from __future__ import annotations

from services.executor.output import OutputBuffer, Redactor


class StreamCapture:
    """One output stream of one run."""

    def __init__(
        self,
        redactor: Redactor,
        budget: int,
        live_budget: int = 8 * 1024 * 1024,
        live_pending: int = 256 * 1024,
    ) -> None:
        self._redact = redactor
        self._hold = max(redactor.longest - 1, 0)
        self._carry = b""
        self.buffer = OutputBuffer(budget)
        # Live LOG events: at most live_pending bytes wait for the next flush (one event's
        # worth) and at most live_budget bytes are streamed per run; the rest is dropped from
        # the live stream only (offsets show the gap) and still reaches the head/tail buffer.
        self._live_budget = live_budget
        self._live_pending = live_pending
        self.live = bytearray()
        self._live_start = 0
        self._live_gap = False
        self._streamed = 0
        self.position = 0
        self.live_dropped = 0

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
        start = self.position
        self.position += len(data)
        room = min(
            self._live_pending - len(self.live),
            self._live_budget - self._streamed - len(self.live),
        )
        if self._live_gap or room <= 0:
            self._live_gap = True
            self.live_dropped += len(data)
            return
        if not self.live:
            self._live_start = start
        self.live += data[:room]
        if len(data) > room:
            self._live_gap = True  # bytes after this are not contiguous with the pending ones
            self.live_dropped += len(data) - room

    def take_live(self) -> tuple[bytes, int]:
        """Pending live bytes and their offset in the stream."""
        data, offset = bytes(self.live), self._live_start
        self._streamed += len(data)
        self.live.clear()
        self._live_gap = self._streamed >= self._live_budget
        return data, offset

    def summary(self) -> tuple[bytes, int, bool]:
        return self.buffer.value(), self.buffer.total, self.buffer.truncated
