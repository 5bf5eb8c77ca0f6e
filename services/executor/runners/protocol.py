"""What runners share about talking to the agent: the job line they send and
the usage trailer they strip from stdout, and mapping its result to an Outcome."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from services.executor.runners.base import FR, RS, Job, Outcome, Usage, interpreter


def job_line(
    job: Job,
    *,
    nonce: str,
    work_dir: str,
    measure: str,
    rlimits: dict[str, int] | None = None,
    mode: str = "once",
    inprocess: bool = False,
    sandboxed: bool = False,
    archive_max_bytes: int = 0,
) -> bytes:
    """The one JSON line the agent reads from stdin.

    `sandboxed`: the agent is PID 1 of a container: the script gets its own process group
    and the agent marks the end of stderr too (the two streams travel separately)."""
    argv, filename = interpreter(job.execution_type)
    payload = {
        "run_id": job.run_id,
        "filename": filename,
        "argv": argv,
        "content": job.content.decode("utf-8", errors="replace"),
        "parameters": job.parameters,
        "secrets": job.secrets,
        "nonce": nonce,
        "work_dir": work_dir,
        "measure": measure,
        "rlimits": rlimits or {},
        "mode": mode,
        "inprocess": inprocess,
        "own_group": sandboxed,
        "end_marker": sandboxed,
        # Sandboxed runs send result.json and /artifacts back as a tar after the trailer.
        "archive": sandboxed,
        "archive_max_bytes": archive_max_bytes,
    }
    return (json.dumps(payload) + "\n").encode()


def _tag_start(pending: bytearray, tag: bytes) -> int:
    """How many trailing bytes could be the start of `tag` (held back until more arrives)."""
    for size in range(min(len(tag) - 1, len(pending)), 0, -1):
        if pending.endswith(tag[:size]):
            return size
    return 0


def _take(pending: bytearray, cut: int) -> bytes:
    out = bytes(pending[:cut])
    del pending[:cut]
    return out


class TrailerSplitter:
    """Passes stdout through live, holding back only what could be the start
    of the agent's usage trailer (tagged by the nonce), which is cut off.

    The agent's start marker (`<nonce>S<unix time>\\n`, the first bytes of stdout)
    is cut off too and kept as `started` (the time user code was handed over)."""

    def __init__(self, nonce: str) -> None:
        self._tag = ("\n" + nonce).encode()
        self._start = (nonce + "S").encode()
        self._pending = bytearray()
        self._head = bytearray()  # bytes before the start marker is complete
        self.started: float | None = None
        self.trailer_complete = False
        self.extra = bytearray()  # stdout after the trailer line (the artifacts archive)

    def feed(self, data: bytes) -> bytes:
        """Bytes safe to show now: all but a possible (partial) trailer tag."""
        if self.started is None and self._start:
            self._head += data
            if len(self._head) < len(self._start) and self._start.startswith(bytes(self._head)):
                return b""
            if not self._head.startswith(self._start):
                self._start = b""  # an agent without a marker: pass everything through
                data, self._head = bytes(self._head), bytearray()
            else:
                end = self._head.find(b"\n")
                if end < 0:
                    return b""
                try:
                    self.started = float(self._head[len(self._start) : end].decode())
                except ValueError:
                    self.started = 0.0
                data, self._head = bytes(self._head[end + 1 :]), bytearray()
        if self.trailer_complete:
            self.extra += data
            return b""
        self._pending += data
        at = self._pending.find(self._tag)
        if at >= 0:
            end = self._pending.find(b"\n", at + len(self._tag))
            if end >= 0:  # the trailer line is whole: what follows is the archive
                self.trailer_complete = True
                self.extra += self._pending[end + 1 :]
                del self._pending[end + 1 :]
            keep = len(self._pending) - at
        else:
            keep = _tag_start(self._pending, self._tag)
        return _take(self._pending, len(self._pending) - keep)

    def finish(self) -> tuple[bytes, dict[str, Any] | None]:
        data = bytes(self._head) + bytes(self._pending)
        at = data.rfind(self._tag)
        if at < 0:
            return data, None
        try:
            trailer = json.loads(data[at + len(self._tag) :].decode())
        except (ValueError, UnicodeDecodeError):
            return data, None
        return data[:at], trailer if isinstance(trailer, dict) else None

    def archive_bytes(self) -> int:
        """How many archive bytes follow the trailer (once the trailer is complete)."""
        at = self._pending.rfind(self._tag)
        if not self.trailer_complete or at < 0:
            return 0
        try:
            trailer = json.loads(bytes(self._pending[at + len(self._tag) :]).decode())
            return max(int(trailer.get("archive_bytes", 0)), 0)
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
            return 0


class EndMarker:
    """Stderr of a sandboxed run: passed through live, minus the agent's end marker
    (`\\n<nonce>E\\n`), whose arrival says the run's stderr is complete."""

    def __init__(self, nonce: str) -> None:
        self._tag = ("\n" + nonce + "E\n").encode()
        self._pending = bytearray()
        self.seen = False

    def feed(self, data: bytes) -> bytes:
        self._pending += data
        at = self._pending.find(self._tag)
        if at >= 0:
            self.seen = True
            out = bytes(self._pending[:at])
            self._pending.clear()
            return out
        return _take(self._pending, len(self._pending) - _tag_start(self._pending, self._tag))

    def finish(self) -> bytes:
        out = bytes(self._pending)
        self._pending.clear()
        return out


