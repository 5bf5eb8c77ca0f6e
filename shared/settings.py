"""Settings base: environment variables with one prefix (RUNBOX_), nested with
`__` (RUNBOX_DATABASE__URL), read once at start by each service's __main__."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

ENV_PREFIX = "RUNBOX_"


class GrpcSettings(BaseModel):
    """Where and how the gRPC server listens."""

    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 4 * 1024 * 1024
    # Calls that arrive without a deadline get this one on the server.
    default_deadline_s: float = 30.0
    shutdown_grace_s: float = 10.0
    max_concurrent_rpcs: int = 256


def read_secret_file(path: str, what: str) -> str:
    """A secret kept in a file (compose secrets under /run/secrets, a Kubernetes
    Secret volume): its text without surrounding whitespace. The error names the
    file and the setting, never the content."""
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if not value:
        raise ValueError(f"{what}: {path} is empty")
    return value


class DatabaseSettings(BaseModel):
    """SQLAlchemy async URL and pool options (RUNBOX_DATABASE__POOL_SIZE, ...)."""

    # Not in repr: with password_file the URL carries the password (log it with
    # make_url(url).render_as_string(hide_password=True)).
    url: str = Field(default="sqlite+aiosqlite:///var/runbox.db", repr=False)
    # A file holding the password, put into the URL at start (the URL has none).
    password_file: str = ""
    # Connections kept open, and how many more may open under load.
    pool_size: int = Field(default=5, ge=1)
    max_overflow: int = Field(default=10, ge=0)
    # How long a request waits for a connection before failing.
    pool_timeout_s: float = Field(default=10.0, gt=0)
    # Connections older than this are replaced (servers and proxies close idle
    # ones: MariaDB's wait_timeout); -1 never.
    pool_recycle_s: float = -1
    # Test each connection with a round trip when it leaves the pool (not SQLite files).
    pool_pre_ping: bool = True
    echo: bool = False

    @model_validator(mode="after")
    def _password_from_file(self) -> Self:
        if not self.password_file:
            return self
        parsed = make_url(self.url)
        if parsed.password:
            raise ValueError(
                "RUNBOX_DATABASE__URL has a password and RUNBOX_DATABASE__PASSWORD_FILE is "
                "set: keep the password in one place"
            )
        password = read_secret_file(self.password_file, "RUNBOX_DATABASE__PASSWORD_FILE")
        self.url = parsed.set(password=password).render_as_string(hide_password=False)
        return self


class NatsSettings(BaseModel):
    """JetStream connection and the event stream."""

    url: str = "nats://127.0.0.1:4222"
    stream: str = "RUNBOX_EVENTS"
    subjects_prefix: str = "runbox.events"
    duplicate_window_s: float = 120.0
    connect_timeout_s: float = 5.0
    replicas: int = 1


class MetricsSettings(BaseModel):
    """Prometheus /metrics endpoint; port 0 picks a free one, -1 disables."""

    host: str = "127.0.0.1"
    port: int = 0


class AuthSettings(BaseModel):
    """Principals (tokens stored as SHA-256 hashes) and this service's own
    token for calling other services."""

    principals_file: str = ""
    # JSON list of {"name", "token_sha256", "permissions"}; merged with the file.
    principals: list[dict[str, object]] = Field(default_factory=list)
    service_token: SecretStr = SecretStr("")
    # A file holding service_token, read once at start (whitespace stripped).
    service_token_file: str = ""

    @model_validator(mode="after")
    def _token_from_file(self) -> Self:
        if not self.service_token_file:
            return self
        if self.service_token.get_secret_value():
            raise ValueError(
                "both RUNBOX_AUTH__SERVICE_TOKEN and RUNBOX_AUTH__SERVICE_TOKEN_FILE are set: "
                "set one"
            )
        token = read_secret_file(self.service_token_file, "RUNBOX_AUTH__SERVICE_TOKEN_FILE")
        self.service_token = SecretStr(token)
        return self


class LogSettings(BaseModel):
    level: str = "INFO"
    json_format: bool = True
    file: str = ""


class ServiceSettings(BaseSettings):
    """Fields every service has; each service subclasses it."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
    )

    instance_id: str = ""
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    # Print "RUNBOX_READY <json>" on stdout once serving (used by the dev stack).
    announce_ready: bool = False
    # The asyncio event loop the service runs on: uvloop (libuv, its transports and
    # callbacks in C: less CPU per wake-up, docs/benchmarks.md s6-cpu),
    # the standard library's, or `auto`: uvloop where it is installed (a dependency on Linux
    # and macOS), else the standard one.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
