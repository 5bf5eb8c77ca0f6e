"""Catalogue tables: scripts, their tags, versions, the audit log and the event outbox.

The same models serve SQLite, PostgreSQL and MariaDB: identifiers compare byte
for byte (shared.db.key_string), timestamps are UTC and timezone-aware
(shared.db.UTCDateTime), and every table is utf8mb4 on MariaDB."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, key_string
from shared.outbox import outbox_table

# Table options on MariaDB/MySQL: 4-byte UTF-8 whatever the server's default is.
MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4"}


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ScriptRow(Base):
    """A registered script (metadata; content lives in versions)."""

    __tablename__ = "scripts"
    __table_args__ = (
        # ListScripts orders: by name (unique index), newest first (id), recently updated.
        Index("ix_scripts_updated_at_id", "updated_at", "id"),
        Index("ix_scripts_deleted_at", "deleted_at"),
        # ListTemplates and templates_only listings: the few templates, in name order.
        Index("ix_scripts_is_template_name", "is_template", "name"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(key_string(63), unique=True, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    owner: Mapped[str] = mapped_column(key_string(200), default="", index=True)
    execution_type: Mapped[int] = mapped_column(Integer, index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    default_limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    default_retry: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    isolation: Mapped[int] = mapped_column(Integer, default=0)
    runtime: Mapped[int] = mapped_column(Integer, default=0)
    is_template: Mapped[bool] = mapped_column(default=False)
    # Highest stable non-yanked version ("" if none), maintained on publish and yank.
    latest_version: Mapped[str] = mapped_column(String(100), default="", server_default="")
    idempotency_key: Mapped[str | None] = mapped_column(key_string(200), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class VersionRow(Base):
    """One immutable published version of a script."""

    __tablename__ = "script_versions"
    __table_args__ = (
        UniqueConstraint("script_id", "version", name="uq_script_versions_script_version"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    script_id: Mapped[int] = mapped_column(ForeignKey("scripts.id"), index=True)
    version: Mapped[str] = mapped_column(key_string(100))
    major: Mapped[int] = mapped_column(Integer)
    minor: Mapped[int] = mapped_column(Integer)
    patch: Mapped[int] = mapped_column(Integer)
    prerelease: Mapped[str] = mapped_column(String(100), default="")
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    state: Mapped[int] = mapped_column(Integer, default=1)
    # Why the version was deprecated or yanked.
    state_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    changelog: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ScriptTagRow(Base):
    """One tag of a script: the search index behind ListScripts tag filters."""

    __tablename__ = "script_tags"
    __table_args__ = (Index("ix_script_tags_tag_script_id", "tag", "script_id"), MYSQL_TABLE)

    script_id: Mapped[int] = mapped_column(
        ForeignKey("scripts.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(key_string(63), primary_key=True)


class AuditRow(Base):
    """One change to the catalogue: who, what, when, and digests of before/after."""

    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_script_name_id", "script_name", "id"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    script_name: Mapped[str] = mapped_column(key_string(63))
    version: Mapped[str] = mapped_column(String(100), default="")
    before_digest: Mapped[str] = mapped_column(String(64), default="")
    after_digest: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


OUTBOX = outbox_table(Base.metadata)