def outcome_from(
    trailer: dict[str, Any] | None,
    *,
    status: int | None,
    started_at: datetime,
    timed_out: bool,
    cancelled: bool,
    oom_hint: bool = False,
) -> Outcome:
    """Combine the agent's report with what the runner saw from outside."""
    usage = Usage()
    if trailer:
        usage = Usage(
            cpu_seconds=float(trailer.get("cpu_seconds", 0.0)),
            peak_memory_bytes=int(trailer.get("peak_memory_bytes", 0)),
            io_read_bytes=int(trailer.get("io_read_bytes", 0)),
            io_write_bytes=int(trailer.get("io_write_bytes", 0)),
            wall_seconds=float(trailer.get("wall_seconds", 0.0)),
        )
    finished = datetime.now(UTC)
    if not usage.wall_seconds:
        usage.wall_seconds = (finished - started_at).total_seconds()
    outcome = Outcome(
        state=RS.RUN_STATE_SUCCEEDED, usage=usage, started_at=started_at, finished_at=finished
    )
    exit_code = int(trailer["exit_code"]) if trailer else (status or 0)
    signal = int(trailer.get("signal", 0)) if trailer else 0
    outcome.exit_code, outcome.signal = exit_code, signal
    if cancelled:
        outcome.state, outcome.reason, outcome.message = (
            RS.RUN_STATE_CANCELLED,
            FR.FAILURE_REASON_CANCELLED,
            "cancelled",
        )
    elif timed_out:
        outcome.state, outcome.reason, outcome.message = (
            RS.RUN_STATE_TIMED_OUT,
            FR.FAILURE_REASON_TIMEOUT,
            "wall-clock timeout",
        )
    elif (trailer and trailer.get("oom_killed")) or oom_hint:
        outcome.state, outcome.reason, outcome.message = (
            RS.RUN_STATE_FAILED,
            FR.FAILURE_REASON_OOM_KILLED,
            "memory limit exceeded",
        )
    elif trailer is None and status not in (0, None):
        outcome.state, outcome.reason = RS.RUN_STATE_FAILED, FR.FAILURE_REASON_INFRASTRUCTURE
        outcome.message = f"sandbox agent ended without a report (status {status})"
    elif exit_code != 0 or signal:
        outcome.state, outcome.reason = RS.RUN_STATE_FAILED, FR.FAILURE_REASON_EXIT_CODE
        outcome.message = f"killed by signal {signal}" if signal else f"exit code {exit_code}"
    return outcome
