"""result.json and /artifacts of Docker runs, packed by the agent, kept by the executor."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from google.protobuf import json_format

from runbox.common.v1 import common_pb2
from tests.integration.executor.conftest import ExecutorHarness, harness_fixture

pytestmark = pytest.mark.usefixtures("docker_engine")
executor = harness_fixture("docker")
RS = common_pb2

SCRIPT = """
import json, os
os.makedirs("/artifacts/logs", exist_ok=True)
open("/artifacts/report.txt", "w").write("report body")
open("/artifacts/logs/run.log", "w").write("line 1\\n")
os.symlink("/etc/passwd", "/artifacts/passwd")
os.link("/artifacts/report.txt", "/artifacts/hard.txt")
os.mkfifo("/artifacts/pipe")
json.dump({"rows": 3, "token": os.environ["RUNBOX_PARAM_API_KEY"]}, open("result.json", "w"))
"""


def _stored_digest(uri: str) -> str:
    data = Path(uri.removeprefix("file://")).read_bytes()
    assert data
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("reuse", [False, True], ids=["per-run", "reuse"])
async def test_result_and_regular_artifacts_come_back_links_never(
    executor: ExecutorHarness, reuse: bool
) -> None:
    request = executor.request(SCRIPT, secrets={"api_key": "sekrit-value-123"})
    if reuse:
        request.isolation = RS.ISOLATION_REUSE
    finished, events = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output.stderr
    assert json_format.MessageToDict(finished.result) == {"rows": 3, "token": "***"}
    names = sorted(a.name for a in finished.artifacts)
    # Only regular files: the symlink, the fifo and one of the two hardlinked names are skipped.
    assert "passwd" not in names and "pipe" not in names
    assert "logs/run.log" in names and ("report.txt" in names or "hard.txt" in names)
    for artifact in finished.artifacts:
        assert _stored_digest(artifact.uri) == artifact.sha256
    assert "sekrit-value-123" not in str(events)


async def test_a_run_without_artifacts_sends_no_archive(executor: ExecutorHarness) -> None:
    finished, _ = await executor.run(executor.request("print('plain')\n"))
    assert finished.state == RS.RUN_STATE_SUCCEEDED
    assert not finished.artifacts and not finished.HasField("result")
