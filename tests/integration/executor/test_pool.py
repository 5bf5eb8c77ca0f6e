"""The warm pool: containers waiting before runs, one per run by default, reuse on request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import nats
import pytest

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from services.executor.config import ExecutorSettings
from services.executor.pool import OWNER_LABEL, PoolClass, hardened_options, sandbox_owner
from services.executor.server import build
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.conftest import SANDBOX_IMAGE
from tests.integration.executor.conftest import ExecutorHarness, open_harness
from tests.integration.helpers import settings_for

pytestmark = pytest.mark.usefixtures("docker_engine")
RS = common_pb2
OWN_FILES = [".secrets.json", "main.py", "params.json"]  # what every run starts with
PROBE = """
import json, os, socket, subprocess
left = sorted(os.listdir("/work") + os.listdir("/tmp") + os.listdir("/artifacts"))
def agent(pid):  # the agent (PID 1) and its zygote run the agent's own code
    try:
        return open("/proc/%s/cmdline" % pid, "rb").read() == open("/proc/1/cmdline", "rb").read()
    except OSError:
        return False
procs = sorted(p for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid()) and not agent(p))
open("/tmp/junk", "w").write("x")
open("/artifacts/junk", "w").write("x")
subprocess.Popen(["sleep", "300"], start_new_session=True)  # a daemon left behind
print(json.dumps({"host": socket.gethostname(), "left": left, "procs": procs}))
"""


@pytest.fixture
async def pooled(tmp_path: Path, nats_server, tokens) -> AsyncIterator[ExecutorHarness]:  # type: ignore[no-untyped-def]
    settings = settings_for(
        ExecutorSettings,
        tmp_path,
        "executor",
        nats_url=nats_server.url,
        principals_file=tokens.principals_file,
        sandbox={
            "backend": "docker",
            "timeout_s": 30,
            "pool": {"min_idle": 2, "reuse_max_runs": 3, "idle_timeout_s": 60},
        },
        work_dir=str(tmp_path / "work"),
    )
    running: Running = await launch(build_runtime("executor", settings), build)
    nc = await nats.connect(nats_server.url)
    try:
        async with open_channel(running.address, token=tokens.service) as channel:
            yield ExecutorHarness(
                running, executor_pb2_grpc.ExecutorServiceStub(channel), nc.jetstream()
            )
    finally:
        await nc.close()
        await running.stop()


async def _pool(h: ExecutorHarness) -> executor_pb2.GetPoolStatusResponse:
    return await h.stub.GetPoolStatus(executor_pb2.GetPoolStatusRequest())


async def _wait_idle(h: ExecutorHarness, count: int) -> executor_pb2.PoolClass:
    async def poll() -> executor_pb2.PoolClass:
        while True:
            status = await _pool(h)
            if status.classes and status.classes[0].idle >= count:
                return status.classes[0]
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), 60)


def _sandboxes() -> set[str]:
    client = docker.from_env()
    try:
        return {c.id for c in client.containers.list(filters={"label": "org.runbox.role=sandbox"})}
    finally:
        client.close()


async def _probe(h: ExecutorHarness, reuse: bool, script: str = "probe") -> dict[str, Any]:
    import json

    request = h.request(PROBE)
    request.script_name = script
    if reuse:
        request.isolation = common_pb2.ISOLATION_REUSE
    finished, _ = await h.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output.stderr
    return dict(json.loads(finished.output.stdout))


async def test_pool_is_warm_before_the_first_run(pooled: ExecutorHarness) -> None:
    cls = await _wait_idle(pooled, 2)
    assert cls.min_size == 2 and cls.busy == 0
    assert cls.resource_class.startswith("runc-1cpu-256mib")
    before = _sandboxes()
    assert len(before) >= 2
    first = await _probe(pooled, reuse=False)
    # The run took one of the containers that were already running.
    assert any(c.startswith(first["host"]) for c in before)


async def test_per_run_isolation_never_shares_a_container(pooled: ExecutorHarness) -> None:
    await _wait_idle(pooled, 2)
    first = await _probe(pooled, reuse=False)
    second = await _probe(pooled, reuse=False)
    assert first["host"] != second["host"]
    assert second["left"] == OWN_FILES
    # The used container is removed off the run's path and the pool refills.
    await _wait_idle(pooled, 2)
    assert not any(c.startswith(first["host"]) for c in _sandboxes())


async def test_reuse_keeps_a_container_per_script_but_nothing_of_a_run(
    pooled: ExecutorHarness,
) -> None:
    await _wait_idle(pooled, 2)
    runs = [await _probe(pooled, reuse=True) for _ in range(4)]
    hosts = [r["host"] for r in runs]
    # reuse_max_runs=3: three runs share a container, the fourth gets a new one.
    assert hosts[0] == hosts[1] == hosts[2] != hosts[3]
    for run in runs[1:3]:
        assert run["left"] == OWN_FILES  # fresh /work, /tmp and /artifacts
        assert run["procs"] == []  # the daemon of the last run is gone (only agent and self)
    other = await _probe(pooled, reuse=True, script="another")
    assert other["host"] not in hosts  # reuse is per script


async def test_a_timed_out_reused_container_is_recycled(pooled: ExecutorHarness) -> None:
    await _wait_idle(pooled, 1)
    host = (await _probe(pooled, reuse=True, script="slow"))["host"]
    request = pooled.request("import time\ntime.sleep(60)\n", timeout_s=1)
    request.script_name = "slow"
    request.isolation = common_pb2.ISOLATION_REUSE
    finished, _ = await pooled.run(request)
    assert finished.state == RS.RUN_STATE_TIMED_OUT
    after = (await _probe(pooled, reuse=True, script="slow"))["host"]
    assert after != host


@pytest.mark.parametrize(
    ("script", "code", "stderr"),
    [
        ("import sys\nsys.exit(3)\n", 3, b""),
        ("raise ValueError('boom')\n", 1, b"ValueError: boom"),
        ("import sys\nsys.exit('bad input')\n", 1, b"bad input"),
        (
            "import sys\nassert __name__ == '__main__' and sys.argv[0].endswith('main.py')\n"
            "assert sys.stdin.read() == ''\n",
            0,
            b"",
        ),
    ],
    ids=["exit-3", "exception", "exit-message", "main-argv-stdin"],
)
async def test_python_in_the_warm_interpreter_behaves_like_a_fresh_one(
    pooled: ExecutorHarness, script: str, code: int, stderr: bytes
) -> None:
    finished, _ = await pooled.run(pooled.request(script))
    assert finished.exit.exit_code == code, finished.output.stderr
    assert stderr in finished.output.stderr


async def test_handoff_latency_and_pool_gauges_are_exported(pooled: ExecutorHarness) -> None:
    from prometheus_client import generate_latest

    await _wait_idle(pooled, 2)
    await _probe(pooled, reuse=False)
    body = generate_latest(pooled.running.runtime.registry).decode()
    assert 'runbox_executor_handoff_seconds_count{runner="docker"} 1.0' in body
    assert 'runbox_executor_pool_acquires_total{resource_class="small"' in body
    assert 'state="idle"' in body and "runbox_executor_pool_containers" in body


async def test_start_up_removes_what_an_earlier_process_left(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """An executor that died left a warm sandbox and an exited container; its next start (same
    work dir) removes both, labels its new sandboxes as its own, and leaves another
    executor's containers alone."""
    from prometheus_client import generate_latest

    client = docker.from_env()
    cls = PoolClass(SANDBOX_IMAGE, "", 1.0, 256 << 20, 128, 64 << 20, 64 << 20, "none")
    mine = sandbox_owner(tmp_path / "work")  # the work dir the harness's executor uses
    other = sandbox_owner(tmp_path / "other")
    assert mine != other and sandbox_owner(tmp_path / "work") == mine  # kept, not remade

    def leftover(owner: str) -> str:
        options = hardened_options(cls, owner)
        options.update(command=["sleep", "300"], stdin_open=False)
        return str(client.containers.run(**options).id)

    left = [leftover(mine), leftover(mine)]
    client.containers.get(left[1]).kill()  # one exited, one still running
    foreign = leftover(other)
    try:
        async with open_harness(tmp_path, nats_server.url, tokens, "docker") as h:
            await _wait_idle(h, 1)
            present = {c.id for c in client.containers.list(all=True)}
            assert not set(left) & present
            assert foreign in present
            body = generate_latest(h.running.runtime.registry).decode()
            assert "runbox_executor_orphans_removed_total 2.0" in body
            owned = client.containers.list(filters={"label": f"{OWNER_LABEL}={mine}"})
            assert owned and {c.labels["org.runbox.role"] for c in owned} == {"sandbox"}
    finally:
        client.containers.get(foreign).remove(force=True)
        client.close()
