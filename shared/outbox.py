"""Transactional outbox: an event is written in the same transaction as the
state change it reports, then a relay publishes it to JetStream with
Nats-Msg-Id set. A crash between commit and publish loses nothing (the relay
publishes it on restart); a crash between publish and marking it sent
republishes with the same id, which JetStream's duplicate window drops."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from opentelemetry import trace
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
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import key_string
from shared.db_transactions import Transactions
from shared.sqlite_rows import SqliteRows, driver_of, placeholders
from shared.tasks import being_cancelled, stop_gracefully
from shared.telemetry import ContextTracer, extract_context, has_context, inject_context

log = logging.getLogger(__name__)

# The outbox's statements on the sqlite3 driver (here, and the executor's own writer).
SQLITE_INSERT = (
    "INSERT INTO outbox (msg_id, subject, payload, headers, created_at) VALUES (?,?,?,?,?)"
)
_SQLITE_MARK = "UPDATE outbox SET published_at = ? WHERE msg_id IN ({})"
_STAGED = "runbox_outbox_staged"  # Session.info key: events staged in this session


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


# Sets published_at (now) on the rows of these msg_ids, in one transaction.
Marker = Callable[[Sequence[str]], Awaitable[None]]


@dataclass(frozen=True)
class OutboxMessage:
    """One event to stage; its headers are sent as they are."""

    subject: str
    msg_id: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Outbox:
    """Adds events inside a caller's transaction and relays them afterwards.

    Two ways in: `add` inside a caller's transaction then `notify()` after its commit (the
    relay reads the table), or `committed()` with what a commit just staged (the relay
    publishes those from memory, no read back). Either way the table is the truth: the relay
    reads it at start, on every poll, after `notify()` and after any failure, so whatever
    memory lost goes out from there."""

    def __init__(
        self,
        table: Table,
        sessions: async_sessionmaker[AsyncSession],
        *,
        poll_interval_s: float = 0.5,
        batch: int = 100,
        ack_timeout_s: float = 5.0,
        mark_interval_s: float = 0.25,
        tracer: trace.Tracer | None = None,
        marker: Marker | None = None,
    ) -> None:
        self._table = table
        self._insert = insert(table)
        # created_at as SQLAlchemy's SQLite dialect stores it (add_in on the sqlite3 driver).
        self._stored_at = SqliteRows(table).bind_processor("created_at")
        # How sent rows get their published_at: an UPDATE through `sessions` unless the
        # service has a cheaper way into its own table (the executor's SQLite writer).
        self._marker = marker or self._mark_rows
        self._tracer = tracer
        # A tracer that records nothing would only pass the staged context on: skip it.
        self._recording = tracer is not None and not isinstance(tracer, ContextTracer)
        self._sessions = sessions
        self._poll = poll_interval_s
        self._batch = batch
        self._ack_timeout_s = ack_timeout_s
        self._mark_interval_s = mark_interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready: deque[OutboxMessage] = deque()  # committed and handed over, not sent
        self._acked: list[str] = []  # sent and acknowledged, not yet marked in the table
        self._acked_since = 0.0
        self._scan = True  # the table may hold unsent rows memory does not know of
        self._marking: asyncio.Task[None] | None = None  # a mark in the background
        # Committed events a caller holds back (`committed(held=...)`) until it `release`s
        # them; the table scan skips them meanwhile (not once stopping).
        self._held: dict[str, OutboxMessage] = {}

    async def add(
        self,
        session: AsyncSession,
        *,
        subject: str,
        msg_id: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Stage an event in the caller's (uncommitted) transaction, carrying the current
        trace context."""
        message = OutboxMessage(subject, msg_id, payload, inject_context(dict(headers or {})))
        await self.add_many(session, [message])

    async def add_many(self, session: AsyncSession, messages: Sequence[OutboxMessage]) -> None:
        """Stage several events with one statement, in order, each with its own headers
        (a batch may carry several runs' trace contexts: none is taken from the caller)."""
        if not messages:
            return
        session.info[_STAGED] = session.info.get(_STAGED, 0) + len(messages)
        await session.execute(insert(self._table), _rows(messages))

    def add_in(self, conn: Connection, messages: Sequence[OutboxMessage]) -> None:
        """`add_many` on a Core connection (shared.db_transactions): the caller hands what it
        committed to `committed()`, or calls `notify()`."""
        if not messages:
            return
        driver = driver_of(conn)
        if driver is None:
            conn.execute(self._insert, _rows(messages))
            return
        now = self._stored_at(datetime.now(UTC))
        driver.executemany(
            SQLITE_INSERT,
            [(m.msg_id, m.subject, m.payload, json.dumps(m.headers), now) for m in messages],
        )

    @staticmethod
    def staged_in(session: AsyncSession) -> int:
        """How many events this session's transactions staged (so a caller that does not
        know whether anything it called staged one wakes the relay only when it did)."""
        return int(session.info.get(_STAGED, 0))

    def notify(self) -> None:
        """Wake the relay after a commit so events go out without waiting a poll."""
        self._scan = True
        self._wake.set()

    def committed(self, messages: Sequence[OutboxMessage], *, held: Collection[str] = ()) -> None:
        """After the commit that staged `messages` (with add_many): the relay publishes them
        from memory, in this order, without reading them back; those whose ids are in `held`
        only once released (`release`), or at stop, or from the table after a restart."""
        if held:
            for message in messages:
                if message.msg_id in held:
                    self._held[message.msg_id] = message
                else:
                    self._ready.append(message)
        else:
            self._ready.extend(messages)
        self._wake.set()

    def release(self, msg_ids: Sequence[str], *, suffix: str = "") -> None:
        """Publish held events now, in this order, on their subject plus `suffix`."""
        released = [m for i in msg_ids if (m := self._held.pop(i, None)) is not None]
        if not released:
            return
        if suffix:
            released = [replace(m, subject=m.subject + suffix) for m in released]
        self._ready.extend(released)
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
                more = await self._step(js)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and being_cancelled():
                    raise
                log.exception("outbox relay failed; retrying")
                self._ready.clear()  # the table has them all, in order
                self._scan, more = True, False
            if more or self._stopping:
                continue
            timeout = self._poll
            if self._acked:
                timeout = min(timeout, self._acked_since + self._mark_interval_s - _now())
            try:
                await asyncio.wait_for(self._wake.wait(), max(timeout, 0.0))
            except TimeoutError:
                self._scan = True  # a poll: the table is the safety net
            self._wake.clear()
        # Events staged just before stop (a drain's last FINISHED events) go out now rather
        # than at the next start; stop() bounds this by its timeout.
        try:
            self._scan = True
            while await self._step(js):
                pass
            await self._mark()
        except Exception:
            log.warning("outbox: final flush failed; the rest goes out on the next start")

    async def _step(self, js: JetStreamContext) -> bool:
        """Publish one batch (from memory first, else from the table when it may hold unsent
        rows) and mark what is due; True if more is waiting."""
        more = False
        if self._ready:
            batch = [self._ready.popleft() for _ in range(min(self._batch, len(self._ready)))]
            sent = await self._publish(js, batch)
            self._acknowledged(sent)
            if len(sent) < len(batch):  # the rest goes out from the table, in order
                self._ready.clear()
                self._scan = True
                await self._mark()
                return False  # after a poll interval
            more = bool(self._ready)
        elif self._scan:
            self._scan = False
            await self._mark()  # so the table no longer shows what was sent
            sent_count, read, held = await self._flush_table(js)
            if sent_count < read - held:
                self._scan = True
                return False  # after a poll interval
            # A page of held events only waits for their release (no scan loop meanwhile).
            self._scan = more = read >= self._batch and held < read
        if self._acked and (
            len(self._acked) >= self._batch or _now() - self._acked_since >= self._mark_interval_s
        ):
            self._mark_behind()
        return more

    def _mark_behind(self) -> None:
        """Mark what was sent without holding up the next batch: the write may wait for the
        database (on SQLite, for its turn behind a burst of fires) while events keep going
        out. A failed mark leaves the ids for the next one (they go out again only after a
        restart, as duplicates JetStream drops)."""
        if self._marking is not None and not self._marking.done():
            return

        async def mark() -> None:
            try:
                await self._mark()
            except Exception as exc:
                log.warning("outbox: marking sent events failed (retried): %s", exc)

        self._marking = asyncio.create_task(mark(), name="outbox-mark")

    async def flush(self, js: JetStreamContext) -> int:
        """Publish up to one batch of unsent rows from the table and mark them; how many
        were sent (or dropped as too large for NATS)."""
        await self._mark()
        sent, _, _ = await self._flush_table(js)
        await self._mark()
        return sent

    async def _flush_table(self, js: JetStreamContext) -> tuple[int, int, int]:
        """Publish one batch of unsent rows; (sent, read, skipped as held). A row held when
        the read began and released while it ran is skipped too: its release put it on the
        memory path (with its suffix), which publishes it."""
        held = set(self._held)
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(self._table)
                    .where(self._table.c.published_at.is_(None))
                    .order_by(self._table.c.id)
                    .limit(self._batch)
                )
            ).all()
        messages = [
            OutboxMessage(row.subject, row.msg_id, row.payload, json.loads(row.headers))
            for row in rows
            if self._stopping or (row.msg_id not in self._held and row.msg_id not in held)
        ]
        sent = await self._publish(js, messages)
        self._acknowledged(sent)
        return len(sent), len(rows), len(rows) - len(messages)

    def _acknowledged(self, msg_ids: list[str]) -> None:
        if msg_ids and not self._acked:
            self._acked_since = _now()
        self._acked.extend(msg_ids)

    async def _mark(self) -> None:
        """Mark what was sent, in one write. A crash before it re-publishes those events,
        which JetStream drops as duplicates of their Nats-Msg-Id within the dedup window."""
        if self._marking is not None and self._marking is not asyncio.current_task():
            await asyncio.gather(self._marking, return_exceptions=True)
        while self._acked:
            ids, self._acked = self._acked[:1000], self._acked[1000:]
            try:
                await self._marker(ids)
            except BaseException:
                self._acked[:0] = ids  # marked later (or re-sent and dropped as duplicates)
                raise
        self._acked_since = _now()

    async def _mark_rows(self, msg_ids: Sequence[str]) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(self._table)
                .where(self._table.c.msg_id.in_(msg_ids))
                .values(published_at=datetime.now(UTC))
            )

    async def _publish(self, js: JetStreamContext, messages: Sequence[OutboxMessage]) -> list[str]:
        """Publish in order without waiting for each acknowledgement (one round trip for the
        batch); the ids of the leading messages JetStream acknowledged (or that can never be
        sent). One after a failure stays unsent even if acknowledged: it goes out again after
        the failed one (its duplicate dropped by Nats-Msg-Id), so a subject keeps its order."""
        acks: list[tuple[str, asyncio.Future[Any] | None]] = []
        spans: list[trace.Span | None] = []
        try:
            for message in messages:
                headers: dict[str, Any] = dict(message.headers)
                span = self._publish_span(message)
                spans.append(span)
                if span is not None:  # the consumer continues from the publish
                    inject_context(headers, trace.set_span_in_context(span))
                headers["Nats-Msg-Id"] = message.msg_id
                try:
                    ack = await js.publish_async(message.subject, message.payload, headers=headers)
                except MaxPayloadError:
                    # Can never be published: retrying would block every later event.
                    log.error(
                        "outbox: event %s (%d bytes) exceeds the NATS payload limit; dropped",
                        message.msg_id,
                        len(message.payload),
                    )
                    ack = None
                acks.append((message.msg_id, ack))
        except Exception as exc:  # the connection failed mid-batch: keep what was sent
            log.warning("outbox: publishing stopped after %d events: %s", len(acks), exc)
        pending = [ack for _, ack in acks if ack is not None]
        if pending:
            await asyncio.wait(pending, timeout=self._ack_timeout_s)
        published: list[str] = []
        for msg_id, ack in acks:
            if ack is not None and not _ok(ack):
                log.warning(
                    "outbox: event not acknowledged (%s); it and the %d after it are retried",
                    ack.exception() if ack.done() and not ack.cancelled() else "timeout",
                    len(messages) - len(published) - 1,
                )
                break
            published.append(msg_id)
        for ack in pending:
            ack.cancel()  # no effect on the done ones
        _end_spans(spans, len(published))
        return published

    def _publish_span(self, message: OutboxMessage) -> trace.Span | None:
        """A producer span for an event staged with a trace context, continuing it (events
        without one, heartbeats and log chunks, make none)."""
        if self._tracer is None or not self._recording or not has_context(message.headers):
            return None
        return self._tracer.start_span(
            "outbox.publish",
            context=extract_context(message.headers),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "publish",
                "messaging.destination.name": message.subject,
                "messaging.message.id": message.msg_id,
                "messaging.message.body.size": len(message.payload),
            },
        )


