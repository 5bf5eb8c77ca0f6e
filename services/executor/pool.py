"""The warm sandbox pool: hardened containers created and started ahead of demand.

Each container runs the agent as PID 1, already attached (stdin/stdout/stderr over one
attach connection), waiting for a job line. Handing a run to it is one write on that
socket: no `docker run`, no `docker exec`, no container creation on the run's path.

Containers are grouped by class: everything fixed when a container is created (image,
runtime, CPU, memory, pids, work dir size, network). The default class (the executor's own
limits) keeps `min_idle` warm containers; any class in use keeps as many as its recent peak
of busy containers (up to `max_idle`) and shrinks back after `idle_timeout_s` without use.

Per-run isolation (the default): a container serves one run and is removed off the run's
path; the refill loop replaces it. Reuse isolation: a container is kept per (script, class)
and serves many runs of that script, recycled after `reuse_max_runs`, on any anomaly, or when
idle for `reuse_idle_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException, NotFound
from docker.models.containers import Container, _create_container_args

from runbox.common.v1 import common_pb2
from services.executor.agent import AGENT_SOURCE
from services.executor.config import SandboxSettings
from services.executor.metrics import ExecutorMetrics, resource_class
from services.executor.runners.base import Job
from shared.errors import FailedPrecondition, FieldViolation

log = logging.getLogger(__name__)
UID = "10001:10001"
RUNSC_PIDS = 16384
READY = b"RUNBOX-READY\n"
READY_TIMEOUT_S = 60.0
OWNER_LABEL = "org.runbox.owner"
OWNER_FILE = "sandbox-owner"


@dataclass(frozen=True)
class PoolClass:
    """Everything fixed at container creation: containers of one class are interchangeable."""

    image: str
    runtime: str  # "" = the engine's default (runc)
    cpus: float
    memory_bytes: int
    pids: int
    work_bytes: int
    tmp_bytes: int
    network: str  # "none", or the executor's egress network

    @property
    def name(self) -> str:
        """A bounded, readable label (classes come from configured limits, not from runs)."""
        runtime = self.runtime or "runc"
        return (
            f"{runtime}-{self.cpus:g}cpu-{self.memory_bytes >> 20}mib-{self.pids}pids"
            f"-{self.work_bytes >> 20}mib-{self.network}"
        )

    @property
    def resource_class(self) -> str:
        """The metrics' bounded size class (pool class names are not label values)."""
        return resource_class(self.memory_bytes)

    @property
    def proto_runtime(self) -> int:
        return common_pb2.RUNTIME_RUNSC if self.runtime == "runsc" else common_pb2.RUNTIME_RUNC


class Attached:
    """The attach connection: its HTTP response (owner) and the raw socket."""

    def __init__(self, response: Any, stream: Any) -> None:
        self.response = response
        self.stream = stream
        self.raw: socket.socket = stream._sock

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.response.close()


@dataclass
class Sandbox:
    """One started container with its agent waiting on the attached stdin."""

    container: Container
    attached: Attached
    cls: PoolClass
    runs: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class _ClassState:
    idle: deque[Sandbox] = field(default_factory=deque)
    busy: int = 0
    starting: int = 0
    peak: int = 0  # most busy at once since the last shrink window
    last_used: float = 0.0
    minimum: int = 0


def hardened_options(cls: PoolClass, owner: str = "") -> dict[str, Any]:
    """`docker create` options of a sandbox: hardened by default, nothing of the host inside.
    `owner` labels it as this executor's, so that a later start of the executor can remove it
    if this one dies (reap_orphans)."""
    options: dict[str, Any] = dict(
        image=cls.image,
        command=["python3", "-I", "-u", "-c", AGENT_SOURCE],
        stdin_open=True,
        network_mode=cls.network,
        read_only=True,
        tmpfs={
            "/work": f"rw,nosuid,nodev,size={cls.work_bytes},uid=10001,gid=10001,mode=0700",
            "/tmp": f"rw,nosuid,nodev,noexec,size={cls.tmp_bytes},mode=1777",  # noqa: S108 - in the sandbox
            "/artifacts": f"rw,nosuid,nodev,noexec,size={cls.work_bytes},uid=10001,gid=10001",
        },
        user=UID,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        # gVisor's own threads count against the host's pids limit (a low one crashes the
        # sandbox kernel); it gets headroom, and memory bounds a fork bomb inside it.
        pids_limit=max(cls.pids, RUNSC_PIDS) if cls.runtime == "runsc" else cls.pids,
        mem_limit=cls.memory_bytes,
        memswap_limit=cls.memory_bytes,
        nano_cpus=int(cls.cpus * 1e9),
        # The one variable of a sandbox: asks the agent to say when it is ready for a job.
        environment={"RUNBOX_AGENT_READY": "1"},
        labels={"org.runbox.role": "sandbox", "org.runbox.pool_class": cls.name},
        ipc_mode="private",
        log_config={"type": "none", "config": {}},
        detach=True,
    )
    if cls.runtime:
        options["runtime"] = cls.runtime
    if owner:
        options["labels"][OWNER_LABEL] = owner
    return options


