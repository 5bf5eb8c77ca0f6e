"""The local runner (no Docker): a child process with rlimits in its own group."""

from __future__ import annotations

import os

from runbox.common.v1 import common_pb2
from tests.integration.executor.conftest import ExecutorHarness, harness_fixture

executor = harness_fixture("local")
RS = common_pb2


async def test_local_run_succeeds_with_params_and_secret_file(executor: ExecutorHarness) -> None:
    """A local run gets its parameters as a file and env, secrets via a 0600 file."""
    script = """
import json, os, stat
p = json.load(open(os.environ["RUNBOX_PARAMS_FILE"]))
mode = stat.S_IMODE(os.stat(os.environ["RUNBOX_SECRETS_FILE"]).st_mode)
print(p["who"], os.environ["RUNBOX_PARAM_WHO"], oct(mode))
"""
    finished, _ = await executor.run(
        executor.request(script, params={"who": "ops"}, secrets={"k": "v-secret"})
    )
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    assert finished.output.stdout == b"ops ops 0o600\n"
    assert finished.usage.cpu_seconds > 0


async def test_local_shell_run_fails_with_exit_code(executor: ExecutorHarness) -> None:
    """A shell script's exit status becomes the run's exit code."""
    finished, _ = await executor.run(
        executor.request("echo out; exit 5\n", kind=RS.EXECUTION_TYPE_SHELL)
    )
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.exit_code == 5
    assert finished.output.stdout == b"out\n"


async def test_local_timeout_kills_the_process_group(executor: ExecutorHarness, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On timeout the whole group dies, including a background grandchild."""
    pid_file = tmp_path / "grandchild.pid"
    script = f"""
import subprocess, time
p = subprocess.Popen(["sleep", "120"])
open({str(pid_file)!r}, "w").write(str(p.pid))
time.sleep(120)
"""
    finished, _ = await executor.run(executor.request(script, timeout_s=1))
    assert finished.state == RS.RUN_STATE_TIMED_OUT, (finished.exit, finished.output)
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        import asyncio

        await asyncio.sleep(0.1)
    else:
        raise AssertionError("grandchild survived the timeout")
