"""Python and shell runs as a local child process with rlimits and its own
process group: for trusted ops scripts and machines with no Docker engine.
This is NOT a sandbox: the script can reach the network and the filesystem
the executor's user can."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from runbox.common.v1 import common_pb2
from services.executor.agent import AGENT_SOURCE
from services.executor.artifacts import collect_from_directory
from services.executor.config import ArtifactSettings, SandboxSettings
from services.executor.runners.base import Job, Limits, Outcome, OutputSink, StartedHook
from services.executor.runners.protocol import TrailerSplitter, job_line, outcome_from
from services.executor.runners.warm import WarmProcesses

log = logging.getLogger(__name__)
# The run's artifacts directory, inside its work dir (RUNBOX_ARTIFACTS_DIR points at it).
ARTIFACTS = "artifacts"
# The PATH the agent gives a script (agent.py): where its `python3` comes from.
SCRIPT_PATH = "/usr/local/bin:/usr/bin:/bin"


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
    sandbox = "none"  # a child process of the executor: NOT sandboxed

    def __init__(
        self, settings: SandboxSettings, work_dir: Path, artifacts: ArtifactSettings | None = None
    ) -> None:
        self._settings = settings
        self._work_dir = work_dir
        self._artifacts = artifacts or ArtifactSettings(storage_dir=str(work_dir / "artifacts"))
        self._active: dict[str, asyncio.subprocess.Process] = {}
        self._cancelled: set[str] = set()
        # The agent runs on the interpreter a python script would get (`python3` on the
        # script's PATH), so that a python run is a fork of the warm agent (no interpreter
        # start-up: in-process, as in a fresh sandbox) and sees the same Python as before.
        # Without one, the executor's own interpreter runs the agent, which execs python3.
        self._python = script_python()
        # Agents started ahead of demand: the interpreter's start-up is off the run's path.
        self._agents: WarmProcesses[asyncio.subprocess.Process] = WarmProcesses(
            settings.local_warm_agents,
            start=self._start_agent,
            alive=lambda proc: proc.returncode is None,
            discard=_discard_agent,
        )

    async def validate_config(self, job: Job) -> None:
        """Python and shell scripts need no type-specific config yet."""

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"run-{job.run_id[:12]}-", dir=self._work_dir))
        try:
            (work / ARTIFACTS).mkdir()
            outcome = await self._run(job, work, on_output, on_started)
            await self._collect(job, work, outcome)
            return outcome
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _collect(self, job: Job, work: Path, outcome: Outcome) -> None:
        """Take result.json and the artifacts before the work dir goes, whatever the
        outcome: a failed run's artifacts are often what explains it."""
        try:
            outcome.result, outcome.artifacts, warnings = await asyncio.to_thread(
                collect_from_directory,
                work,
                job.run_id,
                self._artifacts,
                artifacts=ARTIFACTS,
                secrets=job.secrets.values(),
            )
        except OSError as exc:  # the executor's own storage, not the script's doing
            log.warning("artifacts of the run could not be stored: %s", exc)
            warnings = [f"artifacts could not be stored ({exc.strerror or type(exc).__name__})"]
        outcome.warnings.extend(warnings)

    async def _run(
        self, job: Job, work: Path, on_output: OutputSink, on_started: StartedHook
    ) -> Outcome:
        try:
            proc = await self._agents.take()
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
                proc.stdin.write(_local_job_line(job, work, nonce, inprocess=bool(self._python)))
                await proc.stdin.drain()
                proc.stdin.close()
            readers = asyncio.gather(
                read_stream(proc.stdout, lambda d: on_output("stdout", splitter.feed(d))),
                read_stream(proc.stderr, lambda d: on_output("stderr", d)),
                proc.wait(),
            )
            done, _ = await asyncio.wait({readers}, timeout=job.limits.timeout_s)
            timed_out = not done
            if timed_out:
                kill_group(proc, signal.SIGKILL)
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
            kill_group(proc, signal.SIGKILL)
            self._active.pop(job.run_id, None)
            self._cancelled.discard(job.run_id)

    async def _start_agent(self) -> asyncio.subprocess.Process:
        """An agent waiting for its job line on stdin (it sets itself to die with the
        executor first); `-I`: nothing of the executor's venv or directory on its path."""
        self._work_dir.mkdir(parents=True, exist_ok=True)
        return await asyncio.create_subprocess_exec(
            self._python or sys.executable,
            "-I",
            "-u",
            "-c",
            AGENT_SOURCE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self._work_dir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUNBOX_AGENT_WARM": "1"},
            start_new_session=True,
        )

    async def cancel(self, run_id: str) -> bool:
        proc = self._active.get(run_id)
        if proc is None:
            return False
        self._cancelled.add(run_id)
        kill_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._settings.cancel_grace_s)
        except TimeoutError:
            kill_group(proc, signal.SIGKILL)
        return True

    async def close(self) -> None:
        await self._agents.close()
        for proc in list(self._active.values()):
            kill_group(proc, signal.SIGKILL)


def script_python() -> str | None:
    """The `python3` a script gets, if it can run the agent (3.9+); checked once, at start."""
    python = shutil.which("python3", path=SCRIPT_PATH)
    if python is None:
        return None
    try:
        probe = subprocess.run(
            [python, "-I", "-S", "-c", "import sys; sys.exit(sys.version_info < (3, 9))"],
            capture_output=True,
            env={},
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return python if probe.returncode == 0 else None


async def _discard_agent(proc: asyncio.subprocess.Process) -> None:
    """Kill an unused agent and read its pipes to the end, so its transport closes."""
    kill_group(proc, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(proc.communicate(), 5)


def _local_job_line(job: Job, work: Path, nonce: str, *, inprocess: bool = False) -> bytes:
    """The agent's job line, with the artifacts directory inside the work dir
    (the agent's default, /artifacts, is the sandbox's tmpfs). `inprocess`: a python
    script runs in a fork of the agent (which must then be the script's python3)."""
    payload = json.loads(
        job_line(
            job,
            nonce=nonce,
            work_dir=str(work),
            measure="rusage",
            rlimits=rlimits(job.limits),
            inprocess=inprocess and job.execution_type == common_pb2.EXECUTION_TYPE_PYTHON,
        )
    )
    payload["artifacts_dir"] = str(work / ARTIFACTS)
    return (json.dumps(payload) + "\n").encode()


async def read_stream(stream: asyncio.StreamReader, sink: Callable[[bytes], object]) -> None:
    """Hand every chunk of a stream to `sink` until EOF."""
    while chunk := await stream.read(65536):
        sink(chunk)


class HasPid(Protocol):
    @property
    def pid(self) -> int: ...


def kill_group(proc: HasPid, sig: int) -> None:
    """Signal the whole process group the run started (it has its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
