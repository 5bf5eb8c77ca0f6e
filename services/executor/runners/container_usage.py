"""CPU, peak memory and block I/O of a running container, from its cgroup on the host.

A container run has no agent to measure itself, and the engine's stats API is slow (it
samples twice) and empty once the container has exited, when its cgroup is gone. So the
runner samples the cgroup files directly while the container runs: the peak memory is the
kernel's own high-water mark, CPU and I/O are the last sample (short by at most one
interval). Best effort: when the executor cannot see the host's cgroup tree (it runs in a
container itself, or the engine uses another layout) the counters stay 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path("/sys/fs/cgroup")
INTERVAL_S = 0.25


def _directories(container_id: str) -> list[Path]:
    """Where Docker puts a container's cgroup: v2 (systemd or cgroupfs driver), then v1."""
    return [
        ROOT / "system.slice" / f"docker-{container_id}.scope",
        ROOT / "docker" / container_id,
        ROOT / "memory" / "docker" / container_id,
        ROOT / "memory" / "system.slice" / f"docker-{container_id}.scope",
    ]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class ContainerUsage:
    """Samples one container's cgroup counters until stopped."""

    def __init__(self, container_id: str) -> None:
        self._id = container_id
        self._values: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, container_id: str) -> ContainerUsage:
        usage = cls(container_id)
        usage._task = asyncio.create_task(usage._sample_loop())
        return usage

    async def stop(self) -> dict[str, Any]:
        """The last values seen (cpu_seconds, peak_memory_bytes, io_*_bytes, and oom_kills:
        the kernel's OOM kills in the container so far), or {}."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return dict(self._values)

    async def _sample_loop(self) -> None:
        reader = self._reader()
        if reader is None:
            return
        while True:
            values = reader()
            if values:
                self._values = values
            await asyncio.sleep(INTERVAL_S)

    def _reader(self) -> Callable[[], dict[str, Any]] | None:
        for directory in _directories(self._id):
            if (directory / "cpu.stat").exists() and (directory / "memory.peak").exists():
                found = directory
                return lambda: _sample_v2(found)
            if (directory / "memory.max_usage_in_bytes").exists():
                relative = directory.relative_to(ROOT / "memory")
                return lambda: _sample_v1(relative)
        return None


def current_memory(container_id: str) -> int | None:
    """A container's memory use now (cgroup v2 memory.current, v1 memory.usage_in_bytes),
    or None when its cgroup cannot be seen. Blocking file reads: call off the event loop."""
    for directory in _directories(container_id):
        for name in ("memory.current", "memory.usage_in_bytes"):
            text = _read(directory / name).strip()
            if text.isdigit():
                return int(text)
    return None


def _sample_v2(directory: Path) -> dict[str, Any]:
    stat = dict(line.split() for line in _read(directory / "cpu.stat").splitlines() if line)
    peak = _read(directory / "memory.peak").strip()
    if not stat or not peak:
        return {}
    read = write = 0
    for line in _read(directory / "io.stat").splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return {
        "oom_kills": _counter(_read(directory / "memory.events"), "oom_kill"),
        "cpu_seconds": int(stat.get("usage_usec", 0)) / 1e6,
        "peak_memory_bytes": int(peak),
        "io_read_bytes": read,
        "io_write_bytes": write,
    }


def _sample_v1(relative: Path) -> dict[str, Any]:
    """cgroup v1: one tree per controller, the container at the same `relative` place."""

    def path(controller: str, name: str) -> Path:
        return ROOT / controller / relative / name

    cpu_ns = _read(path("cpuacct", "cpuacct.usage")).strip()
    peak = _read(path("memory", "memory.max_usage_in_bytes")).strip()
    if not cpu_ns or not peak:
        return {}
    read = write = 0
    for line in _read(path("blkio", "blkio.throttle.io_service_bytes")).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            read += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            write += int(parts[2])
    return {
        "oom_kills": _counter(_read(path("memory", "memory.oom_control")), "oom_kill"),
        "cpu_seconds": int(cpu_ns) / 1e9,
        "peak_memory_bytes": int(peak),
        "io_read_bytes": read,
        "io_write_bytes": write,
    }


def _counter(text: str, name: str) -> int:
    """A `name value` line of a flat-keyed cgroup file (memory.events, memory.oom_control)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0
