"""The container execution type: an allow-listed image run with its own command, args and
env in one fresh, hardened container per run.

There is no agent: an arbitrary image need not have Python. So, unlike python and shell
runs, a run pays for `docker create` + start, and the executor sees the container only
from outside: its multiplexed attach stream (stdout/stderr, live), its exit status, the
engine's OOMKilled flag and, while it runs, its cgroup counters (see ContainerUsage).

The container gets the sandbox's hardened options (pool.hardened_options: network none,
read-only root, tmpfs /work and /tmp, cap_drop ALL, no-new-privileges, pids/memory/CPU
limits, no logging driver) with the image's own entrypoint/cmd replaced as Kubernetes
does (`command` replaces ENTRYPOINT, `args` replaces CMD), and Docker's init as PID 1 so
that SIGTERM reaches the command and zombies are reaped. Images are never pulled.

What goes into the container (allow-list, argv, env, create options): container_spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from runbox.common.v1 import common_pb2
from services.executor.config import ExecutorSettings
from services.executor.metrics import ExecutorMetrics, execution_type_label, resource_class
from services.executor.pool import Attached, engine_runtimes, refuse_unoffered
from services.executor.runners.base import FR, RS, Job, Outcome, OutputSink, StartedHook
from services.executor.runners.container_spec import IMAGE_FIELD, create_options, prepare
from services.executor.runners.container_usage import ContainerUsage
from services.executor.runners.frames import frames
from services.executor.runners.protocol import outcome_from
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable

log = logging.getLogger(__name__)
EGRESS = common_pb2.NETWORK_POLICY_EGRESS_ALLOWLIST
RUNSC = common_pb2.RUNTIME_RUNSC


# --- the runner ----------------------------------------------------------------------------------


@dataclass
class _Active:
    container: Container
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class ContainerRunner:
    """Runs allow-listed images, one fresh hardened container per run."""

    name = "container"
    sandbox = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        settings: ExecutorSettings,
        metrics: ExecutorMetrics,
        owner: str = "",
    ) -> None:
        self._client = client
        self._owner = owner
        self._settings = settings.container
        self._sandbox = settings.sandbox
        self._metrics = metrics
        self._runtimes = engine_runtimes(client)
        self._present: dict[str, float] = {}  # image -> monotonic time it was last seen
        self._active: dict[str, _Active] = {}
        self._cancelled: set[str] = set()
        self._removals: set[asyncio.Task[None]] = set()

    async def validate_config(self, job: Job) -> None:
        """Refuse at Execute what cannot run: config, allow-list, network, runtime, and an
        image this engine does not have (it is never pulled)."""
        spec = prepare(job, self._settings)
        refuse_unoffered(job, self._sandbox, self._runtimes)
        await self._check_present(spec.image)

    async def _check_present(self, image: str) -> None:
        """One image inspect (in a thread: the SDK blocks), remembered for image_check_ttl_s."""
        seen = self._present.get(image)
        if seen is not None and time.monotonic() - seen < self._settings.image_check_ttl_s:
            return
        try:
            await asyncio.to_thread(self._client.images.get, image)
        except ImageNotFound as exc:
            raise FailedPrecondition(
                f"{IMAGE_FIELD}: {image!r} is not present on this executor, and images are "
                "never pulled (container.pull = never)",
                [FieldViolation(IMAGE_FIELD, "image not present on this executor")],
            ) from exc
        except DockerException as exc:
            raise Unavailable(f"the Docker engine did not answer: {exc}") from exc
        self._present[image] = time.monotonic()

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        begun = time.monotonic()
        try:
            spec = prepare(job, self._settings)
        except (InvalidArgument, FailedPrecondition) as exc:
            return Outcome(
                RS.RUN_STATE_FAILED, reason=FR.FAILURE_REASON_INVALID_CONFIG, message=str(exc)
            )
        network = self._sandbox.egress_network if job.limits.network == EGRESS else "none"
        runtime = "runsc" if job.runtime == RUNSC else self._sandbox.runtime
        options = create_options(
            spec,
            job,
            network=network,
            runtime=runtime,
            tmp_bytes=self._sandbox.tmp_bytes,
            owner=self._owner,
        )
        try:
            container, attached = await asyncio.to_thread(self._create, options)
        except DockerException as exc:
            self._metrics.container_failures.inc()
            self._present.pop(spec.image, None)
            return Outcome.infrastructure(f"container could not be created: {_explain(exc)}")
        active = self._active[job.run_id] = _Active(container)
        ledger = self._metrics.sandboxes
        ledger.started(
            container.id, resource_class(job.limits.memory_bytes), job.limits.memory_bytes
        )
        ledger.assigned(container.id, execution_type_label(job.execution_type))
        try:
            return await self._run(job, active, attached, on_output, on_started, begun)
        except DockerException as exc:
            return Outcome.infrastructure(f"container failed: {_explain(exc)}")
        except OSError as exc:  # the attach stream broke
            return Outcome.infrastructure(f"container output stream failed: {exc}")
        finally:
            active.finished.set()
            attached.close()
            self._active.pop(job.run_id, None)
            self._cancelled.discard(job.run_id)
            ledger.removed(container.id)
            self._remove_later(container)

    def _create(self, options: dict[str, Any]) -> tuple[Container, Attached]:
        """Create and attach (before start, so no output is missed); blocking."""
        container = self._client.containers.create(**options)
        try:
            api = self._client.api
            response = api.post(
                api._url("/containers/{0}/attach", container.id),
                None,
                params={"stdout": 1, "stderr": 1, "stream": 1},
                stream=True,
            )
            stream = api._get_raw_response_socket(response)
            stream._sock.setblocking(False)  # read on the event loop
        except BaseException:
            with contextlib.suppress(DockerException):
                container.remove(force=True)
            raise
        return container, Attached(response, stream)

    async def _run(
        self,
        job: Job,
        active: _Active,
        attached: Attached,
        on_output: OutputSink,
        on_started: StartedHook,
        begun: float,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        pump = asyncio.ensure_future(_pump(loop, attached.raw, on_output))
        try:
            await asyncio.to_thread(active.container.start)
        except BaseException:
            pump.cancel()
            self._metrics.container_failures.inc()
            raise
        self._metrics.container_starts.inc()
        # Handoff of a container run = create + attach + start (no warm pool for it).
        self._metrics.handoff.labels(self.name).observe(time.monotonic() - begun)
        started = datetime.now(UTC)
        usage = ContainerUsage.start(active.container.id)
        try:
            await on_started(started)
            done, _ = await asyncio.wait({pump}, timeout=job.limits.timeout_s)
            timed_out = not done
            if timed_out:
                await asyncio.to_thread(_kill, active.container, signal.SIGKILL)
            await pump
        finally:
            pump.cancel()  # only still running if something above failed
            measured = await usage.stop()
        status, flagged = await asyncio.to_thread(_final_state, active.container)
        cancelled = job.run_id in self._cancelled
        oom = _oom(flagged, measured.pop("oom_kills", 0), status, timed_out or cancelled)
        killed = timed_out or cancelled or oom
        trailer: dict[str, Any] = {
            "exit_code": status,
            "signal": status - 128 if killed and 128 < status < 160 else 0,
            "wall_seconds": (datetime.now(UTC) - started).total_seconds(),
            **measured,
        }
        return outcome_from(
            trailer,
            status=status,
            started_at=started,
            timed_out=timed_out,
            cancelled=cancelled,
            oom_hint=oom,
        )

    async def cancel(self, run_id: str) -> bool:
        """SIGTERM (Docker's init passes it on), the grace period, then SIGKILL."""
        active = self._active.get(run_id)
        if active is None:
            return False
        self._cancelled.add(run_id)
        await asyncio.to_thread(_kill, active.container, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(active.finished.wait(), self._sandbox.cancel_grace_s)
            return True
        await asyncio.to_thread(_kill, active.container, signal.SIGKILL)
        return True

    async def close(self) -> None:
        """Kill what still runs; wait for the removals in flight."""
        for active in list(self._active.values()):
            await asyncio.to_thread(_kill, active.container, signal.SIGKILL)
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        await asyncio.to_thread(self._client.close)

    def _remove_later(self, container: Container) -> None:
        """Remove the container off the run's path."""
        task = asyncio.create_task(asyncio.to_thread(_remove, container))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)


async def _pump(loop: asyncio.AbstractEventLoop, raw: socket.socket, on_output: OutputSink) -> None:
    """Output until the container closes the stream."""
    async for name, data in frames(loop, raw):
        on_output(name, data)


def _oom(flagged: bool, oom_kills: int, status: int, signalled: bool) -> bool:
    """Whether the memory limit ended the run. The engine's OOMKilled flag alone misses
    some OOM kills (its event races the container's exit and is lost: 3 in 30 under load
    here), and the cgroup counter is only sampled. So a SIGKILL (status 137) the executor
    did not send counts too: inside a sandbox only the kernel's OOM killer sends one, or
    the command itself (`kill -9 $$`), which is then reported as OOM_KILLED."""
    if flagged or oom_kills > 0:
        return True
    return status == 128 + signal.SIGKILL and not signalled


def _kill(container: Container, sig: int) -> None:
    with contextlib.suppress(DockerException):  # already gone
        container.kill(signal=sig)


def _final_state(container: Container) -> tuple[int, bool]:
    """Exit status and the engine's OOMKilled flag (the stream ended: it has exited)."""
    result = container.wait(timeout=30)
    container.reload()
    state = container.attrs.get("State", {})
    return int(result.get("StatusCode", -1)), bool(state.get("OOMKilled"))


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except NotFound:
        pass
    except DockerException as exc:
        log.warning("could not remove container %s: %s", container.short_id, exc)


def _explain(exc: DockerException) -> str:
    """The engine's own words when it gave some (APIError.explanation), else the error."""
    return str(getattr(exc, "explanation", None) or exc)
