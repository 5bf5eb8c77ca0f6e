"""Alerting settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import DatabaseSettings, ServiceSettings


class AlertingSettings(ServiceSettings):
    """Settings of the alerting service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/alerting.db")
    )
    # Messages fetched per pull (at most 4x this many unacknowledged at once).
    consumer_batch: int = Field(default=64, ge=1, le=1024)
    # How often the consumer lag gauge is refreshed from the server.
    lag_poll_s: float = Field(default=5.0, gt=0)
