"""The container execution type: an allow-listed image in a fresh hardened container per
run, through a real executor, a real Docker engine and real JetStream events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import grpc
import pytest

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from services.executor.runners.container_spec import RUN_LABEL
from services.executor.runners.container_usage import ROOT
from tests.conftest import SANDBOX_IMAGE, require
from tests.integration.executor.conftest import ExecutorHarness, open_harness
from tests.integration.executor.test_http_runs import field_of

pytestmark = pytest.mark.usefixtures("docker_engine")
RS = common_pb2
CONTAINER = common_pb2.EXECUTION_TYPE_CONTAINER
REPOSITORY = SANDBOX_IMAGE.rsplit(":", 1)[0]
SECRET = "tok-9f1c3e55"


@pytest.fixture
async def executor(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[ExecutorHarness]:
    allowed = [f"{REPOSITORY}:*", "runbox/not-built-anywhere:*"]
    async with open_harness(
        tmp_path, nats_server.url, tokens, "docker", container={"allowed_images": allowed}
    ) as harness:
        yield harness


def container(
    executor: ExecutorHarness,
    command: list[str],
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    image: str = SANDBOX_IMAGE,
    **kwargs: Any,
) -> executor_pb2.ExecuteRequest:
    config = {"container": {"image": image, "command": command, "args": args or [], "env": env}}
    if env is None:
        del config["container"]["env"]
    # The script's content is not used by containers, but every run pins one.
    return executor.request("container job\n", kind=CONTAINER, config=config, **kwargs)


def sh(script: str, **kwargs: Any) -> dict[str, Any]:
    return {"command": ["sh", "-c", script], **kwargs}


async def test_container_runs_command_with_args_and_params_as_env(
    executor: ExecutorHarness,
) -> None:
    """Command and rendered args replace the image's entrypoint and cmd; parameters arrive
    as RUNBOX_PARAM_* and RUNBOX_PARAMS_JSON; output is captured per stream."""
    script = 'echo "hello $1 $RUNBOX_PARAM_WHO"; echo "$RUNBOX_PARAMS_JSON"; id -u; echo oops >&2'
    request = container(
        executor, ["sh", "-c", script, "sh"], args=["{{ who }}"], params={"who": "world"}
    )
    finished, events = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    assert finished.exit.exit_code == 0
    assert finished.output.stdout == b'hello world world\n{"who": "world"}\n10001\n'
    assert finished.output.stderr == b"oops\n"
    assert finished.usage.wall_time.ToNanoseconds() > 0
    kinds = [e.type for e in events if e.type != events_pb2.RUN_EVENT_TYPE_LOG]
    assert kinds[-2:] == [events_pb2.RUN_EVENT_TYPE_STARTED, events_pb2.RUN_EVENT_TYPE_FINISHED]


BUSY = """
import time
block = bytearray(40 << 20)
end = time.process_time() + 1.0
while time.process_time() < end:
    pass
"""


async def test_container_usage_comes_from_its_cgroup(executor: ExecutorHarness) -> None:
    """CPU seconds and peak memory are sampled from the container's cgroup while it runs."""
    visible = [ROOT / "docker", ROOT / "memory" / "docker", ROOT / "system.slice"]
    require(any(p.is_dir() for p in visible), "the host's cgroup tree is not visible here")
    finished, _ = await executor.run(container(executor, ["python3", "-c", BUSY]))
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    assert finished.usage.cpu_seconds > 0
    assert finished.usage.peak_memory_bytes >= 40 << 20


async def test_container_fails_with_its_exit_code(executor: ExecutorHarness) -> None:
    """A non-zero exit is FAILED with reason EXIT_CODE and the code."""
    finished, _ = await executor.run(container(executor, ["sh", "-c", "echo bye; exit 3"]))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_EXIT_CODE
    assert finished.exit.exit_code == 3
    assert finished.output.stdout == b"bye\n"


