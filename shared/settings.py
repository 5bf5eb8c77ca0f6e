"""Settings base: environment variables with one prefix (RUNBOX_), nested with
`__` (RUNBOX_DATABASE__URL), read once at start by each service's __main__."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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


class DatabaseSettings(BaseModel):
    """SQLAlchemy async URL and pool options (RUNBOX_DATABASE__POOL_SIZE, ...)."""

    url: str = "sqlite+aiosqlite:///var/runbox.db"
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
