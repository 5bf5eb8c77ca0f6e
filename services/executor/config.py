"""Executor settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from shared.settings import DatabaseSettings, ServiceSettings


class ClientSettings(BaseModel):
    """Where another Runbox service listens."""

    address: str = "127.0.0.1:50051"
    timeout_s: float = 10.0


class PoolSettings(BaseModel):
    """The warm pool: containers started ahead of demand, one per run by default."""

    # Warm containers always kept for the default class (the executor's own limits).
    min_idle: int = Field(default=2, ge=0, le=64)
    # Upper bound of warm containers per class; a class in use is kept at its recent peak.
    max_idle: int = Field(default=8, ge=0, le=256)
    # A class unused this long shrinks back to its minimum (0 for non-default classes).
    idle_timeout_s: float = Field(default=300.0, gt=0)
    # Containers created at once (docker create+start is the executor's slowest call).
    create_concurrency: int = Field(default=2, ge=1, le=16)
    # Reuse mode: runs per container before it is recycled, and idle life of a kept one.
    reuse_max_runs: int = Field(default=100, ge=1)
    reuse_idle_timeout_s: float = Field(default=300.0, gt=0)


class SandboxSettings(BaseModel):
    """Sandbox backend and its hardened defaults."""

    # auto: Docker when an engine answers, else the local runner (NOT sandboxed).
    backend: str = "auto"
    # Without a sandbox (backend local, or auto with no engine) python and shell runs are
    # refused (FAILED_PRECONDITION at Execute: the run ends FAILED, reason NO_SANDBOX) unless
    # the operator sets this; then they run as child processes of the executor's user with
    # the host's network and filesystem (NOT sandboxed).
    allow_unsandboxed: bool = False
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
    # Local backend: agents started ahead of demand (0: each run starts its own).
    local_warm_agents: int = Field(default=2, ge=0, le=64)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    # Docker network for runs whose script asks for NETWORK_POLICY_EGRESS_ALLOWLIST. "" (the
    # default) refuses such runs: every sandbox gets network "none". An operator names a network
    # whose egress they control (a user-defined network behind their firewall rules); "host"
    # shares the executor host's network namespace and is meant for tests and trusted ops
    # scripts only, since it also exposes every loopback service of the host.
    egress_network: str = ""


class ArtifactSettings(BaseModel):
    """Where collected artifacts go and how much one run may leave behind."""

    # "" = <work_dir>/artifacts; each run's files land in <storage_dir>/<run_id>/.
    storage_dir: str = ""
    max_files: int = Field(default=100, ge=0)
    max_total_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    max_file_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    # A sanitised name (subdirectories included) longer than this is skipped.
    max_name_bytes: int = Field(default=255, ge=1)
    # result.json larger than this is ignored (with a warning): it travels in the event.
    max_result_bytes: int = Field(default=1024 * 1024, ge=0)


class HttpSettings(BaseModel):
    """The http execution type: which URLs runs may call, and how much they bring back."""

    # URL prefixes a run may call, as scheme://host[:port][/path]: a rendered URL must have the
    # same scheme, host and port and a path under the prefix's path (segment-wise). Empty (the
    # default) refuses every http run.
    allowed_urls: list[str] = Field(default_factory=list)
    # Response bodies are cut to this many bytes in the result.
    max_response_bytes: int = Field(default=1024 * 1024, ge=0)
    # Used when the script's HttpConfig has no timeout (the run's own timeout still caps it).
    default_timeout_s: float = Field(default=30.0, gt=0)
    verify_tls: bool = True


class ServerlessSettings(BaseModel):
    """The serverless execution type: an AWS Lambda (or Lambda-compatible) endpoint."""

    # "" = AWS's regional endpoint; set it for LocalStack or another Lambda-compatible API.
    endpoint_url: str = ""
    region: str = "us-east-1"
    # Empty: boto3's default credential chain (environment, instance profile, ...).
    access_key_id: SecretStr = SecretStr("")
    secret_access_key: SecretStr = SecretStr("")
    session_token: SecretStr = SecretStr("")
    # Function names (or ARNs) runs may invoke; an entry ending in "*" is a prefix. Empty (the
    # default) refuses every serverless run.
    allowed_functions: list[str] = Field(default_factory=list)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # Socket read timeout of one Invoke; the run's own timeout ends the run earlier.
    read_timeout_s: float = Field(default=900.0, gt=0)
    max_response_bytes: int = Field(default=1024 * 1024, ge=0)
    # Secret parameters are NOT sent to functions unless this is on; then the payload carries
    # them under the key "secrets".
    send_secrets: bool = False
    # Threads for the blocking boto3 calls: at most this many invocations wait at once.
    max_concurrent_invocations: int = Field(default=16, ge=1)


class LocalCommandSettings(BaseModel):
    """The local execution type: allow-listed commands run as child processes (NOT sandboxed)."""

    # Command name (what LocalConfig.command says) -> absolute path of the executable. Entries
    # of sandbox.local_allowed_commands (absolute paths, or name=path) are added to these.
    commands: dict[str, str] = Field(default_factory=dict)
    # PATH of the command's environment.
    path: str = "/usr/local/bin:/usr/bin:/bin"
    # What sets a command's rlimits, session and death signal before exec: a fork server the
    # executor starts once (auto), util-linux's setpriv and prlimit exec'd in a chain, or a
    # Python shim per run.
    launcher: Literal["auto", "fork-server", "util-linux", "python"] = "auto"
    # Python shims started ahead of demand (launcher python; 0: each run starts its own).
    warm_shims: int = Field(default=2, ge=0, le=64)


# A container's user: numeric uid[:gid] (names need a passwd entry the image may lack).
CONTAINER_USER = re.compile(r"^\d{1,10}(:\d{1,10})?$")


class AllowedImage(BaseModel):
    """One allow-list entry of the container execution type."""

    # An exact reference ("repo:tag", "repo@sha256:...", "repo" = "repo:latest") or
    # "repo:*" for every tag and digest of one repository.
    image: str
    # "" = container.user. Only the operator sets this: a run cannot choose its user.
    user: str = ""

    @field_validator("image")
    @classmethod
    def _pattern(cls, value: str) -> str:
        base = value.removesuffix(":*")
        if not base or "*" in base or any(c.isspace() for c in value):
            raise ValueError(f"{value!r}: an exact image reference or 'repo:*'")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if value and not CONTAINER_USER.match(value):
            raise ValueError(f"{value!r}: a numeric uid or uid:gid")
        return value


class ContainerSettings(BaseModel):
    """The container execution type: allow-listed images run with their own command."""

    # Images runs may use: exact references or "repo:*" patterns, as strings or as
    # {"image": ..., "user": "uid:gid"} objects. Empty (the default) refuses every run.
    allowed_images: list[AllowedImage] = Field(default_factory=list)
    # Images are built or loaded offline; a missing image is refused at Execute.
    pull: Literal["never"] = "never"
    # uid:gid of every container unless its allow-list entry says otherwise.
    user: str = "10001:10001"
    # How long a present image is remembered (the check at Execute asks the engine).
    image_check_ttl_s: float = Field(default=60.0, ge=0)

    @field_validator("allowed_images", mode="before")
    @classmethod
    def _strings_are_images(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"image": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not CONTAINER_USER.match(value):
            raise ValueError(f"{value!r}: a numeric uid or uid:gid")
        return value


class ExecutorSettings(ServiceSettings):
    """Settings of the executor service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/executor.db")
    )
    # SQLite's `synchronous` for the outbox writes (docs/executor.md, "Event durability"):
    # NORMAL survives a crash of the executor process, not a power loss; FULL survives both
    # at the cost of an fsync per commit.
    outbox_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    # How long a run's STARTED may wait to share a commit made anyway (its FINISHED, another
    # run's QUEUED) before it is committed on its own; 0 commits it at once.
    outbox_linger_s: float = Field(default=0.05, ge=0, le=5)
    # How long the relay holds an event pushed down a scheduler's run link for its ack
    # before publishing it where the scheduler's consumer takes it (services/executor/link.py).
    link_hold_s: float = Field(default=1.0, gt=0, le=30)
    # Serve ExecutorService.Link; off, it answers UNIMPLEMENTED (schedulers use Execute).
    run_links: bool = True
    catalogue: ClientSettings = Field(default_factory=ClientSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    work_dir: str = "var/executor"
    max_concurrent_runs: int = 4
    # Runs accepted beyond the running ones, waiting for a slot.
    max_queued_runs: int = 16
    # Every active run gets a HEARTBEAT event this often; consumers may treat a run whose
    # executor has been silent for 3 intervals (its lease) as lost.
    # Bytes of each output stream of a run published live as LOG events (the rest is kept only
    # as the head and tail of the run's output).
    live_output_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=300)
    # Bounds of the retry hint (google.rpc.RetryInfo) sent with RESOURCE_EXHAUSTED when full.
    retry_after_min_s: float = Field(default=1.0, gt=0)
    retry_after_max_s: float = Field(default=60.0, gt=0)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    serverless: ServerlessSettings = Field(default_factory=ServerlessSettings)
    local: LocalCommandSettings = Field(default_factory=LocalCommandSettings)
    container: ContainerSettings = Field(default_factory=ContainerSettings)

    @model_validator(mode="after")
    def _artifacts_under_work_dir(self) -> ExecutorSettings:
        """Resolve the artifact storage default once, so every reader sees a path."""
        if not self.artifacts.storage_dir:
            self.artifacts.storage_dir = str(Path(self.work_dir) / "artifacts")
        return self
