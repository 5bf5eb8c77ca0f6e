"""Runs in real hardened Docker containers, observed through real JetStream events."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from tests.integration.executor.conftest import ExecutorHarness, harness_fixture

pytestmark = pytest.mark.usefixtures("docker_engine")
executor = harness_fixture("docker")
ET = events_pb2
RS = common_pb2


async def test_python_run_succeeds_with_events_output_and_usage(executor: ExecutorHarness) -> None:
    """A script runs in the sandbox: QUEUED, STARTED, FINISHED SUCCEEDED with output and usage."""
    script = "import os, json\nprint('hello', os.getuid())\nprint(json.load(open(os.environ['RUNBOX_PARAMS_FILE'])))\n"
    finished, events = await executor.run(executor.request(script, params={"n": 3}))
    kinds = [e.type for e in events if e.type != ET.RUN_EVENT_TYPE_LOG]
    assert kinds == [
        ET.RUN_EVENT_TYPE_QUEUED,
        ET.RUN_EVENT_TYPE_STARTED,
        ET.RUN_EVENT_TYPE_FINISHED,
    ]
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert finished.state == RS.RUN_STATE_SUCCEEDED
    assert finished.exit.exit_code == 0
    assert finished.output.stdout == b"hello 10001\n{'n': 3}\n"
    assert finished.usage.cpu_seconds > 0
    assert finished.usage.peak_memory_bytes > 0
    assert finished.usage.wall_time.ToNanoseconds() > 0


async def test_nonzero_exit_is_failed_with_code(executor: ExecutorHarness) -> None:
    """exit(7) ends FAILED with reason EXIT_CODE and exit code 7; stderr is kept."""
    finished, _ = await executor.run(
        executor.request("import sys\nprint('bad', file=sys.stderr)\nsys.exit(7)\n")
    )
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_EXIT_CODE
    assert finished.exit.exit_code == 7
    assert finished.output.stderr == b"bad\n"


async def test_timeout_is_enforced_from_outside(executor: ExecutorHarness) -> None:
    """A script sleeping past its timeout ends TIMED_OUT."""
    finished, _ = await executor.run(executor.request("import time\ntime.sleep(60)\n", timeout_s=1))
    assert finished.state == RS.RUN_STATE_TIMED_OUT
    assert finished.exit.reason == RS.FAILURE_REASON_TIMEOUT


async def test_memory_hog_is_oom_killed(executor: ExecutorHarness) -> None:
    """Allocating past the memory limit ends FAILED with reason OOM_KILLED."""
    script = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 1024 * 1024))\n"
    finished, _ = await executor.run(executor.request(script, memory=64 * 1024 * 1024))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_OOM_KILLED


async def test_sandbox_is_isolated(executor: ExecutorHarness) -> None:
    """No network, read-only root, non-root user, no capabilities, no host env."""
    script = """
import os, socket
checks = {}
try:
    socket.create_connection(("127.0.0.1", 22), timeout=1); checks["net"] = "open"
except OSError as e:
    checks["net"] = "blocked"
try:
    socket.getaddrinfo("example.com", 80); checks["dns"] = "resolved"
except OSError:
    checks["dns"] = "blocked"
try:
    open("/usr/pwned", "w"); checks["rootfs"] = "writable"
except OSError:
    checks["rootfs"] = "read-only"
checks["uid"] = os.getuid()
checks["capeff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
checks["env"] = sorted(k for k in os.environ if not k.startswith("RUNBOX_"))
checks["docker_sock"] = os.path.exists("/var/run/docker.sock")
print(checks)
"""
    finished, _ = await executor.run(executor.request(script))
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output.stderr
    checks = eval(finished.output.stdout.decode())
    assert checks["net"] == "blocked"
    assert checks["dns"] == "blocked"
    assert checks["rootfs"] == "read-only"
    assert checks["uid"] == 10001
    assert checks["capeff"] == "0000000000000000"
    assert checks["env"] == ["HOME", "LANG", "PATH", "PYTHONUNBUFFERED"]
    assert checks["docker_sock"] is False


async def test_secret_values_never_appear_in_events(executor: ExecutorHarness) -> None:
    """A script printing its secret (raw, base64, URL-encoded) is redacted in every event."""
    secret = "hunter2/s3cr3t value"
    script = """
import base64, json, os, urllib.parse
s = json.load(open(os.environ["RUNBOX_SECRETS_FILE"]))["token"]
print("raw", s); print("b64", base64.b64encode(s.encode()).decode()); print("url", urllib.parse.quote(s, safe=""))
print("env", os.environ["RUNBOX_PARAM_TOKEN"])
"""
    finished, events = await executor.run(executor.request(script, secrets={"token": secret}))
    assert finished.state == RS.RUN_STATE_SUCCEEDED
    assert finished.output.stdout.count(b"***") == 4
    import base64
    import urllib.parse

    forms = [
        secret.encode(),
        base64.b64encode(secret.encode()),
        urllib.parse.quote(secret, safe="").encode(),
    ]
    for event in events:
        raw = event.SerializeToString()
        assert not any(form in raw for form in forms)


async def test_sha256_mismatch_fails_as_infrastructure(executor: ExecutorHarness) -> None:
    """Content that does not match the pinned digest never runs."""
    finished, _ = await executor.run(executor.request("print('x')", sha256="0" * 64))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_INFRASTRUCTURE
    assert finished.output.stdout == b""


async def test_duplicate_execute_runs_once(executor: ExecutorHarness) -> None:
    """Execute is idempotent on run id: the second call does not start a second run."""
    request = executor.request("print('once')")
    first = await executor.stub.Execute(request)
    second = await executor.stub.Execute(request)
    assert first.newly_accepted and not second.newly_accepted
    events = await executor.events(request.run_id)
    await asyncio.sleep(0.5)
    started = [e for e in events if e.type == ET.RUN_EVENT_TYPE_STARTED]
    assert len(started) == 1
    assert events[-1].output.stdout == b"once\n"


async def test_cancel_running_script_is_cancelled(executor: ExecutorHarness) -> None:
    """Cancel sends SIGTERM then SIGKILL; the run ends CANCELLED."""
    request = executor.request("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    await executor.stub.Execute(request)
    events_task = asyncio.create_task(executor.events(request.run_id))
    for _ in range(100):
        active = await executor.stub.ListActiveRuns(executor_pb2.ListActiveRunsRequest())
        if any(r.run_id == request.run_id and r.state == RS.RUN_STATE_RUNNING for r in active.runs):
            break
        await asyncio.sleep(0.1)
    reply = await executor.stub.Cancel(executor_pb2.CancelRequest(run_id=request.run_id))
    assert reply.cancelled
    events = await events_task
    assert events[-1].state == RS.RUN_STATE_CANCELLED


async def test_unsupported_type_is_invalid_argument(executor: ExecutorHarness) -> None:
    """Execution types without a runner are refused with INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await executor.stub.Execute(executor.request("x", kind=RS.EXECUTION_TYPE_SERVERLESS))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_egress_is_refused_unless_the_executor_offers_a_network(
    executor: ExecutorHarness,
) -> None:
    """A script asking for egress is refused before it starts when no egress network is set."""
    request = executor.request("print('never runs')\n")
    request.limits.network = common_pb2.NETWORK_POLICY_EGRESS_ALLOWLIST
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await executor.stub.Execute(request)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sandbox.egress_network" in (err.value.details() or "")
    listed = await executor.stub.ListActiveRuns(executor_pb2.ListActiveRunsRequest())
    assert request.run_id not in [r.run_id for r in listed.runs]
