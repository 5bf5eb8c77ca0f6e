"""What the hostile-script tests share: a run driver that keeps only what a test needs of a
run's events (a flood of LOG events must not fill the test process), the canary that checks
a sandbox starts clean, and the watch on the host (its files, env, containers, processes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from tests.integration.executor.conftest import ExecutorHarness

RS = common_pb2
SANDBOX_UID = 10001
OWN_FILES = [".secrets.json", "main.py", "params.json"]  # what every run's /work starts with
NO_CAPS = "0000000000000000"
SETTLE_S = 30.0
CLASS = "org.runbox.pool_class"

# Every hostile script first says which container it runs in (the container's short id).
WHO = "import socket as _s\nprint('HOST=' + _s.gethostname(), flush=True)\n"

CANARY = """
import json, os, socket
def ls(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return ["error:%d" % exc.errno]
own = str(os.getpid())
def agent(pid):
    try:
        return open("/proc/%s/cmdline" % pid, "rb").read() == open("/proc/1/cmdline", "rb").read()
    except OSError:
        return False
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
print(json.dumps({
    "host": socket.gethostname(),
    "work": ls("/work"), "tmp": ls("/tmp"), "artifacts": ls("/artifacts"), "shm": ls("/dev/shm"),
    # Besides this script: only the agent (PID 1) and its zygote, which run the agent's code.
    "procs": sorted(p for p in os.listdir("/proc") if p.isdigit() and p != own and not agent(p)),
    "uid": os.getuid(), "gid": os.getgid(), "capeff": status["CapEff"].strip(),
    "env": sorted(k for k in os.environ if not k.startswith("RUNBOX_")),
}))
"""


@dataclass
class Ended:
    """The FINISHED event of a run and how much live output its LOG events carried."""

    finished: events_pb2.RunEvent
    log_bytes: int = 0
    log_events: int = 0
    largest_log: int = 0

    @property
    def host(self) -> str:
        """The container the script ran in, from its first output line."""
        match = re.match(rb"HOST=(\w+)", self.finished.output.stdout)
        assert match, self.finished.output.stdout[:200]
        return match.group(1).decode()


async def drive(
    h: ExecutorHarness,
    request: executor_pb2.ExecuteRequest,
    *,
    on_log: Callable[[bytes], Awaitable[None]] | None = None,
    wait_s: float = 90,
) -> Ended:
    """Execute and follow the run's events to FINISHED, counting (not keeping) LOG data."""
    sub = await h.js.subscribe(
        f"runbox.events.run.{request.run_id}.>",
        ordered_consumer=True,
        pending_bytes_limit=64 * 1024 * 1024,
    )
    try:
        await h.stub.Execute(request)

        async def follow() -> Ended:
            counts = [0, 0, 0]
            while True:
                msg = await sub.next_msg(timeout=wait_s)
                event = events_pb2.RunEvent.FromString(msg.data)
                if event.type == events_pb2.RUN_EVENT_TYPE_LOG:
                    size = len(event.log.data)
                    counts[0] += size
                    counts[1] += 1
                    counts[2] = max(counts[2], size)
                    if on_log is not None:
                        await on_log(event.log.data)
                if event.type == events_pb2.RUN_EVENT_TYPE_FINISHED:
                    return Ended(event, counts[0], counts[1], counts[2])

        return await asyncio.wait_for(follow(), wait_s)
    finally:
        await sub.unsubscribe()


def script_request(
    h: ExecutorHarness,
    script: str,
    runtime: int,
    *,
    name: str = "hostile",
    reuse: bool = False,
    timeout_s: float = 10,
    **extra: Any,
) -> executor_pb2.ExecuteRequest:
    request = h.request(script, timeout_s=timeout_s, **extra)
    request.script_name = name
    request.runtime = runtime  # type: ignore[assignment]  # a Runtime enum value
    if reuse:
        request.isolation = RS.ISOLATION_REUSE
    return request


async def canary(
    h: ExecutorHarness, runtime: int, *, name: str = "canary", reuse: bool = False
) -> dict[str, Any]:
    """Run the canary; it must succeed and find a clean sandbox."""
    ended = await drive(h, script_request(h, CANARY, runtime, name=name, reuse=reuse))
    finished = ended.finished
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output.stderr)
    seen: dict[str, Any] = json.loads(finished.output.stdout)
    return seen


def assert_clean(seen: dict[str, Any]) -> None:
    """Nothing of an earlier run: only the run's own files, no other process, no privilege."""
    places = {k: seen[k] for k in ("work", "tmp", "artifacts", "shm", "procs")}
    expected = {"work": OWN_FILES, "tmp": [], "artifacts": [], "shm": [], "procs": []}
    assert places == expected, f"left by an earlier run: {places}"
    who = (seen["uid"], seen["gid"], seen["capeff"])
    assert who == (SANDBOX_UID, SANDBOX_UID, NO_CAPS), who
    assert seen["env"] == ["HOME", "LANG", "PATH", "PYTHONUNBUFFERED"], seen["env"]