def marks_on(tx: Transactions, table: Table) -> Marker:
    """A marker (Outbox's `marker`) writing published_at in one transaction of `tx`
    (shared.db_transactions): on a SQLite file on the sqlite3 driver, on the event loop when
    the write lock is free, not through a session's hops to aiosqlite's thread."""
    stored = SqliteRows(table).bind_processor("published_at")
    column = table.c.msg_id

    def marked_in(conn: Connection, msg_ids: Sequence[str]) -> None:
        now = datetime.now(UTC)
        driver = driver_of(conn)
        if driver is None:
            conn.execute(update(table).where(column.in_(msg_ids)).values(published_at=now))
            return
        mark_sqlite(driver, stored(now), msg_ids)

    async def mark(msg_ids: Sequence[str]) -> None:
        await tx.write(marked_in, list(msg_ids))

    return mark


def mark_sqlite(conn: sqlite3.Connection, at: str, msg_ids: Sequence[str]) -> None:
    """published_at = `at` (as stored) for these rows, on the sqlite3 driver, in statements
    under SQLite's bound-variable limit."""
    for start in range(0, len(msg_ids), 500):
        chunk = msg_ids[start : start + 500]
        conn.execute(_SQLITE_MARK.format(placeholders(len(chunk))), (at, *chunk))


def _end_spans(spans: Sequence[trace.Span | None], published: int) -> None:
    """End the publish spans: the first `published` were acknowledged, the rest are retried."""
    for i, span in enumerate(spans):
        if span is None:
            continue
        if i >= published:
            span.set_status(trace.StatusCode.ERROR, "not acknowledged; retried")
        span.end()


def _rows(messages: Sequence[OutboxMessage]) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "msg_id": m.msg_id,
            "subject": m.subject,
            "payload": m.payload,
            "headers": json.dumps(m.headers),
            "created_at": now,
        }
        for m in messages
    ]


def _ok(ack: asyncio.Future[Any]) -> bool:
    return ack.done() and not ack.cancelled() and ack.exception() is None


def _now() -> float:
    return time.monotonic()
