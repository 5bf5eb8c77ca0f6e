"""Catalogue tables: scripts, their tags, versions, the audit log and the event outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.outbox import outbox_table


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
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    execution_type: Mapped[int] = mapped_column(Integer, index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    default_limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    default_retry: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    isolation: Mapped[int] = mapped_column(Integer, default=0)
    runtime: Mapped[int] = mapped_column(Integer, default=0)
    is_template: Mapped[bool] = mapped_column(default=False)
    # Highest stable non-yanked version ("" if none), maintained on publish and yank.
    latest_version: Mapped[str] = mapped_column(String(100), default="", server_default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class VersionRow(Base):
    """One immutable published version of a script."""

    __tablename__ = "script_versions"
    __table_args__ = (
        UniqueConstraint("script_id", "version", name="uq_script_versions_script_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    script_id: Mapped[int] = mapped_column(ForeignKey("scripts.id"), index=True)
    version: Mapped[str] = mapped_column(String(100))
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ScriptTagRow(Base):
    """One tag of a script: the search index behind ListScripts tag filters."""

    __tablename__ = "script_tags"
    __table_args__ = (Index("ix_script_tags_tag_script_id", "tag", "script_id"),)

    script_id: Mapped[int] = mapped_column(
        ForeignKey("scripts.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(63), primary_key=True)


class AuditRow(Base):
    """One change to the catalogue: who, what, when, and digests of before/after."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_script_name_id", "script_name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    script_name: Mapped[str] = mapped_column(String(63))
    version: Mapped[str] = mapped_column(String(100), default="")
    before_digest: Mapped[str] = mapped_column(String(64), default="")
    after_digest: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(Base.metadata)
