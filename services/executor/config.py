"""Executor settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.settings import DatabaseSettings, ServiceSettings


class ClientSettings(BaseModel):
    """Where another Runbox service listens."""

    address: str = "127.0.0.1:50051"
    timeout_s: float = 10.0


class SandboxSettings(BaseModel):
    """Sandbox backend and its hardened defaults."""

    # auto: Docker when an engine answers, else the local runner (NOT sandboxed).
    backend: str = "auto"
    image: str = "runbox/sandbox-python:latest"
    # "" = the engine's default runtime (runc); "runsc" = gVisor.
    runtime: str = ""
    memory_bytes: int = 256 * 1024 * 1024
    cpus: float = 1.0
    pids: int = 128
    work_bytes: int = 64 * 1024 * 1024
    tmp_bytes: int = 64 * 1024 * 1024
    timeout_s: float = 300.0
    output_bytes: int = 1024 * 1024
    cancel_grace_s: float = 5.0
    local_allowed_commands: list[str] = Field(default_factory=list)
    # Docker network for runs whose script asks for NETWORK_POLICY_EGRESS_ALLOWLIST. "" (the
    # default) refuses such runs: every sandbox gets network "none". An operator names a network
    # whose egress they control (a user-defined network behind their firewall rules); "host"
    # shares the executor host's network namespace and is meant for tests and trusted ops
    # scripts only, since it also exposes every loopback service of the host.
    egress_network: str = ""


class ExecutorSettings(ServiceSettings):
    """Settings of the executor service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/executor.db")
    )
    catalogue: ClientSettings = Field(default_factory=ClientSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    work_dir: str = "var/executor"
    max_concurrent_runs: int = 4
    # Runs accepted beyond the running ones, waiting for a slot.
    max_queued_runs: int = 16
