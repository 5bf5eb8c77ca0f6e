"""An executor without a sandbox (backend local): python and shell runs are refused unless the
operator allowed unsandboxed runs, and a run that did run unsandboxed says so."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from shared.clients import open_channel
from tests.integration.scheduler.test_runs import submit_request, wait_terminal
from tests.integration.stack import RunPath, start_run_path

REPO = Path(__file__).resolve().parents[3]
LOCAL = {"backend": "local", "timeout_s": 30}


async def _path(tmp_path: Path, nats_server: Any, tokens: Any, *, allowed: bool) -> RunPath:
    sandbox = LOCAL | {"allow_unsandboxed": allowed}
    return await start_run_path(tmp_path, nats_server.url, tokens, executor={"sandbox": sandbox})


async def _cli(path: RunPath, *args: str) -> str:
    """`runbox ARGS` against the path's services; its stdout (exit status 0 asserted)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "RUNBOX_SCHEDULER_ADDRESS": path.scheduler.address,
        "RUNBOX_CATALOGUE_ADDRESS": path.catalogue.address,
        "RUNBOX_TOKEN": path.tokens.admin,
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out + err).decode()
    return out.decode()


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        (common_pb2.EXECUTION_TYPE_PYTHON, "print('ran')\n"),
        (common_pb2.EXECUTION_TYPE_SHELL, "echo ran\n"),
    ],
)
async def test_script_run_fails_no_sandbox_when_unsandboxed_not_allowed(
    tmp_path: Path, nats_server: Any, tokens: Any, kind: int, content: str
) -> None:
    """Without the opt-in a python or shell run ends FAILED, reason NO_SANDBOX, saying how."""
    path = await _path(tmp_path, nats_server, tokens, allowed=False)
    try:
        await path.publish("refused", content, kind=kind)
        stub = path.scheduler_stub()
        run = await stub.SubmitRun(submit_request("refused"))
        final = await wait_terminal(stub, run.id)
        assert final.state == common_pb2.RUN_STATE_FAILED
        assert final.exit.reason == common_pb2.FAILURE_REASON_NO_SANDBOX
        assert "RUNBOX_SANDBOX__ALLOW_UNSANDBOXED=true" in final.exit.message
        assert not final.output.stdout
    finally:
        await path.close()


async def test_execute_is_failed_precondition_on_the_opt_in_setting(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """Execute itself refuses with FAILED_PRECONDITION naming sandbox.allow_unsandboxed."""
    path = await _path(tmp_path, nats_server, tokens, allowed=False)
    try:
        assert path.executor is not None
        async with open_channel(path.executor.address, token=tokens.admin) as channel:
            stub = executor_pb2_grpc.ExecutorServiceStub(channel)
            status = await stub.GetPoolStatus(executor_pb2.GetPoolStatusRequest())
            assert status.backend == "none"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Execute(
                    executor_pb2.ExecuteRequest(
                        run_id="r-refused",
                        script_name="x",
                        script_version="1.0.0",
                        sha256="0" * 64,
                        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
                    )
                )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        detail = rpc_status.from_call(err.value)
        assert detail is not None
        assert "sandbox.allow_unsandboxed" in str(detail.details)
    finally:
        await path.close()


async def test_opted_in_run_succeeds_and_is_recorded_not_sandboxed(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """With the opt-in the run succeeds and its usage says sandbox "none"."""
    path = await _path(tmp_path, nats_server, tokens, allowed=True)
    try:
        await path.publish("open", "print('ran unsandboxed')\n")
        stub = path.scheduler_stub()
        run = await stub.SubmitRun(submit_request("open"))
        final = await wait_terminal(stub, run.id)
        assert final.state == common_pb2.RUN_STATE_SUCCEEDED
        assert final.output.stdout == b"ran unsandboxed\n"
        assert final.usage.sandbox == "none"
    finally:
        await path.close()


async def test_runs_show_prints_refusal_and_not_sandboxed(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """`runbox runs show` names the NO_SANDBOX refusal, and a run that ran unsandboxed."""
    refusing = await _path(tmp_path / "refusing", nats_server, tokens, allowed=False)
    try:
        await refusing.publish("refused", "print('x')\n")
        stub = refusing.scheduler_stub()
        run = await stub.SubmitRun(submit_request("refused"))
        await wait_terminal(stub, run.id)
        shown = await _cli(refusing, "runs", "show", run.id)
        assert "FAILED" in shown
        assert "NO_SANDBOX" in shown
        assert "--allow-unsandboxed" in shown
    finally:
        await refusing.close()
    allowing = await _path(tmp_path / "allowing", nats_server, tokens, allowed=True)
    try:
        await allowing.publish("open", "print('x')\n")
        stub = allowing.scheduler_stub()
        run = await stub.SubmitRun(submit_request("open"))
        await wait_terminal(stub, run.id)
        shown = await _cli(allowing, "runs", "show", run.id)
        assert "sandbox   none: NOT sandboxed" in shown
    finally:
        await allowing.close()
