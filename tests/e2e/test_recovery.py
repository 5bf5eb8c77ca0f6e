"""Killing the scheduler while a run executes loses nothing: after a restart
it catches up on the executor's events and the run ends SUCCEEDED."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cli import natsd
from cli import stack as dev_stack
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from tests.conftest import require

SLOW_SCRIPT = b"import time\nprint('started', flush=True)\ntime.sleep(4)\nprint('done')\n"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dev_stack.Stack]:
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    running = dev_stack.up(tmp_path / "var", say=lambda _: None)
    yield running
    running.stop()


def _md(stack: dev_stack.Stack) -> list[tuple[str, str]]:
    token = stack.admin_token_file.read_text().strip()
    return [("authorization", f"Bearer {token}")]


def _publish_slow(stack: dev_stack.Stack) -> None:
    with grpc.insecure_channel(stack.address("catalogue")) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        stub.CreateScript(
            catalogue_pb2.CreateScriptRequest(
                script=catalogue_pb2.Script(
                    name="slow", execution_type=common_pb2.EXECUTION_TYPE_PYTHON
                )
            ),
            metadata=_md(stack),
            timeout=10,
        )
        stub.PublishVersion(
            catalogue_pb2.PublishVersionRequest(
                script_name="slow",
                version="1.0.0",
                content=SLOW_SCRIPT,
                sha256=hashlib.sha256(SLOW_SCRIPT).hexdigest(),
            ),
            metadata=_md(stack),
            timeout=10,
        )


def _get(stack: dev_stack.Stack, run_id: str) -> scheduler_pb2.Run:
    with grpc.insecure_channel(stack.address("scheduler")) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        return stub.GetRun(scheduler_pb2.GetRunRequest(id=run_id), metadata=_md(stack), timeout=10)


def _wait_state(
    stack: dev_stack.Stack, run_id: str, states: set[int], timeout: float
) -> scheduler_pb2.Run:
    deadline = time.monotonic() + timeout
    run = _get(stack, run_id)
    while run.state not in states and time.monotonic() < deadline:
        time.sleep(0.2)
        run = _get(stack, run_id)
    return run


def test_run_succeeds_when_scheduler_killed_mid_run(stack: dev_stack.Stack) -> None:
    """SIGKILL the scheduler while a run executes; after restart the run is SUCCEEDED."""
    _publish_slow(stack)
    with grpc.insecure_channel(stack.address("scheduler")) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        run = stub.SubmitRun(
            scheduler_pb2.SubmitRunRequest(script=common_pb2.ScriptRef(name="slow")),
            metadata=_md(stack),
            timeout=20,
        )
    running = _wait_state(stack, run.id, {common_pb2.RUN_STATE_RUNNING}, 60)
    assert running.state == common_pb2.RUN_STATE_RUNNING

    scheduler = stack.processes["scheduler"]
    scheduler.send_signal(signal.SIGKILL)
    scheduler.wait(10)
    time.sleep(5)  # the run finishes while no scheduler is up
    stack.spawn("scheduler")
    stack.wait_healthy("scheduler")

    final = _wait_state(
        stack, run.id, {common_pb2.RUN_STATE_SUCCEEDED, common_pb2.RUN_STATE_FAILED}, 60
    )
    assert final.state == common_pb2.RUN_STATE_SUCCEEDED, final
    assert b"done" in final.output.stdout
