"""Alerting settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import DatabaseSettings, ServiceSettings


class AlertingSettings(ServiceSettings):
    """Settings of the alerting service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/alerting.db")
    )
    consumer_batch: int = 64
