"""Python and shell runs in a fresh hardened Docker container per run.

The container runs the agent as PID 1 and gets the job over its attached
stdin; stdout/stderr come back live over the same attach socket. Every
Docker SDK call is blocking, so each goes through asyncio.to_thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket
from datetime import UTC, datetime
from typing import Any

import docker
from docker.errors import DockerException
from docker.models.containers import Container
from docker.utils.socket import frames_iter

from runbox.common.v1 import common_pb2
from services.executor.agent import AGENT_SOURCE
from services.executor.config import SandboxSettings
from services.executor.metrics import ExecutorMetrics
from services.executor.runners.base import Job, Outcome, OutputSink, StartedHook
from services.executor.runners.protocol import TrailerSplitter, job_line, outcome_from
from shared.errors import FailedPrecondition, FieldViolation

log = logging.getLogger(__name__)
EGRESS = common_pb2.NETWORK_POLICY_EGRESS_ALLOWLIST
STREAMS = {1: "stdout", 2: "stderr"}


class DockerRunner:
    """One container per run: created, started, used once, removed."""

    name = "docker"

    def __init__(
        self, client: docker.DockerClient, settings: SandboxSettings, metrics: ExecutorMetrics
    ) -> None:
        self._client = client
        self._settings = settings
        self._metrics = metrics
        self._active: dict[str, Container] = {}
        self._cancelled: set[str] = set()
        self._cleanup: set[asyncio.Task[None]] = set()

    def validate_config(self, job: Job) -> None:
        """Refuse, before accepting, a run asking for network this executor does not offer."""
        if job.limits.network == EGRESS and not self._settings.egress_network:
            raise FailedPrecondition(
                f"{job.script_name} asks for network egress, and this executor runs every "
                "sandbox without network (set sandbox.egress_network to allow it)",
                [FieldViolation("limits.network", "NETWORK_POLICY_EGRESS_ALLOWLIST not offered")],
            )

    def _create_options(self, job: Job) -> dict[str, Any]:
        s, limits = self._settings, job.limits
        options: dict[str, Any] = dict(
            image=s.image,
            command=["python3", "-u", "-c", AGENT_SOURCE],
            stdin_open=True,
            network_mode=s.egress_network if limits.network == EGRESS else "none",
            read_only=True,
            tmpfs={
                "/work": f"rw,nosuid,nodev,size={limits.work_bytes},uid=10001,gid=10001,mode=0700",
                "/tmp": f"rw,nosuid,nodev,noexec,size={s.tmp_bytes},mode=1777",  # noqa: S108 - in the sandbox
                "/artifacts": f"rw,nosuid,nodev,noexec,size={limits.work_bytes},uid=10001,gid=10001",
            },
            user="10001:10001",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=limits.pids,
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,
            nano_cpus=int(limits.cpus * 1e9),
            environment={},
            labels={"org.runbox.run_id": job.run_id, "org.runbox.role": "sandbox"},
            ipc_mode="private",
            log_config={"type": "none", "config": {}},
            detach=True,
        )
        if s.runtime:
            options["runtime"] = s.runtime
        return options

    def _create(self, job: Job) -> tuple[Container, _Attached]:
        container = self._client.containers.create(**self._create_options(job))
        # attach_socket() drops the HTTP response that owns the connection, so
        # it could never be closed cleanly; keep the response and close it.
        api = self._client.api
        response = api.post(
            api._url("/containers/{0}/attach", container.id),
            None,
            params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1},
            stream=True,
        )
        sock = api._get_raw_response_socket(response)
        sock._sock.settimeout(None)  # silent scripts must not time the stream out
        return container, _Attached(response, sock)

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        try:
            container, sock = await asyncio.to_thread(self._create, job)
            await asyncio.to_thread(container.start)
        except DockerException as exc:
            self._metrics.container_failures.inc()
            return Outcome.infrastructure(f"sandbox could not start: {exc}")
        self._metrics.container_starts.inc()
        self._active[job.run_id] = container
        started = datetime.now(UTC)
        try:
            await on_started(started)
            nonce = secrets.token_hex(16)
            await asyncio.to_thread(
                sock.raw.sendall, job_line(job, nonce=nonce, work_dir="/work", measure="cgroup")
            )
            splitter = TrailerSplitter(nonce)
            pump = asyncio.ensure_future(asyncio.to_thread(_pump, sock.stream, splitter, on_output))
            done, _ = await asyncio.wait({pump}, timeout=job.limits.timeout_s)
            timed_out = not done
            if timed_out:
                await asyncio.to_thread(_kill, container, signal.SIGKILL)
            await pump
            rest, trailer = splitter.finish()
            if rest:
                on_output("stdout", rest)
            status, oom = await asyncio.to_thread(_final_state, container)
            return outcome_from(
                trailer,
                status=status,
                started_at=started,
                timed_out=timed_out,
                cancelled=job.run_id in self._cancelled,
                oom_hint=oom,
            )
        except DockerException as exc:
            return Outcome.infrastructure(f"sandbox failed: {exc}")
        finally:
            self._active.pop(job.run_id, None)
            self._cancelled.discard(job.run_id)
            task = asyncio.create_task(self._remove(container, sock))
            self._cleanup.add(task)
            task.add_done_callback(self._cleanup.discard)

    async def cancel(self, run_id: str) -> bool:
        container = self._active.get(run_id)
        if container is None:
            return False
        self._cancelled.add(run_id)
        await asyncio.to_thread(_kill, container, signal.SIGTERM)
        for _ in range(int(self._settings.cancel_grace_s * 10)):
            if run_id not in self._active:
                return True
            await asyncio.sleep(0.1)
        await asyncio.to_thread(_kill, container, signal.SIGKILL)
        return True

    async def _remove(self, container: Container, sock: Any) -> None:
        """Off the run's path: close the socket and remove the container."""
        try:
            sock.close()
            await asyncio.to_thread(container.remove, force=True)
        except DockerException as exc:
            log.warning("could not remove sandbox %s: %s", container.short_id, exc)

    async def close(self) -> None:
        if self._cleanup:
            await asyncio.gather(*self._cleanup, return_exceptions=True)
        await asyncio.to_thread(self._client.close)


class _Attached:
    """The attach connection: its HTTP response (owner) and the raw stream."""

    def __init__(self, response: Any, stream: Any) -> None:
        self.response = response
        self.stream = stream
        self.raw: socket.socket = stream._sock

    def close(self) -> None:
        self.response.close()


def _pump(sock: Any, splitter: TrailerSplitter, on_output: OutputSink) -> None:
    """Read multiplexed frames until the container closes its output."""
    for stream, data in frames_iter(sock, tty=False):
        name = STREAMS.get(stream)
        if name == "stdout":
            data = splitter.feed(data)
        if name and data:
            on_output(name, data)


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
