"""Catalogue settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import DatabaseSettings, ServiceSettings


class CatalogueSettings(ServiceSettings):
    """Settings of the catalogue service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/catalogue.db")
    )
    blob_dir: str = "var/blobs"
    max_content_bytes: int = 1024 * 1024
    content_chunk_bytes: int = 64 * 1024
