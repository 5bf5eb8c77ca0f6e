"""The executor's resource metrics, moved by real runs: a python run in a Docker sandbox
(CPU, peak and current memory, block reads, duration, containers running, memory reserved)
and a local command (block writes: a sandbox has no writable block device by design)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import docker
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from runbox.common.v1 import common_pb2
from services.executor.pool import OWNER_LABEL, sandbox_owner
from tests.integration.executor.conftest import ExecutorHarness, open_harness

pytestmark = pytest.mark.usefixtures("docker_engine")
RS = common_pb2
MIB = 1 << 20
HELD = 96 * MIB
# Burns CPU, reads the image's files past the page cache, holds HELD bytes until the test
# says so (it writes /tmp/release into the container), then exits.
HOLDER = f"""
import glob, mmap, os, time
sum(i * i for i in range(3_000_000))
buf = mmap.mmap(-1, 1 << 20)
for path in glob.glob("/usr/lib/python3*/**/*.py", recursive=True)[:200]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    os.readv(fd, [buf])
    os.close(fd)
held = b"x" * {HELD}
print("holding", flush=True)
while not os.path.exists("/tmp/release"):
    time.sleep(0.05)
print(len(held))
"""


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Wait for a known point, with a clear failure."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def executor(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[ExecutorHarness]:
    commands = {"dd": "/usr/bin/dd"}
    async with open_harness(
        tmp_path,
        nats_server.url,
        tokens,
        "docker",
        local={"commands": commands},
    ) as harness:
        yield harness


def release(work_dir: Path) -> None:
    """Tell the holder in this executor's sandboxes to end (a file in their /tmp)."""
    client = docker.from_env()
    try:
        owner = sandbox_owner(work_dir)
        for container in client.containers.list(filters={"label": f"{OWNER_LABEL}={owner}"}):
            container.exec_run(["touch", "/tmp/release"], user="10001")
    finally:
        client.close()


async def test_sandbox_run_moves_every_resource_metric(
    executor: ExecutorHarness, tmp_path: Path
) -> None:
    """A python sandbox run moves CPU, peak and current memory, reads, duration and the
    host's container and reserved-memory gauges; none of them carries a run id."""
    registry = executor.running.runtime.registry
    py = {"execution_type": "python", "resource_class": "small"}
    assert sample(registry, "runbox_executor_sandbox_memory_budget_bytes") > 0
    await until(
        lambda: (
            sample(registry, "runbox_executor_sandbox_containers_running", resource_class="small")
            >= 1
        ),
        "a warm sandbox",
    )
    request = executor.request(HOLDER, timeout_s=60)
    events = asyncio.ensure_future(executor.events(request.run_id))
    await executor.stub.Execute(request)
    await until(
        lambda: sample(registry, "runbox_executor_sandbox_memory_bytes", **py) >= HELD,
        "the run's current memory",
    )
    small = {"resource_class": "small"}
    scrape = {  # one collection, so both gauges see the same containers
        point.name: point.value
        for family in registry.collect()
        for point in family.samples
        if point.labels == small
    }
    running = scrape["runbox_executor_sandbox_containers_running"]
    assert running >= 1
    assert scrape["runbox_executor_sandbox_memory_reserved_bytes"] == running * 256 * MIB
    body = generate_latest(registry).decode()
    assert request.run_id not in body and "_created" not in body
    await asyncio.to_thread(release, tmp_path / "work")
    finished = (await events)[-1]
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output.stderr
    done = {**py, "outcome": "succeeded"}
    assert sample(registry, "runbox_executor_run_duration_seconds_count", **done) == 1
    assert sample(registry, "runbox_executor_run_duration_seconds_sum", **done) > 0
    assert sample(registry, "runbox_executor_sandbox_cpu_seconds_total", **py) > 0
    assert sample(registry, "runbox_executor_sandbox_peak_memory_bytes_count", **py) == 1
    assert sample(registry, "runbox_executor_sandbox_peak_memory_bytes_sum", **py) >= HELD
    assert sample(registry, "runbox_executor_sandbox_io_read_bytes_total", **py) > 0
    assert finished.usage.io_read_bytes == sample(
        registry, "runbox_executor_sandbox_io_read_bytes_total", **py
    )
    await until(
        lambda: sample(registry, "runbox_executor_sandbox_memory_bytes", **py) == 0,
        "the finished run's memory to leave the gauge",
    )


async def test_local_command_moves_the_write_counter(executor: ExecutorHarness) -> None:
    """A local command writing past the page cache moves the block-write counter of its type."""
    registry = executor.running.runtime.registry
    config = {
        "local": {
            "command": "dd",
            "args": ["if=/dev/zero", "of=written", "bs=1M", "count=4", "oflag=direct"],
        }
    }
    request = executor.request("command job\n", kind=RS.EXECUTION_TYPE_LOCAL, config=config)
    finished, _ = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output.stderr
    local = {"execution_type": "local", "resource_class": "small"}
    assert sample(registry, "runbox_executor_sandbox_io_write_bytes_total", **local) >= 4 * MIB
    assert (
        sample(registry, "runbox_executor_run_duration_seconds_count", **local, outcome="succeeded")
        == 1
    )
