"""The whole stack started the way a user starts it (`runbox up`), driven
through the CLI and raw gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cli import natsd
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from tests.conftest import IN_CI, docker_available, require, sandbox_image_available

REPO = Path(__file__).resolve().parents[2]
RUNBOX = [sys.executable, "-m", "cli.main"]


class UserStack:
    """`runbox up` running as a child process with its own state directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.var = workdir / "var"
        self.log = open(workdir / "up.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*RUNBOX, "up", "--var", str(self.var)],
            cwd=workdir,
            env=self.env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while not (self.var / "runbox.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.flush()
                raise RuntimeError((workdir / "up.log").read_text()[-4000:])
            time.sleep(0.2)
        self.config = json.loads((self.var / "runbox.json").read_text())
        self.token = Path(self.config["token_file"]).read_text().strip()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
        env["PYTHONPATH"] = str(REPO)
        return env

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RUNBOX, *args],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def user_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserStack]:
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    workdir = tmp_path_factory.mktemp("user")
    (workdir / "examples").mkdir()
    for name in ("hello.py", "hello.runbox.yaml"):
        (workdir / "examples" / name).write_bytes((REPO / "examples" / name).read_bytes())
    stack = UserStack(workdir)
    yield stack
    code = stack.stop()
    assert code == 0, (workdir / "up.log").read_text()[-3000:]
    leftovers = [p for p in stack.var.glob("*.db")]
    assert leftovers, "stack should have left its SQLite files under var/"


def test_hello_run_succeeds_through_cli(user_stack: UserStack) -> None:
    """Push examples/hello.py (its manifest names it) and `runbox run hello --follow` prints
    output and SUCCEEDED."""
    pushed = user_stack.cli("script", "push", "examples/hello.py", "--version", "1.0.0")
    assert pushed.returncode == 0, pushed.stderr
    assert "published hello@1.0.0" in pushed.stdout
    result = user_stack.cli("run", "hello", "--follow", "-p", "name=E2E")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Hello, E2E!" in result.stdout
    assert "SUCCEEDED" in result.stdout
    if docker_available() and sandbox_image_available():
        assert "uid 10001" in result.stdout, "run should execute in the Docker sandbox"
    elif IN_CI:
        pytest.fail("Docker is required in CI")

    listed = user_stack.cli("runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert runs[0]["state"] == "RUN_STATE_SUCCEEDED"
    shown = user_stack.cli("runs", "show", runs[0]["id"], "--json")
    run = json.loads(shown.stdout)
    assert run["exit"].get("exit_code", 0) == 0
    assert "duration" in run


def test_failing_script_exit_code_is_cli_exit_code(user_stack: UserStack) -> None:
    """A script exiting 3 makes `runbox run --follow` exit 3 and show FAILED."""
    script = user_stack.workdir / "fail.py"
    script.write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    pushed = user_stack.cli("script", "push", str(script), "--name", "fail", "--version", "0.1.0")
    assert pushed.returncode == 0, pushed.stderr
    result = user_stack.cli("run", "fail@0.1.0", "--follow")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "FAILED" in result.stdout
    assert "about to fail" in result.stdout


def _channel(user_stack: UserStack, service: str) -> grpc.Channel:
    return grpc.insecure_channel(
        user_stack.config[service],
        options=[("grpc.max_send_message_length", 16 * 1024 * 1024)],
    )


def test_bad_token_refused_unauthenticated(user_stack: UserStack) -> None:
    """A call with a wrong bearer token is refused with UNAUTHENTICATED."""
    with _channel(user_stack, "scheduler") as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListRuns(
                scheduler_pb2.ListRunsRequest(),
                metadata=[("authorization", "Bearer not-a-token")],
                timeout=10,
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_script_is_not_found(user_stack: UserStack) -> None:
    """Submitting a run of a script that does not exist gives NOT_FOUND."""
    with _channel(user_stack, "scheduler") as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitRun(
                scheduler_pb2.SubmitRunRequest(script=common_pb2.ScriptRef(name="no-such-script")),
                metadata=[("authorization", f"Bearer {user_stack.token}")],
                timeout=10,
            )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_oversized_request_is_resource_exhausted(user_stack: UserStack) -> None:
    """A 5 MiB request is refused with RESOURCE_EXHAUSTED and nothing is stored."""
    with _channel(user_stack, "catalogue") as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.PublishVersion(
                catalogue_pb2.PublishVersionRequest(
                    script_name="hello", version="9.9.9", content=b"#" * (5 * 1024 * 1024)
                ),
                metadata=[("authorization", f"Bearer {user_stack.token}")],
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetVersion(
                catalogue_pb2.GetVersionRequest(script_name="hello", version="9.9.9"),
                metadata=[("authorization", f"Bearer {user_stack.token}")],
                timeout=10,
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_service_lists_itself_through_reflection_and_serves_metrics(
    user_stack: UserStack,
) -> None:
    """Reflection lists each service (with a token) and /metrics answers."""
    expected = {
        "catalogue": "runbox.catalogue.v1.CatalogueService",
        "scheduler": "runbox.scheduler.v1.SchedulerService",
        "executor": "runbox.executor.v1.ExecutorService",
        "alerting": "runbox.alerting.v1.AlertingService",
    }
    for service, full_name in expected.items():
        with _channel(user_stack, service) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                metadata=[("authorization", f"Bearer {user_stack.token}")],
                timeout=10,
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
        assert full_name in names
        assert "grpc.health.v1.Health" in names
    logs = (user_stack.workdir / "up.log").read_text()
    for service in expected:
        port = next(
            line.split("metrics http://127.0.0.1:")[1].split("/")[0]
            for line in logs.splitlines()
            if line.strip().startswith(service) and "metrics http" in line
        )
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert f"runbox_{service}_rpc_requests_total".encode() in body
