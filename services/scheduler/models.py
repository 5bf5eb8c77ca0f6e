"""Scheduler tables: runs (history and queue), schedules, and the event outbox."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from google.protobuf import struct_pb2
from sqlalchemy import JSON, Index, Integer, LargeBinary, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runbox.common.v1 import common_pb2
from shared.db import precise_datetime
from shared.outbox import outbox_table


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class RunRow(Base):
    """One run: the source of truth for its state. Secret parameter values are
    never stored; only their names."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_queue", "state", "priority", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    script_name: Mapped[str] = mapped_column(String(63), index=True)
    version_selector: Mapped[str] = mapped_column(String(100), default="")
    script_version: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    execution_type: Mapped[int] = mapped_column(Integer)
    state: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secret_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    parent_run_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    schedule_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    retry: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    isolation: Mapped[int] = mapped_column(Integer, default=0)
    runtime: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[int] = mapped_column(Integer, default=0)
    exit_message: Mapped[str] = mapped_column(Text, default="")
    exit_signal: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # ResourceUsage.sandbox, kept out of `usage`: a 0.1.0 replica parses that JSON strictly
    # and fails on a key it does not know (docs/upgrades.md, version skew).
    sandbox: Mapped[str] = mapped_column(String(16), default="", server_default="")
    stdout_tail: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    stderr_tail: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    output_truncated: Mapped[bool] = mapped_column(default=False)
    stdout_total: Mapped[int] = mapped_column(Integer, default=0)
    stderr_total: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    executor_id: Mapped[str] = mapped_column(String(200), default="")
    executor_address: Mapped[str] = mapped_column(String(200), default="")
    submitted_by: Mapped[str] = mapped_column(String(200), default="")
    trace_context: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    dead_lettered: Mapped[bool] = mapped_column(default=False)
    retry_run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(precise_datetime(), index=True)
    queued_at: Mapped[datetime | None] = mapped_column(precise_datetime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(precise_datetime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(precise_datetime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(precise_datetime())
    dispatch_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_dispatch_at: Mapped[datetime | None] = mapped_column(precise_datetime(), nullable=True)
    # When the run was handed to `executor_address` without an answer on record (yet): until
    # a lease has passed it may be running there, so it goes to no other executor.
    dispatch_attempted_at: Mapped[datetime | None] = mapped_column(
        precise_datetime(), nullable=True
    )
    # SHA-256 of the submit request (secret values left out), to tell a retried submit from
    # an idempotency key reused for another request.
    request_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Renewed by each event of a QUEUED or RUNNING run; past it the run is LOST. Not indexed,
    # so PostgreSQL renews it in place (HOT); the sweeper finds active runs by state.
    lease_expires_at: Mapped[datetime | None] = mapped_column(precise_datetime(), nullable=True)
    dead_lettered_at: Mapped[datetime | None] = mapped_column(
        precise_datetime(), nullable=True, index=True
    )
    dead_letter_reason: Mapped[str] = mapped_column(Text, default="")
    replay_run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class _RunRecord:
    """A run's columns as plain attributes, outside any session: what the hot paths (a
    submit's insert, reads by id or key, applying events, WatchRun) read and move, without
    the ORM's instrumented attributes and instance state (building a RunRow and setting its
    attributes showed as ~3-4 % of the scheduler's CPU at 4 runs in flight). It is never
    added to a session."""

    def __init__(self, values: Mapping[Any, Any]) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"RunRecord(id={self.__dict__.get('id')!r}, state={self.__dict__.get('state')!r})"


if TYPE_CHECKING:
    # Type-checked as the mapped class: the same column attributes with the same types.
    # Code that needs the ORM (a session's add, merge, refresh) takes RunRow objects made by
    # a session or RunRow(**values); the record paths never hand theirs to one.
    RunRecord = RunRow
else:
    RunRecord = _RunRecord


def run_record(values: Mapping[Any, Any]) -> RunRow:
    """A RunRecord of a run's column values (every column: a row as read, or values with
    their defaults filled in)."""
    return _RunRecord(values)  # type: ignore[return-value]


_KEPT = "_kept_messages"


def keep_messages(row: RunRow, usage: common_pb2.ResourceUsage, result: struct_pb2.Struct) -> None:
    """On a record (not an ORM row) an event just moved: the usage and result messages its
    usage and result columns were made from (the usage with its sandbox), so that showing
    the run (servicer.run_to_proto) needs no JSON parse of them. Not a column: never
    written, and gone from a record read back."""
    if isinstance(row, _RunRecord):
        row.__dict__[_KEPT] = (usage, result)


def kept_messages(row: RunRow) -> tuple[common_pb2.ResourceUsage, struct_pb2.Struct] | None:
    """(usage, result) as `keep_messages` kept them on this record, or None."""
    kept: tuple[common_pb2.ResourceUsage, struct_pb2.Struct] | None = row.__dict__.get(_KEPT)
    return kept


RUN_COLUMNS: tuple[str, ...] = tuple(c.key for c in RunRow.__table__.columns)


class ScheduleRow(Base):
    """One schedule definition. `definition` holds the user-set fields of the
    proto Schedule as proto JSON (defaults filled in); the columns beside it are
    what queries filter on and what the server sets."""

    __tablename__ = "schedules"
    __table_args__ = (Index("ix_schedules_due", "state", "next_fire_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    script_name: Mapped[str] = mapped_column(String(63), index=True)
    state: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    next_fire_at: Mapped[datetime | None] = mapped_column(precise_datetime(), nullable=True)
    last_fire_at: Mapped[datetime | None] = mapped_column(precise_datetime(), nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    pause_reason: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    # SHA-256 of the create request, to tell a retry from a reused key.
    request_sha256: Mapped[str] = mapped_column(String(64), default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(precise_datetime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(precise_datetime())


class FireRow(Base):
    """One fire of a schedule, keyed by its nominal time: written (claimed) before its run is
    created, so a fire happens at most once whatever crashes or replicas do; a skipped or
    missed fire is recorded too."""

    __tablename__ = "fires"

    schedule_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    nominal_at: Mapped[datetime] = mapped_column(precise_datetime(), primary_key=True)
    outcome: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    recorded_at: Mapped[datetime] = mapped_column(precise_datetime(), index=True)


class QuarantineRow(Base):
    """A script whose runs crash-looped: its PENDING runs are not dispatched while
    released_at is null. A released row stays, so failures before the release no longer
    count towards the next quarantine."""

    __tablename__ = "quarantines"

    script_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    since: Mapped[datetime] = mapped_column(precise_datetime())
    reason: Mapped[str] = mapped_column(Text, default="")
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    released_at: Mapped[datetime | None] = mapped_column(precise_datetime(), nullable=True)


OUTBOX = outbox_table(Base.metadata)
