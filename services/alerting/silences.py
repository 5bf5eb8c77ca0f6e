"""Silences (maintenance windows): create, list, expire; and the ones in force,
for the engine."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting import validation
from services.alerting.definitions import (
    check_key,
    get_row,
    locked_row,
    request_digest,
    same_request,
    silence_selector,
    to_dict,
    utcnow,
)
from services.alerting.models import SilenceRow
from services.alerting.paging import page


class Silences:
    """Maintenance windows: create, list, expire; and the active ones for the engine."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    async def create(self, request: pb.CreateSilenceRequest, *, actor: str) -> SilenceRow:
        key = request.idempotency_key
        check_key(key)
        now = self._clock()
        silence = pb.Silence()
        silence.CopyFrom(request.silence)
        for name in ("id", "created_by", "expire_time", "create_time"):
            silence.ClearField(name)  # type: ignore[arg-type]
        digest = request_digest(silence)
        if key:
            async with self._sessions() as session:
                existing = await session.scalar(
                    select(SilenceRow).where(SilenceRow.idempotency_key == key)
                )
            if existing is not None:
                same_request("silence", existing, digest)
                return existing
        starts, ends = validation.check_silence(silence, now=now)
        row = SilenceRow(
            id=uuid.uuid4().hex,
            selector=to_dict(silence.selector),
            starts_at=starts,
            ends_at=ends,
            comment=silence.comment,
            created_by=actor,
            expired_at=None,
            idempotency_key=key or None,
            request_sha256=digest,
            created_at=now,
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
        except IntegrityError:
            async with self._sessions() as session:
                existing = await session.scalar(
                    select(SilenceRow).where(SilenceRow.idempotency_key == key)
                )
            if existing is None:
                raise
            same_request("silence", existing, digest)
            return existing
        return row

    async def get(self, silence_id: str) -> SilenceRow:
        return await get_row(self._sessions, SilenceRow, "silence", silence_id)

    async def list(
        self, page_size: int, page_token: str, *, include_expired: bool
    ) -> tuple[list[SilenceRow], str]:
        """Newest first; without include_expired only those not yet over (incl. future ones)."""
        query = select(SilenceRow)
        if not include_expired:
            query = query.where(SilenceRow.ends_at > self._clock())
        async with self._sessions() as session:
            return await page(
                session, query, SilenceRow.created_at, SilenceRow.id, page_size, page_token
            )

    async def expire(self, silence_id: str) -> SilenceRow:
        """End a silence now; one already over is returned unchanged."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            row = await locked_row(session, SilenceRow, "silence", silence_id)
            if row.ends_at > now:
                row.expired_at, row.ends_at = now, now
                row.starts_at = min(row.starts_at, now)
        return row

    async def active(self, at: datetime | None = None) -> builtins.list[tuple[str, pb.Selector]]:
        """(id, selector) of the silences in force at `at` (default now)."""
        moment = at or self._clock()
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(SilenceRow).where(
                        SilenceRow.starts_at <= moment, SilenceRow.ends_at > moment
                    )
                )
            ).all()
        return [(row.id, silence_selector(row)) for row in rows]
