"""Reading a container's cgroup counters (v1 and v2 layouts) from a fake cgroup tree."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.executor.runners import container_usage
from services.executor.runners.container_usage import ContainerUsage

ID = "c0ffee" * 10


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def sample(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setattr(container_usage, "ROOT", root)
    usage = ContainerUsage.start(ID)
    await asyncio.sleep(0.05)  # the first sample is taken at once
    return await usage.stop()


async def test_usage_reads_cgroup_v2_of_the_systemd_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cpu.stat usage_usec, memory.peak and io.stat rbytes/wbytes of the container's scope."""
    scope = tmp_path / "system.slice" / f"docker-{ID}.scope"
    write(scope / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    write(scope / "memory.peak", "41943040\n")
    write(scope / "memory.events", "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    write(scope / "io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2\n8:16 rbytes=1 wbytes=0\n")
    values = await sample(tmp_path, monkeypatch)
    assert values == {
        "oom_kills": 1,
        "cpu_seconds": 1.5,
        "peak_memory_bytes": 41943040,
        "io_read_bytes": 4097,
        "io_write_bytes": 8192,
    }


async def test_usage_reads_cgroup_v1_of_the_cgroupfs_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cpuacct.usage (ns), memory.max_usage_in_bytes and blkio bytes, one tree each."""
    write(tmp_path / "memory" / "docker" / ID / "memory.max_usage_in_bytes", "3821568\n")
    write(tmp_path / "cpuacct" / "docker" / ID / "cpuacct.usage", "250000000\n")
    write(
        tmp_path / "memory" / "docker" / ID / "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    )
    write(
        tmp_path / "blkio" / "docker" / ID / "blkio.throttle.io_service_bytes",
        "8:0 Read 512\n8:0 Write 1024\n8:0 Sync 0\n8:0 Total 1536\nTotal 1536\n",
    )
    values = await sample(tmp_path, monkeypatch)
    assert values == {
        "oom_kills": 0,
        "cpu_seconds": 0.25,
        "peak_memory_bytes": 3821568,
        "io_read_bytes": 512,
        "io_write_bytes": 1024,
    }


async def test_usage_is_empty_when_the_cgroup_is_not_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cgroup of the container (another layout, or the executor in a container): {}."""
    assert await sample(tmp_path, monkeypatch) == {}
