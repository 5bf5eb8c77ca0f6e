"""RUNBOX_EVENT_LOOP, as real processes: catalogue, executor (local commands) and scheduler
started with `python -m services.<name>` on each loop announce it and carry a run from
SubmitRun to SUCCEEDED over the run link; `uvloop` without the package stops at start with
its reason. The loop choice itself is checked in-process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.tracing import SCRIPT, publish_noop
from cli import natsd
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from shared.clients import open_channel
from shared.entrypoint import loop_factory
from tests.conftest import Tokens

ROOT = Path(__file__).resolve().parents[2]
RS = common_pb2.RunState


class Services:
    """Service processes of one test, each announcing its port and loop on stdout."""

    def __init__(self, tmp: Path, nats_url: str, tokens: Tokens, loop: str) -> None:
        self._tmp = tmp
        self._base = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
        self._base |= {
            "RUNBOX_GRPC__HOST": "127.0.0.1",
            "RUNBOX_METRICS__PORT": "-1",
            "RUNBOX_NATS__URL": nats_url,
            "RUNBOX_AUTH__PRINCIPALS_FILE": str(tokens.principals_file),
            "RUNBOX_AUTH__SERVICE_TOKEN": tokens.service,
            "RUNBOX_ANNOUNCE_READY": "true",
            "RUNBOX_EVENT_LOOP": loop,
            "RUNBOX_LOG__LEVEL": "WARNING",
        }
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, name: str, **settings: str) -> dict[str, object]:
        """Start a service; its RUNBOX_READY announcement once it serves."""
        env = self._base | {
            "RUNBOX_INSTANCE_ID": f"{name}-loop",
            "RUNBOX_DATABASE__URL": f"sqlite+aiosqlite:///{self._tmp / name}.db",
            **settings,
        }
        with (self._tmp / f"{name}.log").open("ab") as log:  # the child keeps its own fd
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{name}",
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.processes.append(proc)
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            while line := await proc.stdout.readline():
                if line.startswith(b"RUNBOX_READY "):
                    announced: dict[str, object] = json.loads(line.split(b" ", 1)[1])
                    return announced
        raise AssertionError((self._tmp / f"{name}.log").read_text()[-3000:])

    async def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.returncode is None:
                proc.terminate()
        for proc in self.processes:
            await proc.wait()


@pytest.fixture
async def stack_services(
    tmp_path: Path, nats_server: natsd.NatsServer, tokens: Tokens, request: pytest.FixtureRequest
) -> AsyncIterator[Services]:
    services = Services(tmp_path, nats_server.url, tokens, request.param)
    try:
        yield services
    finally:
        await services.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stack_services", ["uvloop", "asyncio"], indirect=True)
async def test_run_succeeds_on_the_chosen_event_loop(
    stack_services: Services, tmp_path: Path, tokens: Tokens, request: pytest.FixtureRequest
) -> None:
    """Each service runs on the loop RUNBOX_EVENT_LOOP names, and runs submitted one after
    the other, and four at once, reach SUCCEEDED through all three processes."""
    loop = request.node.callspec.params["stack_services"]
    catalogue = await stack_services.start("catalogue", RUNBOX_BLOB_DIR=str(tmp_path / "blobs"))
    executor = await stack_services.start(
        "executor",
        RUNBOX_CATALOGUE__ADDRESS=f"127.0.0.1:{catalogue['grpc_port']}",
        RUNBOX_SANDBOX__BACKEND="local",
        RUNBOX_LOCAL__COMMANDS=json.dumps({"true": "/bin/true"}),
        RUNBOX_WORK_DIR=str(tmp_path / "work"),
    )
    scheduler = await stack_services.start(
        "scheduler",
        RUNBOX_CATALOGUE__ADDRESS=f"127.0.0.1:{catalogue['grpc_port']}",
        RUNBOX_EXECUTORS=json.dumps([f"127.0.0.1:{executor['grpc_port']}"]),
    )
    assert [s["event_loop"] for s in (catalogue, executor, scheduler)] == [loop] * 3
    await publish_noop(f"127.0.0.1:{catalogue['grpc_port']}", tokens.admin)  # `true`, local
    async with open_channel(f"127.0.0.1:{scheduler['grpc_port']}", token=tokens.admin) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

        async def one() -> int:
            run = await stub.SubmitRun(
                scheduler_pb2.SubmitRunRequest(script=common_pb2.ScriptRef(name=SCRIPT))
            )
            async for reply in stub.WatchRun(scheduler_pb2.WatchRunRequest(id=run.id), timeout=30):
                if reply.HasField("run") and reply.run.state in (
                    RS.RUN_STATE_SUCCEEDED,
                    RS.RUN_STATE_FAILED,
                ):
                    return reply.run.state
            raise AssertionError(f"WatchRun of {run.id} ended before the run")

        assert [await one() for _ in range(3)] == [RS.RUN_STATE_SUCCEEDED] * 3
        assert await asyncio.gather(*(one() for _ in range(4))) == [RS.RUN_STATE_SUCCEEDED] * 4


def test_event_loop_auto_is_uvloop_where_installed() -> None:
    """`auto` and `uvloop` make uvloop's loop (a dependency here), `asyncio` the default."""
    import uvloop

    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None


def test_event_loop_uvloop_missing_stops_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the package, `uvloop` stops the service at start; `auto` takes asyncio's."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import raises ImportError
    assert loop_factory("auto") is None
    with pytest.raises(SystemExit, match="RUNBOX_EVENT_LOOP=uvloop but uvloop is not installed"):
        loop_factory("uvloop")
