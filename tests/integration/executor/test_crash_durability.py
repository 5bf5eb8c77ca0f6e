"""An answered Execute survives kill -9 of the executor: the executor is its own process
(`python -m services.executor`, backend local, a SQLite outbox file), killed with SIGKILL right
after it answered Execute, then started again on the same database. The repeated Execute is
answered as a repeat (the QUEUED row was committed before the answer), the QUEUED event reaches
JetStream (the relay sends what the table holds), and the script ran once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import nats

from cli import natsd
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from shared.clients import open_channel
from tests.e2e.serving import wait_serving

ROOT = Path(__file__).resolve().parents[3]


async def start(tmp: Path, nats_url: str, tokens: Any) -> tuple[asyncio.subprocess.Process, str]:
    port = natsd.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
    env |= {
        "RUNBOX_INSTANCE_ID": "executor-crash",
        "RUNBOX_GRPC__HOST": "127.0.0.1",
        "RUNBOX_GRPC__PORT": str(port),
        "RUNBOX_METRICS__PORT": "-1",
        "RUNBOX_DATABASE__URL": f"sqlite+aiosqlite:///{tmp / 'executor.db'}",
        "RUNBOX_NATS__URL": nats_url,
        "RUNBOX_AUTH__PRINCIPALS_FILE": str(tokens.principals_file),
        "RUNBOX_SANDBOX__BACKEND": "local",
        "RUNBOX_SANDBOX__ALLOW_UNSANDBOXED": "true",
        "RUNBOX_WORK_DIR": str(tmp / "work"),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp / "executor.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.executor",
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"127.0.0.1:{port}"
    await wait_serving(address, proc, log, "executor")
    return proc, address


def request(ledger: Path) -> executor_pb2.ExecuteRequest:
    content = (
        f"import time\nopen({str(ledger)!r}, 'a').write('ran\\n')\ntime.sleep(60)\n"
    ).encode()
    return executor_pb2.ExecuteRequest(
        run_id=uuid.uuid4().hex,
        attempt=1,
        script_name="t",
        script_version="1.0.0",
        sha256=hashlib.sha256(content).hexdigest(),
        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
        content=content,
    )


async def execute(address: str, token: str, req: executor_pb2.ExecuteRequest) -> Any:
    async with open_channel(address, token=token) as channel:
        return await executor_pb2_grpc.ExecutorServiceStub(channel).Execute(req, timeout=30)


async def test_answered_execute_survives_kill_9(
    tmp_path: Path, nats_server: natsd.NatsServer, tokens: Any
) -> None:
    ledger = tmp_path / "ledger"
    req = request(ledger)
    proc, address = await start(tmp_path, nats_server.url, tokens)
    try:
        first = await execute(address, tokens.service, req)
        assert first.newly_accepted
        proc.send_signal(signal.SIGKILL)  # right after the answer
        await proc.wait()

        proc, address = await start(tmp_path, nats_server.url, tokens)
        again = await execute(address, tokens.service, req)
        assert not again.newly_accepted
        gap = again.accepted_at.ToDatetime() - first.accepted_at.ToDatetime()
        assert abs(gap.total_seconds()) < 5  # the first acceptance, as committed

        nc = await nats.connect(nats_server.url)
        try:
            sub = await nc.jetstream().subscribe(
                f"runbox.events.run.{req.run_id}.>", ordered_consumer=True
            )
            queued = events_pb2.RunEvent.FromString((await sub.next_msg(timeout=30)).data)
            await sub.unsubscribe()
        finally:
            await nc.close()
        assert (queued.type, queued.sequence) == (events_pb2.RUN_EVENT_TYPE_QUEUED, 1)
        await asyncio.sleep(1)  # a second start of the script would have written by now
        text = await asyncio.to_thread(ledger.read_text) if ledger.exists() else ""
        assert text in ("", "ran\n")  # killed before or after it started: never twice
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