async def test_container_timeout_is_enforced_from_outside(executor: ExecutorHarness) -> None:
    """A container running past its timeout is killed: TIMED_OUT."""
    request = container(executor, ["sleep", "300"], timeout_s=1)
    finished, _ = await executor.run(request)
    assert finished.state == RS.RUN_STATE_TIMED_OUT
    assert finished.exit.reason == RS.FAILURE_REASON_TIMEOUT


async def test_container_cancel_escalates_to_sigkill_when_sigterm_is_ignored(
    executor: ExecutorHarness,
) -> None:
    """Cancel sends SIGTERM, then SIGKILL after the grace to a command ignoring it."""
    script = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
    request = container(executor, ["sh", "-c", script])
    sub = await executor.js.subscribe(
        f"runbox.events.run.{request.run_id}.>", ordered_consumer=True
    )
    try:
        await executor.stub.Execute(request)
        while True:
            event = events_pb2.RunEvent.FromString((await sub.next_msg(timeout=60)).data)
            if event.type == events_pb2.RUN_EVENT_TYPE_LOG and b"ready" in event.log.data:
                break
    finally:
        await sub.unsubscribe()
    reply = await executor.stub.Cancel(executor_pb2.CancelRequest(run_id=request.run_id))
    assert reply.cancelled
    finished = (await executor.events(request.run_id))[-1]
    assert finished.state == RS.RUN_STATE_CANCELLED
    assert finished.exit.reason == RS.FAILURE_REASON_CANCELLED
    assert finished.exit.signal == 9


async def test_container_cancel_ends_with_sigterm_when_the_command_obeys(
    executor: ExecutorHarness,
) -> None:
    """SIGTERM reaches the command through the container's init: CANCELLED without SIGKILL."""
    request = container(executor, ["sh", "-c", "echo ready; sleep 300 & wait"])
    sub = await executor.js.subscribe(
        f"runbox.events.run.{request.run_id}.>", ordered_consumer=True
    )
    try:
        await executor.stub.Execute(request)
        while True:
            event = events_pb2.RunEvent.FromString((await sub.next_msg(timeout=60)).data)
            if event.type == events_pb2.RUN_EVENT_TYPE_LOG and b"ready" in event.log.data:
                break
    finally:
        await sub.unsubscribe()
    await executor.stub.Cancel(executor_pb2.CancelRequest(run_id=request.run_id))
    finished = (await executor.events(request.run_id))[-1]
    assert finished.state == RS.RUN_STATE_CANCELLED
    assert finished.exit.signal == 15


async def test_container_memory_hog_is_oom_killed(executor: ExecutorHarness) -> None:
    """Allocating past the memory limit ends FAILED with reason OOM_KILLED."""
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))\n"
    finished, _ = await executor.run(container(executor, ["python3", "-c", hog], memory=48 << 20))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_OOM_KILLED


async def test_container_image_not_allowed_is_refused_at_execute(
    executor: ExecutorHarness,
) -> None:
    """An image outside container.allowed_images is FAILED_PRECONDITION on its field."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await executor.stub.Execute(container(executor, ["true"], image="busybox:latest"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field_of(exc.value) == "config.container.image"


async def test_container_image_missing_is_refused_at_execute(executor: ExecutorHarness) -> None:
    """An allowed image the engine does not have is refused (images are never pulled)."""
    request = container(executor, ["true"], image="runbox/not-built-anywhere:1")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await executor.stub.Execute(request)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field_of(exc.value) == "config.container.image"
    assert "not present" in (exc.value.details() or "")


async def test_container_secret_reaches_only_env_and_is_redacted(
    executor: ExecutorHarness,
) -> None:
    """A secret arrives through the env entry naming it, not as RUNBOX_PARAM_*, not in
    argv; its echo in output is redacted, and no event carries it."""
    script = (
        'echo "token: $TOKEN"; echo "length: $(printf %s "$TOKEN" | wc -c)"; echo "auto: ${RUNBOX_PARAM_PW:-unset}"; '
        'if grep -q "$TOKEN" /proc/1/cmdline /proc/$$/cmdline; then echo "secret in argv"; fi'
    )
    request = container(
        executor, ["sh", "-c", script], env={"TOKEN": "{{ pw }}"}, secrets={"pw": SECRET}
    )
    finished, events = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    out = finished.output.stdout.decode()
    assert "token: ***\n" in out
    assert f"length: {len(SECRET)}\n" in out
    assert "auto: unset\n" in out
    assert "secret in argv" not in out
    for event in events:
        assert SECRET.encode() not in event.SerializeToString()


async def test_container_args_naming_a_secret_are_refused_at_execute(
    executor: ExecutorHarness,
) -> None:
    """INVALID_ARGUMENT on the argument: secrets reach a container only through env."""
    request = container(executor, ["echo"], args=["{{ pw }}"], secrets={"pw": SECRET})
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await executor.stub.Execute(request)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(exc.value) == "config.container.args[0]"
    assert SECRET not in (exc.value.details() or "")


SANDBOX_CHECKS = r"""
import os, socket
def attempt(what, action):
    try:
        action()
        print(what, "allowed")
    except OSError as exc:
        print(what, "denied", type(exc).__name__)
