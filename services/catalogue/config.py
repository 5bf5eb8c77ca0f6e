"""Catalogue settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, model_validator

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
    # Publish the built-in templates (network-discovery, config-backup) at start-up when missing.
    builtin_templates: bool = True

    @model_validator(mode="after")
    def _content_fits_in_a_message(self) -> Self:
        # PublishVersion carries the content in one message: a limit above what
        # gRPC accepts would answer RESOURCE_EXHAUSTED instead of a precise error.
        headroom = 64 * 1024
        if self.max_content_bytes + headroom > self.grpc.max_message_bytes:
            raise ValueError(
                f"max_content_bytes ({self.max_content_bytes}) plus {headroom} bytes of "
                f"request overhead must fit in grpc.max_message_bytes "
                f"({self.grpc.max_message_bytes}); raise RUNBOX_GRPC__MAX_MESSAGE_BYTES"
            )
        if not 1024 <= self.content_chunk_bytes <= self.grpc.max_message_bytes - headroom:
            raise ValueError("content_chunk_bytes must be between 1 KiB and the message limit")
        return self
