"""Python and shell runs in hardened Docker sandboxes from the warm pool.

A run takes a started container whose agent (PID 1) waits on the attached stdin,
writes one job line, and reads stdout/stderr live from the same attach socket
until the agent's end markers (or EOF). Python scripts start in a fork of the
agent's already running interpreter. Per-run isolation removes the container
afterwards (off the run's path); reuse isolation keeps it for the script's next
run unless anything about the run was abnormal. Every Docker SDK call is blocking,
so each goes through asyncio.to_thread.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import signal
import socket
import time
from datetime import UTC, datetime
from typing import Any

import docker
from docker.errors import DockerException
from docker.models.containers import Container

from runbox.common.v1 import common_pb2
from services.executor.artifacts import collect_from_tar
from services.executor.config import ArtifactSettings, SandboxSettings
from services.executor.metrics import ExecutorMetrics, execution_type_label
from services.executor.pool import (
    PoolClass,
    Sandbox,
    WarmPool,
    engine_memory,
    engine_runtimes,
    reap_orphans,
    refuse_unoffered,
)
from services.executor.runners.base import FR, RS, Job, Outcome, OutputSink, StartedHook
from services.executor.runners.frames import frames
from services.executor.runners.protocol import EndMarker, TrailerSplitter, job_line, outcome_from

log = logging.getLogger(__name__)
EGRESS = common_pb2.NETWORK_POLICY_EGRESS_ALLOWLIST
REUSE = common_pb2.ISOLATION_REUSE
RUNSC = common_pb2.RUNTIME_RUNSC
ARCHIVE_OVERHEAD = 1024 * 1024
ZYGOTE_LINE = b"ZYGOTE\n"  # tar headers around the capped content


class DockerRunner:
    """Runs python and shell jobs in warm sandboxes."""

    name = "docker"
    sandbox = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        settings: SandboxSettings,
        metrics: ExecutorMetrics,
        artifacts: ArtifactSettings | None = None,
        owner: str = "",
    ) -> None:
        self._client = client
        self._owner = owner
        self._settings = settings
        self._artifacts = artifacts or ArtifactSettings()
        self._metrics = metrics
        self._runtimes = engine_runtimes(client)
        metrics.sandboxes.memory_budget_bytes = engine_memory(client)
        self._pool = WarmPool(client, settings, metrics, self.default_class(), owner)
        self._active: dict[str, Sandbox] = {}
        self._cancelled: set[str] = set()

    @property
    def pool(self) -> WarmPool:
        return self._pool

    async def start(self) -> None:
        """Remove what an earlier process of this executor left (its warm sandboxes and
        unfinished container runs), then fill the pool."""
        if self._owner:
            try:
                reaped = await asyncio.to_thread(reap_orphans, self._client, self._owner)
            except DockerException as exc:
                log.warning("could not look for orphaned containers: %s", exc)
            else:
                self._metrics.orphans_removed.inc(reaped)
        await self._pool.start()

    def default_class(self) -> PoolClass:
        s = self._settings
        return PoolClass(
            image=s.image,
            runtime=s.runtime,
            cpus=s.cpus,
            memory_bytes=s.memory_bytes,
            pids=s.pids,
            work_bytes=s.work_bytes,
            tmp_bytes=s.tmp_bytes,
            network="none",
        )

    def class_for(self, job: Job) -> PoolClass:
        """The pool class a job's limits and runtime select."""
        s, limits = self._settings, job.limits
        runtime = "runsc" if job.runtime == RUNSC else s.runtime
        return PoolClass(
            image=s.image,
            runtime=runtime,
            cpus=limits.cpus,
            memory_bytes=limits.memory_bytes,
            pids=limits.pids,
            work_bytes=limits.work_bytes,
            tmp_bytes=s.tmp_bytes,
            network=s.egress_network if limits.network == EGRESS else "none",
        )

    async def validate_config(self, job: Job) -> None:
        """Refuse, before accepting, a run asking for what this executor does not offer."""
        refuse_unoffered(job, self._settings, self._runtimes)

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        begun = time.time()
        cls = self.class_for(job)
        reuse = job.isolation == REUSE
        try:
            if reuse:
                sandbox = await self._pool.acquire_reused(job.script_name, cls)
            else:
                sandbox = await self._pool.acquire(cls)
        except DockerException as exc:
            return Outcome.infrastructure(f"sandbox could not start: {exc}")
        self._active[job.run_id] = sandbox
        self._metrics.sandboxes.assigned(
            sandbox.container.id, execution_type_label(job.execution_type)
        )
        recycle = "anomaly"
        try:
            outcome, recycle = await self._run(job, sandbox, reuse, begun, on_output, on_started)
            return outcome
        except DockerException as exc:
            return Outcome.infrastructure(f"sandbox failed: {exc}")
        finally:
            self._active.pop(job.run_id, None)
            self._cancelled.discard(job.run_id)
            self._pool.release(sandbox, keep_for=job.script_name if reuse else None, reason=recycle)

    async def _run(
        self,
        job: Job,
        sandbox: Sandbox,
        reuse: bool,
        begun: float,
        on_output: OutputSink,
        on_started: StartedHook,
    ) -> tuple[Outcome, str]:
        nonce = secrets.token_hex(16)
        line = job_line(
            job,
            nonce=nonce,
            work_dir="/work",
            measure="rusage" if reuse else "cgroup",
            mode="reuse" if reuse else "once",
            # In a warm interpreter: forked from the agent for a one-run sandbox, from the
            # agent's clean zygote (forked before any job) for a reused one.
            inprocess=job.execution_type == common_pb2.EXECUTION_TYPE_PYTHON
            and not job.config.get("script", {}).get("interpreter"),
            sandboxed=True,
            archive_max_bytes=self._artifacts.max_total_bytes,
        )
        loop = asyncio.get_running_loop()
        raw = sandbox.attached.raw
        try:
            await loop.sock_sendall(raw, line)
        except OSError as exc:
            return Outcome.infrastructure(f"sandbox did not take the job: {exc}"), "anomaly"
        handed = asyncio.Event()
        splitter, errors = TrailerSplitter(nonce), EndMarker(nonce)
        cap = self._artifacts.max_total_bytes + ARCHIVE_OVERHEAD
        pump = asyncio.ensure_future(_pump(loop, raw, splitter, errors, on_output, handed, cap))
        timeout = job.limits.timeout_s
        waiter = asyncio.ensure_future(handed.wait())
        await asyncio.wait({pump, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        started_at = datetime.now(UTC)
        if splitter.started:
            self._metrics.handoff.labels(self.name).observe(max(splitter.started - begun, 0.0))
            started_at = datetime.fromtimestamp(splitter.started, UTC)
        await on_started(started_at)
        remaining = max(timeout - (time.time() - (splitter.started or begun)), 0.0)
        done, _ = await asyncio.wait({pump}, timeout=remaining)
        timed_out = not done
        if timed_out:
            await asyncio.to_thread(_kill, sandbox.container, signal.SIGKILL)
        await pump
        rest, trailer = splitter.finish()
        if rest:
            on_output("stdout", rest)
        tail = errors.finish()
        if tail:
            on_output("stderr", tail)
        status, oom = (None, False)
        if trailer is None:  # the agent itself died (PID 1 OOM-killed, killed from outside)
            status, oom = await asyncio.to_thread(_final_state, sandbox.container)
        outcome = outcome_from(
            trailer,
            status=status,
            started_at=started_at,
            timed_out=timed_out,
            cancelled=job.run_id in self._cancelled,
            oom_hint=oom,
        )
        reason = _recycle_reason(outcome, trailer, timed_out)
        need = splitter.archive_bytes() if trailer is not None else 0
        if need > cap or len(splitter.extra) < need:
            outcome.warnings.append("the sandbox's artifacts archive was cut off or oversized")
            return outcome, reason or "anomaly"
        if need:
            await self._collect(job, bytes(splitter.extra[:need]), outcome)
        return outcome, reason

    async def _collect(self, job: Job, archive: bytes, outcome: Outcome) -> None:
        """result.json and the artifacts the agent packed, kept by the same rules as every
        runner's: regular files only, names sanitised, caps enforced."""
        try:
            outcome.result, outcome.artifacts, warnings = await asyncio.to_thread(
                collect_from_tar,
                io.BytesIO(archive),
                job.run_id,
                self._artifacts,
                secrets=job.secrets.values(),
            )
        except OSError as exc:  # the executor's own storage, not the script's doing
            log.warning("artifacts of the run could not be stored: %s", exc)
            warnings = [f"artifacts could not be stored ({exc.strerror or type(exc).__name__})"]
        outcome.warnings.extend(warnings)

    async def cancel(self, run_id: str) -> bool:
        sandbox = self._active.get(run_id)
        if sandbox is None:
            return False
        self._cancelled.add(run_id)
        await asyncio.to_thread(_kill, sandbox.container, signal.SIGTERM)
        for _ in range(int(self._settings.cancel_grace_s * 10)):
            if run_id not in self._active:
                return True
            await asyncio.sleep(0.1)
        await asyncio.to_thread(_kill, sandbox.container, signal.SIGKILL)
        return True

    async def close(self) -> None:
        await self._pool.close()
        await asyncio.to_thread(self._client.close)


def _recycle_reason(outcome: Outcome, trailer: dict[str, Any] | None, timed_out: bool) -> str:
    """Why a reused sandbox must not serve another run ("" = it may)."""
    if timed_out:
        return "timeout"
    if outcome.state == RS.RUN_STATE_CANCELLED:
        return "cancelled"
    if trailer is None:
        return "anomaly"
    if outcome.reason == FR.FAILURE_REASON_OOM_KILLED:
        return "oom"
    if outcome.signal:
        return "signal"
    if trailer.get("clean") is False:
        return "dirty"
    return ""


async def _pump(
    loop: asyncio.AbstractEventLoop,
    raw: socket.socket,
    splitter: TrailerSplitter,
    errors: EndMarker,
    on_output: OutputSink,
    handed: asyncio.Event,
    cap: int,
) -> None:
    """Read Docker's multiplexed attach frames (8-byte header: stream, 0, 0, 0, big-endian
    length) on the event loop until both end markers and the archive after the trailer
    arrived, or the container closed. An archive announced above `cap` is not read."""
    need: int | None = None
    async for name, data in frames(loop, raw):
        if name == "stdout":
            data = splitter.feed(data)
            if splitter.started is not None and not handed.is_set():
                handed.set()
        else:
            data = errors.feed(data)
        if data:
            on_output(name, data)
        if splitter.trailer_complete and errors.seen:
            if need is None:
                need = splitter.archive_bytes()
            if need > cap or len(splitter.extra) >= need:
                return


def _kill(container: Container, sig: int) -> None:
    try:
        container.kill(signal=sig)
    except DockerException:
        pass  # already gone


def _final_state(container: Container) -> tuple[int | None, bool]:
    result = container.wait(timeout=30)
    container.reload()
    state = container.attrs.get("State", {})
    return int(result.get("StatusCode", -1)), bool(state.get("OOMKilled"))


def docker_client_or_none(timeout: float = 60.0) -> docker.DockerClient | None:
    """A client if a Docker engine answers, else None."""
    try:
        client = docker.from_env(timeout=timeout)
        client.api.timeout = timeout
        client.ping()
        return client
    except (DockerException, OSError):
        return None