def sandbox_owner(work_dir: Path) -> str:
    """This executor's owner label value: made once and kept in its work dir, so the same
    executor restarted (new process, same work dir) knows its earlier containers; executors
    sharing one engine have their own work dirs and never touch each other's."""
    path = work_dir / OWNER_FILE
    try:
        owner = path.read_text().strip()
    except FileNotFoundError:
        owner = ""
    if not owner:
        work_dir.mkdir(parents=True, exist_ok=True)
        owner = f"executor-{uuid.uuid4().hex}"
        path.write_text(owner + "\n")
    return owner


def reap_orphans(client: docker.DockerClient, owner: str) -> int:
    """Remove every container labelled with `owner`: at start-up, what an earlier process of
    this executor left when it died (warm sandboxes, runs it never finished). Blocking."""
    removed = 0
    for container in client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner}"}):
        try:
            container.remove(force=True)
            removed += 1
        except NotFound:
            pass  # removed meanwhile
        except DockerException as exc:
            log.warning("could not remove orphaned container %s: %s", container.short_id, exc)
    if removed:
        log.warning("removed %d containers an earlier run of this executor left behind", removed)
    return removed


class WarmPool:
    """Warm containers per class, handed out one per run (or kept per script in reuse mode)."""

    def __init__(
        self,
        client: docker.DockerClient,
        settings: SandboxSettings,
        metrics: ExecutorMetrics,
        default_class: PoolClass,
        owner: str = "",
    ) -> None:
        self._client = client
        self._owner = owner
        self._settings = settings
        self._pool = settings.pool
        self._metrics = metrics
        self._default = default_class
        self._classes: dict[PoolClass, _ClassState] = {}
        self._reused: dict[tuple[str, PoolClass], deque[Sandbox]] = {}
        self._create_slots = asyncio.Semaphore(self._pool.create_concurrency)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._removals: set[asyncio.Task[None]] = set()
        self._fills: set[asyncio.Task[None]] = set()
        self._closed = False
        self._state(default_class).minimum = self._pool.min_idle

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Fill the default class, then keep every class topped up in the background."""
        self._loop_task = asyncio.create_task(self._refill_loop(), name="sandbox-pool")
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._fills:  # containers being created are removed as they land
            await asyncio.gather(*self._fills, return_exceptions=True)
        for state in self._classes.values():
            while state.idle:
                self.discard(state.idle.popleft())
        for kept in self._reused.values():
            while kept:
                self.discard(kept.popleft())
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)

    # --- handing out --------------------------------------------------------------------------

    async def acquire(self, cls: PoolClass) -> Sandbox:
        """A warm sandbox of the class; created on the spot (a miss) when none is idle."""
        state = self._state(cls)
        state.last_used = time.monotonic()
        state.busy += 1
        state.peak = max(state.peak, state.busy)
        self._wake.set()
        while state.idle:
            sandbox = state.idle.popleft()
            if _alive(sandbox):
                self._metrics.pool_acquires.labels(cls.resource_class, "hit").inc()
                self._gauges(cls)
                return sandbox
            self.discard(sandbox)
        self._metrics.pool_acquires.labels(cls.resource_class, "miss").inc()
        try:
            return await self._create(cls)
        except BaseException:
            state.busy -= 1
            raise
        finally:
            self._gauges(cls)

    async def acquire_reused(self, script: str, cls: PoolClass) -> Sandbox:
        """The script's kept sandbox if one is idle, else a fresh one from the pool."""
        kept = self._reused.get((script, cls))
        while kept:
            sandbox = kept.popleft()
            if _alive(sandbox):
                state = self._state(cls)
                state.busy += 1
                state.last_used = time.monotonic()
                self._metrics.pool_acquires.labels(cls.resource_class, "reuse").inc()
                self._gauges(cls)
                return sandbox
            self.discard(sandbox)
        return await self.acquire(cls)

    def release(self, sandbox: Sandbox, *, keep_for: str | None = None, reason: str = "") -> None:
        """After a run: keep it for the script's next run, or remove it off the run's path."""
        state = self._state(sandbox.cls)
        state.busy = max(state.busy - 1, 0)
        self._metrics.sandboxes.assigned(sandbox.container.id, "")
        sandbox.runs += 1
        sandbox.last_used = time.monotonic()
        if keep_for is not None and not reason and sandbox.runs < self._pool.reuse_max_runs:
            self._reused.setdefault((keep_for, sandbox.cls), deque()).append(sandbox)
        else:
            if keep_for is not None:
                reason = reason or "max_runs"
                self._metrics.pool_recycles.labels(reason).inc()
            self.discard(sandbox)
        self._gauges(sandbox.cls)
        self._wake.set()

    def discard(self, sandbox: Sandbox) -> None:
        """Remove a container in the background."""
        task = asyncio.create_task(self._remove(sandbox))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        out = []
        for cls, state in self._classes.items():
            kept = self._kept(cls)
            out.append(
                {
                    "class": cls,
                    "idle": len(state.idle) + kept,
                    "busy": state.busy,
                    "starting": state.starting,
                    "min": state.minimum,
                    "max": self._pool.max_idle,
                }
            )
        return out

    # --- internals ------------------------------------------------------------------------------

    def _kept(self, cls: PoolClass) -> int:
        """Idle sandboxes of the class kept for scripts in reuse mode."""
        return sum(len(kept) for (_, c), kept in self._reused.items() if c == cls)

    def _state(self, cls: PoolClass) -> _ClassState:
        state = self._classes.get(cls)
        if state is None:
            state = self._classes[cls] = _ClassState()
        return state

    def _target(self, state: _ClassState, now: float) -> int:
        recent = now - state.last_used < self._pool.idle_timeout_s
        wanted = max(state.minimum, state.peak if recent else 0)
        return min(wanted, max(self._pool.max_idle, state.minimum))

    async def _refill_loop(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            self._expire_reused(now)
            for cls, state in list(self._classes.items()):
                if now - state.last_used > self._pool.idle_timeout_s:
                    state.peak = state.busy  # shrink after a quiet window
                target = self._target(state, now)
                missing = target - len(state.idle) - state.starting
                for _ in range(max(missing, 0)):
                    state.starting += 1
                    task = asyncio.create_task(self._fill(cls, state))
                    self._fills.add(task)
                    task.add_done_callback(self._fills.discard)
                while len(state.idle) > target:
                    self.discard(state.idle.pop())
                self._gauges(cls)

    def _expire_reused(self, now: float) -> None:
        for key, kept in list(self._reused.items()):
            while kept and now - kept[0].last_used > self._pool.reuse_idle_timeout_s:
                self._metrics.pool_recycles.labels("idle").inc()
                self.discard(kept.popleft())
            if not kept:
                del self._reused[key]

    async def _fill(self, cls: PoolClass, state: _ClassState) -> None:
        try:
            sandbox = await self._create(cls)
        except Exception as exc:  # an engine error, or a bug: never a tight retry loop
            log.warning("could not start a warm sandbox of %s: %r", cls.name, exc)
            await asyncio.sleep(1.0)  # back off; the loop tries again
            return
        finally:
            state.starting -= 1
        if self._closed:
            self.discard(sandbox)
            return
        state.idle.append(sandbox)
        self._gauges(cls)

    async def _create(self, cls: PoolClass) -> Sandbox:
        async with self._create_slots:
            try:
                container, attached = await asyncio.to_thread(self._create_blocking, cls)
            except DockerException:
                self._metrics.container_failures.inc()
                raise
        sandbox = Sandbox(container, attached, cls)
        self._metrics.sandboxes.started(container.id, cls.resource_class, cls.memory_bytes)
        try:
            await asyncio.wait_for(_ready(attached), READY_TIMEOUT_S)
        except (TimeoutError, OSError, ValueError) as exc:
            self._metrics.container_failures.inc()
            self.discard(sandbox)
            raise DockerException(f"sandbox agent did not get ready: {exc!r}") from None
        self._metrics.container_starts.inc()
        return sandbox

    def _create_blocking(self, cls: PoolClass) -> tuple[Container, Attached]:
        options = hardened_options(cls, self._owner)
        del options["detach"]
        options["version"] = self._client.api._version
        # ContainerCollection.create() minus its inspect of the new container (one API call
        # fewer per sandbox); the same argument conversion.
        created = self._client.api.create_container(**_create_container_args(options))
        container = self._client.containers.prepare_model({"Id": created["Id"]})
        try:
            # attach_socket() drops the HTTP response that owns the connection, so it could
            # never be closed cleanly; keep the response and close it ourselves.
            api = self._client.api
            response = api.post(
                api._url("/containers/{0}/attach", container.id),
                None,
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1},
                stream=True,
            )
            stream = api._get_raw_response_socket(response)
            stream._sock.setblocking(False)  # read and written on the event loop
            container.start()
        except BaseException:
            with contextlib.suppress(DockerException):
                container.remove(force=True)
            raise
        return container, Attached(response, stream)

    async def _remove(self, sandbox: Sandbox) -> None:
        self._metrics.sandboxes.removed(sandbox.container.id)
        sandbox.attached.close()
        try:
            await asyncio.to_thread(sandbox.container.remove, force=True)
        except DockerException as exc:
            log.warning("could not remove sandbox %s: %s", sandbox.container.short_id, exc)

    def _gauges(self, cls: PoolClass) -> None:
        """The pool gauges of the class's resource class: the sum over its pool classes."""
        name = cls.resource_class
        idle = busy = starting = 0
        for other, state in self._classes.items():
            if other.resource_class == name:
                idle += len(state.idle) + self._kept(other)
                busy += state.busy
                starting += state.starting
        gauge = self._metrics.pool_containers
        gauge.labels(name, "idle").set(idle)
        gauge.labels(name, "busy").set(busy)
        gauge.labels(name, "starting").set(starting)


