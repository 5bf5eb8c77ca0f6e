"""Alerting tables: rules, channels, silences, alerts, deliveries, the run
history rules judge by, dead-man's-switch watches, and processed event ids.

The same models serve SQLite, PostgreSQL and MariaDB: names and keys compare
byte for byte (shared.db.key_string), timestamps are UTC and timezone-aware
(shared.db.UTCDateTime), and every table is utf8mb4 on MariaDB. Enum columns
hold the proto enum numbers (alerting.v1 AlertState / DeliveryState /
Severity, common.v1 RunState / ExecutionType)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, key_string

# Table options on MariaDB/MySQL: 4-byte UTF-8 whatever the server's default is.
MYSQL_TABLE: dict[str, Any] = {"mysql_charset": "utf8mb4"}
# Row ids: uuid4().hex.
ID = 32
# Lengths the API enforces on names and keys (store.py checks them first).
NAME = 200
GROUP_KEY = 255


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ProcessedEvent(Base):
    """An event id alerting has handled; a redelivery finds it and stops."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    subject: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class RuleRow(Base):
    """One alert rule. `definition` is the proto Rule as proto JSON (user-set
    fields only: no id, enabled or times); the columns beside it are what
    queries filter on and what the server sets."""

    __tablename__ = "rules"
    __table_args__ = (Index("ix_rules_created_at_id", "created_at", "id"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str] = mapped_column(key_string(NAME), unique=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    idempotency_key: Mapped[str | None] = mapped_column(key_string(200), unique=True, nullable=True)
    # SHA-256 of the create request, to tell a retry from a reused key.
    request_sha256: Mapped[str] = mapped_column(String(64), default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ChannelRow(Base):
    """One notification channel. `definition` is the proto Channel as proto JSON
    including its secrets (email password, webhook signing secret): they are
    read by delivery and never returned by the API (channels.redact)."""

    __tablename__ = "channels"
    __table_args__ = (Index("ix_channels_created_at_id", "created_at", "id"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    name: Mapped[str] = mapped_column(key_string(NAME), unique=True)
    # "email" or "webhook" (the Channel.kind oneof).
    kind: Mapped[str] = mapped_column(String(20))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    idempotency_key: Mapped[str | None] = mapped_column(key_string(200), unique=True, nullable=True)
    request_sha256: Mapped[str] = mapped_column(String(64), default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SilenceRow(Base):
    """A maintenance window: events matching `selector` (proto Selector as proto
    JSON) between starts_at and ends_at notify nobody. Expiring sets
    expired_at (and ends_at to that moment); the row stays for the record."""

    __tablename__ = "silences"
    __table_args__ = (Index("ix_silences_created_at_id", "created_at", "id"), MYSQL_TABLE)

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(key_string(200), unique=True, nullable=True)
    request_sha256: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


def open_key(rule_id: str, group_key: str) -> str:
    """AlertRow.open_key of an alert that is not resolved: one per (rule, group key)."""
    return hashlib.sha256(f"{rule_id}\x00{group_key}".encode()).hexdigest()


class AlertRow(Base):
    """One alert: a rule firing for a group key, FIRING -> ACKNOWLEDGED ->
    RESOLVED. `open_key` (see open_key()) is set while the alert is not
    resolved and NULL once it is: its unique index lets at most one open alert
    exist per (rule_id, group_key) on every dialect (NULLs never collide)."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_first_seen_id", "first_seen", "id"),
        Index("ix_alerts_rule_id_group_key", "rule_id", "group_key"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(ID))
    group_key: Mapped[str] = mapped_column(key_string(GROUP_KEY))
    open_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    severity: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[str] = mapped_column(Text, default="")
    script_name: Mapped[str] = mapped_column(key_string(63), default="", index=True)
    schedule_id: Mapped[str] = mapped_column(String(64), default="")
    run_id: Mapped[str] = mapped_column(String(64), default="")
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    # The latest event's template context (JSON-safe, no secrets), for recovery notices.
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    # When a notification for this alert was last queued (dedup window start).
    last_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    acknowledged_by: Mapped[str] = mapped_column(String(200), default="")
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    resolved_by: Mapped[str] = mapped_column(String(200), default="")
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")


class DeliveryRow(Base):
    """One notification to one channel, recorded before it is attempted.
    state is a DeliveryState number; the worker picks PENDING/RETRYING rows
    whose next_attempt_at has passed. `payload` is the rendered Notification
    (JSON-safe, no secrets). `dedup_key`, when set, makes a second insert of
    the same notification fail (unique)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "state", "next_attempt_at"),
        Index("ix_deliveries_created_at_id", "created_at", "id"),
        # Throttling counts a rule's notifications per channel in a window.
        Index("ix_deliveries_throttle", "rule_id", "channel_id", "created_at"),
        MYSQL_TABLE,
    )

    id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(ID), index=True)
    rule_id: Mapped[str] = mapped_column(String(ID), default="")
    channel_id: Mapped[str] = mapped_column(String(ID), index=True)
    # "firing", "resolved" or "test".
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dedup_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    dead_lettered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RunHistoryRow(Base):
    """A finished run as alerting saw it (from its terminal RunEvent): what
    consecutive failures, failure rate, p95 duration, recovery and the
    dead-man's switch are judged by. state is a common.v1 RunState number."""

    __tablename__ = "run_history"
    __table_args__ = (
        Index("ix_run_history_script_name_finished_at", "script_name", "finished_at"),
        Index("ix_run_history_schedule_id_finished_at", "schedule_id", "finished_at"),
        MYSQL_TABLE,
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    script_name: Mapped[str] = mapped_column(key_string(63))
    schedule_id: Mapped[str] = mapped_column(String(64), default="")
    execution_type: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WatchRow(Base):
    """Dead-man's switch state of one (rule, schedule): a success is due by
    due_at; past it the deadman loop fires (alert_id) once until a success
    moves due_at on."""

    __tablename__ = "watches"
    __table_args__ = (MYSQL_TABLE,)

    rule_id: Mapped[str] = mapped_column(String(ID), primary_key=True)
    schedule_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    script_name: Mapped[str] = mapped_column(key_string(63), default="")
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    alert_id: Mapped[str | None] = mapped_column(String(ID), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
