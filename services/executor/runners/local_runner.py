"""Python and shell runs as a local child process with rlimits and its own
process group: for trusted ops scripts and machines with no Docker engine.
This is NOT a sandbox: the script can reach the network and the filesystem
the executor's user can."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from services.executor.agent import AGENT_SOURCE
from services.executor.config import SandboxSettings
from services.executor.runners.base import Job, Limits, Outcome, OutputSink, StartedHook
from services.executor.runners.protocol import TrailerSplitter, job_line, outcome_from


def rlimits(limits: Limits) -> dict[str, int]:
    """Limits the agent applies to the user's process (not to itself)."""
    cpu = int(limits.timeout_s * max(limits.cpus, 1.0)) + 1
    values = {
        "RLIMIT_AS": limits.memory_bytes * 2,
        "RLIMIT_CPU": cpu,
        "RLIMIT_FSIZE": limits.work_bytes,
        "RLIMIT_CORE": 0,
    }
    if os.getuid() != 0:  # root ignores RLIMIT_NPROC
        values["RLIMIT_NPROC"] = limits.pids
    return values


class LocalRunner:
    """Runs the agent as a child process in a fresh work directory."""

    name = "local"

    def __init__(self, settings: SandboxSettings, work_dir: Path) -> None:
        self._settings = settings
        self._work_dir = work_dir
        self._active: dict[str, asyncio.subprocess.Process] = {}
        self._cancelled: set[str] = set()

    def validate_config(self, job: Job) -> None:
        """Python and shell scripts need no type-specific config yet."""

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"run-{job.run_id[:12]}-", dir=self._work_dir))
        try:
            return await self._run(job, work, on_output, on_started)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _run(
        self, job: Job, work: Path, on_output: OutputSink, on_started: StartedHook
    ) -> Outcome:
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-u",
                "-c",
                AGENT_SOURCE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=work,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome.infrastructure(f"could not start local process: {exc}")
        self._active[job.run_id] = proc
        started = datetime.now(UTC)
        nonce = secrets.token_hex(16)
        splitter = TrailerSplitter(nonce)
        try:
            await on_started(started)
            assert proc.stdin and proc.stdout and proc.stderr
            # A quick script may finish before the write completes: its status
            # and trailer say what happened, so a closed pipe is not an error.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(
                    job_line(
                        job,
                        nonce=nonce,
                        work_dir=str(work),
                        measure="rusage",
                        rlimits=rlimits(job.limits),
                    )
                )
                await proc.stdin.drain()
                proc.stdin.close()
            readers = asyncio.gather(
                _read(proc.stdout, lambda d: on_output("stdout", splitter.feed(d))),
                _read(proc.stderr, lambda d: on_output("stderr", d)),
                proc.wait(),
            )
            done, _ = await asyncio.wait({readers}, timeout=job.limits.timeout_s)
            timed_out = not done
            if timed_out:
                _kill_group(proc, signal.SIGKILL)
            await readers
            rest, trailer = splitter.finish()
            if rest:
                on_output("stdout", rest)
            return outcome_from(
                trailer,
                status=proc.returncode,
                started_at=started,
                timed_out=timed_out,
                cancelled=job.run_id in self._cancelled,
            )
        finally:
            _kill_group(proc, signal.SIGKILL)
            self._active.pop(job.run_id, None)
            self._cancelled.discard(job.run_id)

    async def cancel(self, run_id: str) -> bool:
        proc = self._active.get(run_id)
        if proc is None:
            return False
        self._cancelled.add(run_id)
        _kill_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._settings.cancel_grace_s)
        except TimeoutError:
            _kill_group(proc, signal.SIGKILL)
        return True

    async def close(self) -> None:
        for proc in list(self._active.values()):
            _kill_group(proc, signal.SIGKILL)


async def _read(stream: asyncio.StreamReader, sink: object) -> None:
    while chunk := await stream.read(65536):
        sink(chunk)  # type: ignore[operator]


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Signal the whole process group the run started (it has its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
