"""Keyset pages, newest first: the cursor is the last row's (created time, id),
so pages never shift when rows are added."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import InvalidArgument

DEFAULT_PAGE = 50
MAX_PAGE = 500


def encode(at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{ident}".encode()).decode()


def decode(token: str) -> tuple[datetime, str]:
    try:
        at, ident = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        parsed = datetime.fromisoformat(at)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)), ident


def size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(page_size or DEFAULT_PAGE, MAX_PAGE)


async def page(
    session: AsyncSession, query: Any, created: Any, ident: Any, page_size: int, token: str
) -> tuple[list[Any], str]:
    """One page of `query` ordered by (created, ident) descending, and the next token."""
    limit = size(page_size)
    if token:
        at, last = decode(token)
        query = query.where((created < at) | ((created == at) & (ident < last)))
    query = query.order_by(created.desc(), ident.desc()).limit(limit + 1)
    rows = list((await session.scalars(query)).all())
    if len(rows) <= limit:
        return rows, ""
    last_row = rows[limit - 1]
    return rows[:limit], encode(getattr(last_row, created.key), getattr(last_row, ident.key))
