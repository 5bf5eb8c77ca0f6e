"""gVisor (runsc) sandboxes: chosen per script on a runc executor, hardened the same way."""

from __future__ import annotations

import json

import docker
import pytest

from runbox.common.v1 import common_pb2
from tests.conftest import require
from tests.integration.executor.conftest import ExecutorHarness, harness_fixture

pytestmark = pytest.mark.usefixtures("docker_engine")
executor = harness_fixture("docker")
RS = common_pb2
PROBE = """
import json, os, socket
checks = {"kernel": os.uname().release, "uid": os.getuid()}
try:
    socket.create_connection(("127.0.0.1", 22), timeout=1); checks["net"] = "open"
except OSError:
    checks["net"] = "blocked"
try:
    open("/usr/pwned", "w"); checks["rootfs"] = "writable"
except OSError:
    checks["rootfs"] = "read-only"
checks["capeff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(json.dumps(checks))
"""


@pytest.fixture
def runsc() -> None:
    client = docker.from_env()
    try:
        runtimes = client.info().get("Runtimes") or {}
    finally:
        client.close()
    require(
        "runsc" in runtimes,
        "the Docker engine has no runsc runtime (install-docker.sh --with-gvisor)",
    )


async def _probe(h: ExecutorHarness, runtime: int) -> dict[str, object]:
    request = h.request(PROBE)
    request.runtime = runtime
    finished, _ = await h.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output.stderr
    return dict(json.loads(finished.output.stdout))


@pytest.mark.usefixtures("runsc")
async def test_a_script_can_ask_for_gvisor_and_stays_hardened(executor: ExecutorHarness) -> None:
    plain = await _probe(executor, RS.RUNTIME_UNSPECIFIED)
    gvisor = await _probe(executor, RS.RUNTIME_RUNSC)
    assert gvisor["kernel"] == "4.4.0"  # gVisor's own kernel, not the host's
    assert plain["kernel"] != "4.4.0"
    for checks in (plain, gvisor):
        assert checks["net"] == "blocked"
        assert checks["rootfs"] == "read-only"
        assert checks["uid"] == 10001
        assert checks["capeff"] == "0000000000000000"


@pytest.mark.usefixtures("runsc")
async def test_gvisor_runs_report_exit_codes_and_timeouts(executor: ExecutorHarness) -> None:
    request = executor.request("import sys\nprint('hi')\nsys.exit(4)\n")
    request.runtime = RS.RUNTIME_RUNSC
    finished, _ = await executor.run(request)
    assert finished.state == RS.RUN_STATE_FAILED and finished.exit.exit_code == 4
    assert finished.output.stdout == b"hi\n"
    slow = executor.request("import time\ntime.sleep(60)\n", timeout_s=2)
    slow.runtime = RS.RUNTIME_RUNSC
    finished, _ = await executor.run(slow)
    assert finished.state == RS.RUN_STATE_TIMED_OUT