attempt("loopback", lambda: socket.create_connection(("127.0.0.1", 22), timeout=2))
attempt("egress", lambda: socket.create_connection(("1.1.1.1", 53), timeout=2))
attempt("root write", lambda: open("/hacked", "w"))
attempt("work write", lambda: open("/work/ok", "w"))
print("uid", os.getuid(), os.getgid())
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines())
print("CapEff", status["CapEff"].strip(), "NoNewPrivs", status.get("NoNewPrivs", "?").strip())
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
print("docker socket", os.path.exists("/var/run/docker.sock"))
"""


async def test_container_is_hardened_by_default(executor: ExecutorHarness) -> None:
    """No network, read-only root, writable /work, uid 10001, no capabilities, no new
    privileges, no Docker socket."""
    finished, _ = await executor.run(container(executor, ["python3", "-c", SANDBOX_CHECKS]))
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    lines = finished.output.stdout.decode().splitlines()
    assert lines[0].startswith("loopback denied")
    assert lines[1].startswith("egress denied")
    assert lines[2].startswith("root write denied")
    assert lines[3] == "work write allowed"
    assert lines[4] == "uid 10001 10001"
    assert lines[5] == "CapEff 0000000000000000 NoNewPrivs 1"
    assert lines[6] == "interfaces ['lo']"
    assert lines[7] == "docker socket False"


async def test_container_is_removed_after_the_run(executor: ExecutorHarness) -> None:
    """Each run's container carries its run id as a label and is gone after the run."""
    request = container(executor, ["sh", "-c", "exit 0"])
    finished, _ = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED
    client = docker.from_env()
    try:
        label = f"{RUN_LABEL}={request.run_id}"
        for _ in range(300):  # removal runs off the run's path: wait for it, boundedly
            left = await asyncio.to_thread(
                client.containers.list, all=True, sparse=True, filters={"label": label}
            )
            if not left:
                break
            await asyncio.sleep(0.1)
        assert left == []
    finally:
        client.close()


async def test_container_can_ask_for_gvisor_and_stays_hardened(executor: ExecutorHarness) -> None:
    """RUNTIME_RUNSC runs the container under gVisor (its own kernel), as hardened as runc."""
    client = docker.from_env()
    try:
        runtimes = client.info().get("Runtimes") or {}
    finally:
        client.close()
    require("runsc" in runtimes, "the Docker engine has no runsc runtime")
    request = container(executor, ["sh", "-c", 'uname -r; python3 -c "$0"', SANDBOX_CHECKS])
    request.runtime = RS.RUNTIME_RUNSC
    finished, _ = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    lines = finished.output.stdout.decode().splitlines()
    assert lines[0] == "4.4.0"  # gVisor's kernel, not the host's
    assert lines[1].startswith("loopback denied")
    assert lines[3].startswith("root write denied")
    assert lines[5] == "uid 10001 10001"
    assert lines[6].startswith("CapEff 0000000000000000")
    assert lines[7] == "interfaces ['lo']"
