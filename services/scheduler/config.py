"""Scheduler settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.settings import DatabaseSettings, ServiceSettings


class ClientSettings(BaseModel):
    """Where another Runbox service listens."""

    address: str = "127.0.0.1:50051"
    timeout_s: float = 10.0


class SchedulerSettings(ServiceSettings):
    """Settings of the scheduler service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/scheduler.db")
    )
    catalogue: ClientSettings = Field(default_factory=ClientSettings)
    # Executor addresses (JSON list in RUNBOX_EXECUTORS).
    executors: list[str] = Field(default_factory=list)
    dispatch_interval_s: float = 1.0
    dispatch_batch: int = 20
    # Backoff for an executor that answered RESOURCE_EXHAUSTED / UNAVAILABLE.
    executor_backoff_s: float = 0.5
    executor_backoff_max_s: float = 10.0
    watch_poll_s: float = 1.0
