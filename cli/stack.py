"""`runbox up`: a local stack on embedded defaults — a nats-server with
JetStream, the four services as child processes, SQLite files and blobs under
./var, logs to files — stopped cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli import natsd, stack_settings
from shared.auth import hash_token, new_token

SERVICES = ("catalogue", "executor", "scheduler", "alerting")


@dataclass
class Ports:
    grpc: dict[str, int]
    metrics: dict[str, int]


@dataclass
class Stack:
    """A running local stack and how to stop it."""

    var: Path
    nats: natsd.NatsServer
    ports: Ports
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    admin_token_file: Path = Path()
    service_token: str = ""
    # Per service: RUNBOX_* variables from a settings file and flags (stack_settings).
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per service: what it announced once serving (its RUNBOX_READY line).
    ready: dict[str, dict[str, object]] = field(default_factory=dict)
    _log_offsets: dict[str, int] = field(default_factory=dict)

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) one service as a child process logging to var/logs."""
        log = self.var / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            self._log_offsets[name] = out.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=service_env(
                    name,
                    self.var,
                    self.ports,
                    self.nats.url,
                    self.service_token,
                    self.settings.get(name, {}),
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = proc
        return proc

    def read_ready(self, name: str, timeout: float = 10.0) -> dict[str, object]:
        """The RUNBOX_READY announcement this start of a service wrote to its log."""
        log = self.var / "logs" / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(log, "rb") as f:
                f.seek(self._log_offsets.get(name, 0))
                for line in f:
                    if line.startswith(b"RUNBOX_READY "):
                        info: dict[str, object] = json.loads(line.split(b" ", 1)[1])
                        self.ready[name] = info
                        return info
            time.sleep(0.1)
        return {}

    def wait_healthy(self, name: str, timeout: float = 60.0) -> None:
        wait_healthy(
            self.address(name), self.processes[name], self.var / "logs" / f"{name}.log", timeout
        )

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports.grpc[service]}"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the services (scheduler first), wait, then stop nats."""
        for name in reversed(SERVICES):
            proc = self.processes.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.nats.stop()


def ensure_tokens(var: Path) -> tuple[Path, str]:
    """Create (once) an admin token and a service token; store only hashes in
    principals.json. Returns the admin token file and the service token."""
    var.mkdir(parents=True, exist_ok=True)
    admin_file = var / "admin.token"
    service_file = var / "service.token"
    for path in (admin_file, service_file):
        if not path.exists():
            path.write_text(new_token() + "\n")
            path.chmod(0o600)
    admin, service = admin_file.read_text().strip(), service_file.read_text().strip()
    principals = {
        "principals": [
            {"name": "admin", "token_sha256": hash_token(admin), "permissions": ["*"]},
            {"name": "runbox-services", "token_sha256": hash_token(service), "permissions": ["*"]},
        ]
    }
    principals_file = var / "principals.json"
    principals_file.write_text(json.dumps(principals, indent=2))
    principals_file.chmod(0o600)
    return admin_file, service


def service_env(
    name: str,
    var: Path,
    stack_ports: Ports,
    nats_url: str,
    token: str,
    settings: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for one service child process: the caller's environment with its
    service RUNBOX_* variables, the stack's storage defaults, SETTINGS (a settings file's
    and the flags', for this service), then the stack's wiring, which always wins."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNBOX_")}
    env.update(stack_settings.passed_through(os.environ)[0])
    env.update(
        RUNBOX_DATABASE__URL=f"sqlite+aiosqlite:///{var / (name + '.db')}",
        RUNBOX_BLOB_DIR=str(var / "blobs"),
        RUNBOX_WORK_DIR=str(var / "executor"),
    )
    env.update(settings or {})
    addr = {svc: f"127.0.0.1:{port}" for svc, port in stack_ports.grpc.items()}
    env.update(
        RUNBOX_INSTANCE_ID=f"{name}-local",
        RUNBOX_GRPC__HOST="127.0.0.1",
        RUNBOX_GRPC__PORT=str(stack_ports.grpc[name]),
        RUNBOX_METRICS__HOST="127.0.0.1",
        RUNBOX_METRICS__PORT=str(stack_ports.metrics[name]),
        RUNBOX_NATS__URL=nats_url,
        RUNBOX_AUTH__PRINCIPALS_FILE=str(var / "principals.json"),
        RUNBOX_AUTH__SERVICE_TOKEN=token,
        RUNBOX_CATALOGUE__ADDRESS=addr["catalogue"],
        RUNBOX_SCHEDULER__ADDRESS=addr["scheduler"],
        RUNBOX_EXECUTORS=json.dumps([addr["executor"]]),
        RUNBOX_ANNOUNCE_READY="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def pick_ports(base_port: int) -> Ports:
    if base_port:
        grpc_ports = {svc: base_port + i for i, svc in enumerate(SERVICES)}
        metrics = {svc: base_port + 10 + i for i, svc in enumerate(SERVICES)}
    else:
        grpc_ports = {svc: natsd.free_port() for svc in SERVICES}
        metrics = {svc: natsd.free_port() for svc in SERVICES}
    return Ports(grpc=grpc_ports, metrics=metrics)


def wait_healthy(address: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll the gRPC health service until SERVING; fail with the log's tail."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"service at {address} did not become healthy; log tail:\n{tail}")


def up(
    var: Path,
    *,
    base_port: int = 0,
    nats_port: int = 0,
    say: Callable[[str], None] = print,
    timeout: float = 60.0,
    settings: dict[str, dict[str, str]] | None = None,
) -> Stack:
    """Start nats-server and the four services (SETTINGS: RUNBOX_* variables per service);
    write var/runbox.json."""
    var = var.resolve()
    logs = var / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    admin_file, service_token = ensure_tokens(var)
    nats = natsd.start(var / "nats", port=nats_port, log_file=logs / "nats.log")
    stack = Stack(
        var=var,
        nats=nats,
        ports=pick_ports(base_port),
        admin_token_file=admin_file,
        service_token=service_token,
        settings=settings or {},
    )
    try:
        for name in SERVICES:
            stack.spawn(name)
        for name in SERVICES:
            stack.wait_healthy(name, timeout)
            stack.read_ready(name)
            say(
                f"  {name:<10} grpc {stack.address(name)}  "
                f"metrics http://127.0.0.1:{stack.ports.metrics[name]}/metrics"
            )
    except BaseException:
        stack.stop()
        raise
    config = {svc: stack.address(svc) for svc in SERVICES}
    config["token_file"] = str(admin_file)
    config["nats"] = nats.url
    (var / "runbox.json").write_text(json.dumps(config, indent=2))
    return stack