class HostWatch:
    """What on the host must not change: a sentinel file (the sandbox is told its path and
    tries to read and overwrite it), the executor process's env var canary, the containers
    and processes of the sandbox classes this module uses."""

    def __init__(self, directory: Path, classes: set[str]) -> None:
        self.directory = directory
        self.classes = classes
        self.sentinel = directory / "host-secret.txt"
        self.content = f"host secret {secrets.token_hex(16)}\n".encode()
        self.sentinel.write_bytes(self.content)
        self.sentinel.chmod(0o644)  # world-readable: only isolation keeps the sandbox out
        self.env_name = f"RUNBOX_HOSTILE_{secrets.token_hex(4).upper()}"
        self.env_value = secrets.token_hex(16)
        self.mtime_ns = self.sentinel.stat().st_mtime_ns
        self.listing = sorted(p.name for p in directory.iterdir())
        # Sandboxes of these classes left by an earlier, killed session are not ours to count.
        self.earlier = self._sandboxes()

    def assert_unchanged(self) -> None:
        assert self.sentinel.read_bytes() == self.content
        assert self.sentinel.stat().st_mtime_ns == self.mtime_ns
        assert sorted(p.name for p in self.directory.iterdir()) == self.listing
        assert os.environ.get(self.env_name) == self.env_value

    async def assert_settled(self, h: ExecutorHarness, gone: str | None) -> None:
        """The run's container (if per-run) is removed and none of its processes remain on the
        host; the sandboxes of our classes are no more than the pool accounts for."""

        async def poll() -> None:
            while True:
                problems = await asyncio.to_thread(self._problems, gone)
                pooled = await _pooled(h, self.classes)
                if not problems and len(self._sandboxes() - self.earlier) <= pooled:
                    return
                await asyncio.sleep(0.2)

        try:
            await asyncio.wait_for(poll(), SETTLE_S)
        except TimeoutError:
            problems = await asyncio.to_thread(self._problems, gone)
            raise AssertionError(
                f"host not settled: {problems}; {len(self._sandboxes() - self.earlier)} sandboxes of "
                f"{sorted(self.classes)} vs {await _pooled(h, self.classes)} pooled"
            ) from None

    def _problems(self, gone: str | None) -> list[str]:
        if gone is None:
            return []
        problems = []
        client = docker.from_env()
        try:
            if client.api.containers(all=True, quiet=True, filters={"id": gone}):
                problems.append(f"container {gone} still exists")
        finally:
            client.close()
        pids = host_pids_in_cgroup(gone)
        if pids:
            problems.append(f"host processes of {gone} remain: {pids}")
        return problems

    def kill_sandboxes(self) -> None:
        """Kill every sandbox of the watched classes started since the watch began."""
        client = docker.from_env()
        try:
            for container in self._sandboxes() - self.earlier:
                with contextlib.suppress(docker.errors.DockerException):
                    client.api.kill(container)
        finally:
            client.close()

    def _sandboxes(self) -> set[str]:
        # The low-level listing: the high-level one inspects each container, and one removed
        # in between raises NotFound.
        client = docker.from_env()
        try:
            return {
                c["Id"]
                for cls in self.classes
                for c in client.api.containers(
                    all=True, quiet=True, filters={"label": f"{CLASS}={cls}"}
                )
            }
        finally:
            client.close()


async def _pooled(h: ExecutorHarness, classes: set[str]) -> int:
    status = await h.stub.GetPoolStatus(executor_pb2.GetPoolStatusRequest())
    return sum(c.idle + c.busy + c.starting for c in status.classes if c.resource_class in classes)


def host_pids_in_cgroup(container: str) -> list[int]:
    """Host processes whose cgroup path names the container (runc: its processes; runsc: the
    sandbox and gofer)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if container in text:
            found.append(int(entry))
    return found


def host_process_count() -> int:
    return sum(1 for p in os.listdir("/proc") if p.isdigit())


def rss_bytes() -> int:
    """The test process's (and so the in-process executor's) resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class MemoryGuard:
    """Watches the test process's memory from a thread while a flood runs (the event loop
    may be too busy to): records the peak growth and, past `limit`, kills the sandboxes of
    the watched classes and sets `tripped`, so that an executor that buffers output fails
    the test (whose teardown stops it) instead of exhausting the machine."""

    def __init__(self, host: HostWatch, limit: int) -> None:
        self._host = host
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self.tripped = asyncio.Event()
        self._base = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="memory-guard", daemon=True)
        self.peak_growth = 0

    def __enter__(self) -> MemoryGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            growth = rss_bytes() - self._base
            self.peak_growth = max(self.peak_growth, growth)
            if growth > self._limit:
                self._host.kill_sandboxes()
                self._loop.call_soon_threadsafe(self.tripped.set)
                return
            time.sleep(0.005)
