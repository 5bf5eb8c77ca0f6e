"""The built-in templates, instantiated and run in the Docker sandbox against loopback targets.

The executor offers egress through the host network here (sandbox.egress_network="host"), the
only way a sandbox can reach this machine's loopback while Docker runs with --bridge=none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from shared.clients import open_channel
from tests.integration.stack import RunPath, start_run_path

pytestmark = pytest.mark.usefixtures("docker_engine")
TERMINAL = {
    common_pb2.RUN_STATE_SUCCEEDED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_TIMED_OUT,
    common_pb2.RUN_STATE_CANCELLED,
}
CONFIG = b"hostname edge-1\ninterface eth0\n  ip address 192.0.2.1/24\n"
TOKEN = "s3cret-bearer-token-4711"


@pytest.fixture
async def path(tmp_path: Path, nats_server, tokens) -> AsyncIterator[RunPath]:  # type: ignore[no-untyped-def]
    stack = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        executor={"sandbox": {"backend": "docker", "timeout_s": 60, "egress_network": "host"}},
        catalogue={"builtin_templates": True},
    )
    yield stack
    await stack.close()


@pytest.fixture
def config_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback serving CONFIG to the bearer of TOKEN; records auth headers."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(CONFIG)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/running-config", seen
    server.shutdown()
    server.server_close()


async def _instantiate(path: RunPath, template: str, name: str, **placeholders: str) -> None:
    async with open_channel(path.catalogue.address, token=path.tokens.admin) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        await stub.InstantiateTemplate(
            catalogue_pb2.InstantiateTemplateRequest(
                template_name=template, name=name, placeholders=placeholders
            )
        )


async def _run(path: RunPath, name: str, **params: Any) -> scheduler_pb2.Run:
    values = struct_pb2.Struct()
    values.update(params)
    stub = path.scheduler_stub()
    run = await stub.SubmitRun(
        scheduler_pb2.SubmitRunRequest(script=common_pb2.ScriptRef(name=name), parameters=values)
    )

    async def poll() -> scheduler_pb2.Run:
        while True:
            current = await stub.GetRun(scheduler_pb2.GetRunRequest(id=run.id))
            if current.state in TERMINAL:
                return current
            await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), 90)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_network_discovery_finds_open_and_closed_loopback_ports(path: RunPath) -> None:
    accepted = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    open_port = server.sockets[0].getsockname()[1]
    closed_port = _closed_port()
    try:
        await _instantiate(path, "network-discovery", "scan-lo", default_timeout_s="0.5")
        run = await _run(
            path, "scan-lo", targets="127.0.0.1/32", ports=f"{open_port},{closed_port}"
        )
    finally:
        server.close()
        await server.wait_closed()
    assert run.state == common_pb2.RUN_STATE_SUCCEEDED, run.output.stderr
    report = json.loads(run.output.stdout)
    assert report["open"] == [{"host": "127.0.0.1", "port": open_port}]
    states = {r["port"]: r["state"] for r in report["results"]}
    assert states == {open_port: "open", closed_port: "closed"}
    assert report["timeout_s"] == 0.5  # the placeholder baked into the instance
    assert accepted == 1


async def test_network_discovery_refuses_an_oversized_range(path: RunPath) -> None:
    await _instantiate(path, "network-discovery", "scan-big", max_hosts="16")
    run = await _run(path, "scan-big", targets="10.0.0.0/16", ports="22")
    assert run.state == common_pb2.RUN_STATE_FAILED
    assert run.exit.exit_code == 2
    assert "the limit is 16" in json.loads(run.output.stdout)["error"]


async def test_config_backup_stores_the_config_with_its_checksum(
    path: RunPath, config_server: tuple[str, list[str]]
) -> None:
    url, seen = config_server
    await _instantiate(path, "config-backup", "backup-edge", artifact_name="edge-1.cfg")
    run = await _run(path, "backup-edge", url=url, auth_token=TOKEN)
    assert run.state == common_pb2.RUN_STATE_SUCCEEDED, run.output.stderr
    report = json.loads(run.output.stdout)
    assert report["artifact"] == "edge-1.cfg"
    assert report["sha256"] == hashlib.sha256(CONFIG).hexdigest()
    assert report["size_bytes"] == len(CONFIG)
    assert report["changed"] is False
    assert seen == [f"Bearer {TOKEN}"]  # the secret reached the target...
    assert TOKEN not in str(run)  # ...and nothing the platform kept or returns
    # Drift: a known-good digest that no longer matches exits 3.
    drift = await _run(path, "backup-edge", url=url, auth_token=TOKEN, expected_sha256="0" * 64)
    assert drift.state == common_pb2.RUN_STATE_FAILED and drift.exit.exit_code == 3
    assert json.loads(drift.output.stdout)["changed"] is True


async def test_config_backup_from_a_command(path: RunPath) -> None:
    await _instantiate(path, "config-backup", "backup-os")
    run = await _run(path, "backup-os", method="command", command="cat /etc/os-release")
    assert run.state == common_pb2.RUN_STATE_SUCCEEDED, run.output.stderr
    report = json.loads(run.output.stdout)
    assert report["artifact"] == "config" and report["source"] == "command"
    assert report["size_bytes"] > 0 and len(report["sha256"]) == 64
