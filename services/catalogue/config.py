"""Catalogue settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.settings import DatabaseSettings, ServiceSettings


class SchedulerClient(BaseModel):
    """Where the scheduler listens; empty: no scheduler in this deployment, so
    no schedule can reference a script and deletes are not checked."""

    address: str = ""
    timeout_s: float = 5.0


class CatalogueSettings(ServiceSettings):
    """Settings of the catalogue service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/catalogue.db")
    )
    blob_dir: str = "var/blobs"
    max_content_bytes: int = 1024 * 1024
    content_chunk_bytes: int = 64 * 1024
    scheduler: SchedulerClient = Field(default_factory=SchedulerClient)
    # Resolution cache per replica (0 disables); dropped on writes and ScriptEvents.
    resolve_cache_ttl_s: float = 30.0
    resolve_cache_entries: int = 10_000