async def _ready(attached: Attached) -> None:
    """Read exactly the agent's ready line (one stdout frame) and nothing more."""
    loop = asyncio.get_running_loop()
    want = 8 + len(READY)
    frame = b""
    while len(frame) < want:
        chunk = await loop.sock_recv(attached.raw, want - len(frame))
        if not chunk:
            raise ValueError("the sandbox ended before its agent was ready")
        frame += chunk
    if frame[0] != 1 or frame[8:] != READY:
        raise ValueError(f"unexpected first output {frame[:40]!r}")


def _alive(sandbox: Sandbox) -> bool:
    """Cheap local check that the attach socket is still open (no API call on the hot path);
    a container that died while idle shows as a readable EOF."""
    try:
        data = sandbox.attached.raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return bool(data)  # b"" = EOF: the agent is gone


def engine_runtimes(client: docker.DockerClient) -> set[str]:
    """Container runtimes the engine offers (runc, and runsc when gVisor is registered)."""
    try:
        return set((client.info().get("Runtimes") or {}).keys())
    except DockerException:
        return set()


def engine_memory(client: docker.DockerClient) -> int:
    """The engine host's memory (MemTotal), 0 if the engine does not say."""
    try:
        return int(client.info().get("MemTotal") or 0)
    except (DockerException, TypeError, ValueError):
        return 0


def refuse_unoffered(job: Job, settings: SandboxSettings, runtimes: set[str]) -> None:
    """FAILED_PRECONDITION, before a run is accepted, for network egress or gVisor when this
    executor does not offer them (every Docker runner checks the same way)."""
    if job.limits.network == common_pb2.NETWORK_POLICY_EGRESS_ALLOWLIST and not (
        settings.egress_network
    ):
        raise FailedPrecondition(
            f"{job.script_name} asks for network egress, and this executor runs every "
            "sandbox without network (set sandbox.egress_network to allow it)",
            [FieldViolation("limits.network", "NETWORK_POLICY_EGRESS_ALLOWLIST not offered")],
        )
    if job.runtime == common_pb2.RUNTIME_RUNSC and "runsc" not in runtimes:
        raise FailedPrecondition(
            f"{job.script_name} asks for gVisor, and this Docker engine has no runsc runtime",
            [FieldViolation("runtime", "RUNTIME_RUNSC not available on this executor")],
        )
