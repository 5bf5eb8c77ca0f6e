"""Transactional outbox: an event is written in the same transaction as the
state change it reports, then a relay publishes it to JetStream with
Nats-Msg-Id set. A crash between commit and publish loses nothing (the relay
publishes it on restart); a crash between publish and marking it sent
republishes with the same id, which JetStream's duplicate window drops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import key_string
from shared.tasks import stop_gracefully
from shared.telemetry import inject_context

log = logging.getLogger(__name__)


def outbox_table(metadata: MetaData) -> Table:
    """The outbox table, added to a service's own metadata (and migrations)."""
    return Table(
        "outbox",
        metadata,
        Column(
            "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        # Byte-compared: ids differing only in case are distinct events (MariaDB folds case).
        Column("msg_id", key_string(200), nullable=False, unique=True),
        Column("subject", String(255), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", Text, nullable=False, default="{}"),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
    )


class Outbox:
    """Adds events inside a caller's transaction and relays them afterwards."""

    def __init__(
        self,
        table: Table,
        sessions: async_sessionmaker[AsyncSession],
        *,
        poll_interval_s: float = 0.5,
        batch: int = 100,
    ) -> None:
        self._table = table
        self._sessions = sessions
        self._poll = poll_interval_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def add(
        self,
        session: AsyncSession,
        *,
        subject: str,
        msg_id: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Stage an event in the caller's (uncommitted) transaction."""
        all_headers = inject_context(dict(headers or {}))
        await session.execute(
            insert(self._table).values(
                msg_id=msg_id,
                subject=subject,
                payload=payload,
                headers=json.dumps(all_headers),
                created_at=datetime.now(UTC),
            )
        )

    def notify(self) -> None:
        """Wake the relay after a commit so events go out without waiting a poll."""
        self._wake.set()

    def start(self, js: JetStreamContext) -> None:
        self._task = asyncio.create_task(self._relay(js), name="outbox-relay")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the batch in flight (so no connection is cut mid-query), then stop."""
        self._stopping = True
        self._wake.set()
        await stop_gracefully(self._task, timeout_s)

    async def _relay(self, js: JetStreamContext) -> None:
        while not self._stopping:
            try:
                sent = await self.flush(js)
            except Exception:
                log.exception("outbox relay failed; retrying")
                sent = 0
            if sent < self._batch and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
                self._wake.clear()
        # Events staged just before stop (a drain's last FINISHED events) go out now rather
        # than at the next start; stop() bounds this by its timeout.
        try:
            while await self.flush(js) >= self._batch:
                pass
        except Exception:
            log.warning("outbox: final flush failed; the rest goes out on the next start")

    async def flush(self, js: JetStreamContext) -> int:
        """Publish up to one batch of unsent events; returns how many were sent."""
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(self._table)
                    .where(self._table.c.published_at.is_(None))
                    .order_by(self._table.c.id)
                    .limit(self._batch)
                )
            ).all()
        published: list[int] = []
        try:
            for row in rows:  # in order: one subject's events reach the stream in outbox order
                headers: dict[str, Any] = json.loads(row.headers)
                headers["Nats-Msg-Id"] = row.msg_id
                try:
                    await js.publish(row.subject, row.payload, headers=headers, timeout=5.0)
                except MaxPayloadError:
                    # Can never be published: retrying would block every later event.
                    log.error(
                        "outbox: event %s (%d bytes) exceeds the NATS payload limit; dropped",
                        row.msg_id,
                        len(row.payload),
                    )
                published.append(row.id)
        finally:
            # One write for the whole batch. A crash before it re-publishes these rows, which
            # JetStream drops as duplicates of their Nats-Msg-Id within the dedup window.
            if published:
                async with self._sessions() as session, session.begin():
                    await session.execute(
                        update(self._table)
                        .where(self._table.c.id.in_(published))
                        .values(published_at=datetime.now(UTC))
                    )
        return len(published)
