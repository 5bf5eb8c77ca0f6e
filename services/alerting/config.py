"""Alerting settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.alerting.channels import ChannelPolicy
from shared.settings import DatabaseSettings, ServiceSettings


class DeliverySettings(BaseModel):
    """The delivery worker's queue and retries (the worker is delivery.py)."""

    # Attempts of one notification before it is dead-lettered (a webhook's own
    # max_attempts, when set, wins).
    max_attempts: int = Field(default=5, ge=1, le=100)
    # Backoff between attempts: initial, doubled each time up to max.
    backoff_initial_s: float = Field(default=1.0, gt=0, le=3600)
    backoff_max_s: float = Field(default=300.0, gt=0, le=86400)
    # How often the queue is looked at when nothing wakes the worker.
    poll_s: float = Field(default=1.0, gt=0, le=60)
    # Deliveries in flight at once (over all channels), and per channel.
    concurrency: int = Field(default=16, ge=1, le=1000)
    per_channel: int = Field(default=4, ge=1, le=1000)
    # Rows claimed per round of the worker.
    batch: int = Field(default=64, ge=1, le=1000)
    # A claimed row is sent again after this long if its worker died mid-send (keep it
    # above every channel's timeout).
    claim_s: float = Field(default=120.0, gt=0, le=3600)
    # On shutdown, sends in flight get this long before they are cut off (their rows
    # are sent again once claim_s has passed).
    drain_s: float = Field(default=5.0, ge=0, le=300)


class CatalogueClientSettings(BaseModel):
    """Where the catalogue listens: alerting asks it for script tags (`script_tags`
    selectors). An empty address leaves tags unknown: tag selectors then match nothing."""

    address: str = ""
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class AlertingSettings(ServiceSettings):
    """Settings of the alerting service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/alerting.db")
    )
    # Messages fetched per pull (at most 4x this many unacknowledged at once).
    consumer_batch: int = Field(default=64, ge=1, le=1024)
    # How often the consumer lag gauge is refreshed from the server.
    lag_poll_s: float = Field(default=5.0, gt=0)
    # What channels may reach: webhook allow-list, http, timeouts, body size
    # (RUNBOX_CHANNELS__...; see docs/alerting.md, "Security").
    channels: ChannelPolicy = Field(default_factory=ChannelPolicy)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    # How long enabled rules and channels are cached by a replica at most (changes made
    # through this replica apply at once; those made through another within this time).
    rules_cache_s: float = Field(default=5.0, gt=0, le=300)
    catalogue: CatalogueClientSettings = Field(default_factory=CatalogueClientSettings)
    # How often dead-man's-switch rules are checked.
    deadman_interval_s: float = Field(default=10.0, gt=0, le=3600)
    # Upper bound on one TestChannel send, whatever the channel's own timeout says.
    test_channel_timeout_s: float = Field(default=30.0, gt=0, le=300)
