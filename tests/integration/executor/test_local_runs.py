"""The local runner (no Docker): a child process with rlimits in its own group."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from urllib.parse import quote

from google.protobuf import json_format

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


async def test_local_run_reports_result_and_regular_artifacts_only(
    executor: ExecutorHarness, tmp_path: Path
) -> None:
    """result.json becomes the result; only regular artifacts are stored, links are skipped."""
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text("host only")
    script = f"""
import json, os
art = os.environ["RUNBOX_ARTIFACTS_DIR"]
os.makedirs(os.path.join(art, "sub"))
open(os.path.join(art, "report.txt"), "w").write("hello")
open(os.path.join(art, "sub", "data.bin"), "wb").write(bytes(range(256)))
os.symlink({str(host_file)!r}, os.path.join(art, "stolen.txt"))
os.link({str(host_file)!r}, os.path.join(art, "hard.txt"))
json.dump({{"rows": 3, "name": "done", "items": [1, 2]}}, open("result.json", "w"))
"""
    finished, _ = await executor.run(executor.request(script))
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    assert json_format.MessageToDict(finished.result) == {
        "rows": 3,
        "name": "done",
        "items": [1, 2],
    }
    artifacts = {a.name: a for a in finished.artifacts}
    assert set(artifacts) == {"report.txt", "sub/data.bin"}
    report = artifacts["report.txt"]
    assert report.size_bytes == 5
    assert report.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert artifacts["sub/data.bin"].sha256 == hashlib.sha256(bytes(range(256))).hexdigest()
    storage = tmp_path / "work" / "artifacts" / finished.run_id
    assert report.uri == (storage / "report.txt").as_uri()
    assert (storage / "report.txt").read_bytes() == b"hello"
    assert (storage / "sub" / "data.bin").read_bytes() == bytes(range(256))
    assert sorted(p.name for p in storage.iterdir()) == ["report.txt", "sub"]
    assert "'stolen.txt' skipped: a symlink" in finished.exit.message
    assert "'hard.txt' skipped: a hardlink" in finished.exit.message
    assert host_file.read_text() == "host only"


async def test_local_run_result_has_secrets_redacted(executor: ExecutorHarness) -> None:
    """A secret written into result.json (plain, base64, URL-encoded) never reaches the event."""
    secret = "s3cr3t value/+="
    script = """
import base64, json, os, urllib.parse
s = json.load(open(os.environ["RUNBOX_SECRETS_FILE"]))["token"]
json.dump({"plain": s, "b64": base64.b64encode(s.encode()).decode(),
           "url": urllib.parse.quote(s, safe=""), s: "as a key"}, open("result.json", "w"))
"""
    finished, events = await executor.run(executor.request(script, secrets={"token": secret}))
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    assert json_format.MessageToDict(finished.result) == {
        "plain": "***",
        "b64": "***",
        "url": "***",
        "***": "as a key",
    }
    forms = (secret, base64.b64encode(secret.encode()).decode(), quote(secret, safe=""))
    for event in events:
        raw = event.SerializeToString()
        assert not any(form.encode() in raw for form in forms)


async def test_local_run_with_invalid_result_still_succeeds_with_a_warning(
    executor: ExecutorHarness,
) -> None:
    """result.json that is not an object leaves no result and says why; the run is unaffected."""
    script = 'open("result.json", "w").write("[1, 2, 3]")\n'
    finished, _ = await executor.run(executor.request(script))
    assert finished.state == RS.RUN_STATE_SUCCEEDED
    assert not finished.HasField("result")
    assert "must hold a JSON object" in finished.exit.message


async def test_local_failed_run_keeps_its_artifacts(executor: ExecutorHarness) -> None:
    """A failing shell script's artifacts are still collected: they often explain the failure."""
    script = 'printf "trace" > "$RUNBOX_ARTIFACTS_DIR/debug.log"; exit 3\n'
    finished, _ = await executor.run(executor.request(script, kind=RS.EXECUTION_TYPE_SHELL))
    assert finished.state == RS.RUN_STATE_FAILED and finished.exit.exit_code == 3
    assert [(a.name, a.size_bytes) for a in finished.artifacts] == [("debug.log", 5)]
