"""Replacing an executor the way an upgrade does (docs/upgrades.md, "Draining an
executor"): SIGTERM while a run executes lets that run end with its own outcome within
RUNBOX_GRPC__SHUTDOWN_GRACE_S and the process exit 0; a run submitted while no executor
serves waits, and runs once the new executor is up."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli import natsd
from cli import stack as dev_stack
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from tests.conftest import docker_available, require, sandbox_image_available

SLOW = b"import time\nprint('started', flush=True)\ntime.sleep(4)\nprint('done')\n"
RS = common_pb2.RunState
TERMINAL = {
    RS.RUN_STATE_SUCCEEDED,
    RS.RUN_STATE_FAILED,
    RS.RUN_STATE_TIMED_OUT,
    RS.RUN_STATE_CANCELLED,
    RS.RUN_STATE_LOST,
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dev_stack.Stack]:
    """The local stack, its executor given 60 s to drain."""
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    require(docker_available(), "no Docker engine reachable (make docker)")
    require(sandbox_image_available(), "sandbox image missing (make sandbox-image)")
    settings = {"executor": {"RUNBOX_GRPC__SHUTDOWN_GRACE_S": "60"}}
    running = dev_stack.up(tmp_path / "var", say=lambda _: None, settings=settings)
    yield running
    running.stop()


class Client:
    """The catalogue and scheduler of a stack, as its admin."""

    def __init__(self, stack: dev_stack.Stack) -> None:
        token = stack.admin_token_file.read_text().strip()
        self.md: tuple[tuple[str, str | bytes], ...] = (("authorization", f"Bearer {token}"),)
        self._channels = [
            grpc.insecure_channel(stack.address(s)) for s in ("catalogue", "scheduler")
        ]
        self.catalogue = catalogue_pb2_grpc.CatalogueServiceStub(self._channels[0])
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self._channels[1])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def publish_slow(self) -> None:
        script = catalogue_pb2.Script(name="slow", execution_type=common_pb2.EXECUTION_TYPE_PYTHON)
        self.catalogue.CreateScript(
            catalogue_pb2.CreateScriptRequest(script=script), metadata=self.md, timeout=10
        )
        version = catalogue_pb2.PublishVersionRequest(
            script_name="slow",
            version="1.0.0",
            content=SLOW,
            sha256=hashlib.sha256(SLOW).hexdigest(),
        )
        self.catalogue.PublishVersion(version, metadata=self.md, timeout=10)

    def submit(self) -> str:
        request = scheduler_pb2.SubmitRunRequest(script=common_pb2.ScriptRef(name="slow"))
        return str(self.scheduler.SubmitRun(request, metadata=self.md, timeout=20).id)

    def get(self, run_id: str) -> scheduler_pb2.Run:
        request = scheduler_pb2.GetRunRequest(id=run_id)
        return self.scheduler.GetRun(request, metadata=self.md, timeout=10)

    def wait(self, run_id: str, states: set[Any], timeout: float = 90) -> scheduler_pb2.Run:
        deadline = time.monotonic() + timeout
        run = self.get(run_id)
        while run.state not in states and time.monotonic() < deadline:
            time.sleep(0.2)
            run = self.get(run_id)
        return run


def refused_while_draining(
    address: str, md: tuple[tuple[str, str | bytes], ...]
) -> grpc.StatusCode | None:
    """Once the executor stopped serving (health not SERVING), the code an Execute gets."""
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    break  # the server stopped
                continue  # a slow answer (a loaded machine) says nothing yet
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.1)
        request = executor_pb2.ExecuteRequest(
            run_id="drain-probe", script_name="slow", script_version="1.0.0",
            execution_type=common_pb2.EXECUTION_TYPE_PYTHON, content=SLOW,
            sha256=hashlib.sha256(SLOW).hexdigest(),
        )  # fmt: skip
        try:
            executor_pb2_grpc.ExecutorServiceStub(channel).Execute(request, metadata=md, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return None


@pytest.mark.timeout(240)
def test_executor_sigterm_finishes_started_run_and_new_executor_takes_waiting(
    stack: dev_stack.Stack,
) -> None:
    """SIGTERM mid-run: the run still SUCCEEDS; a run submitted meanwhile runs on the new executor."""
    client = Client(stack)
    try:
        client.publish_slow()
        started = client.submit()
        assert client.wait(started, {RS.RUN_STATE_RUNNING}).state == RS.RUN_STATE_RUNNING

        executor = stack.processes["executor"]
        sigterm_at = datetime.now(UTC)
        executor.send_signal(signal.SIGTERM)
        refused = refused_while_draining(stack.address("executor"), client.md)
        assert refused == grpc.StatusCode.UNAVAILABLE
        assert executor.wait(120) == 0
        finished = client.wait(started, TERMINAL)
        assert finished.state == RS.RUN_STATE_SUCCEEDED, finished
        assert finished.finish_time.ToDatetime(UTC) > sigterm_at, "it ended before the drain"
        assert finished.output.stdout == b"started\ndone\n"

        waiting = client.submit()
        assert client.get(waiting).state == RS.RUN_STATE_PENDING
        stack.spawn("executor")
        stack.wait_healthy("executor")
        final = client.wait(waiting, TERMINAL)
        assert final.state == RS.RUN_STATE_SUCCEEDED, final
        assert final.attempt == 1
    finally:
        client.close()
