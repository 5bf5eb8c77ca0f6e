"""Spans of database transactions: a session class whose `begin()` transactions are each
one span, "db.transaction <service>" (shared.db.sessionmaker builds it with a tracer)."""

from __future__ import annotations

import contextlib
from typing import Any

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from shared.telemetry import current_span


class TransactionSpan:
    """What a traced session's transactions are named and tagged with."""

    def __init__(self, tracer: trace.Tracer, service: str, dialect: str) -> None:
        self.tracer = tracer
        self.name = f"db.transaction {service}".strip()
        self.attributes = {"db.system": _DB_SYSTEMS.get(dialect, dialect)}


_DB_SYSTEMS = {"mysql": "mariadb"}  # OpenTelemetry's db.system names


class TracedTransactions(AsyncSession):
    """A session whose `begin()` transactions are each a span (waiting for a turn, the
    statements and the commit)."""

    _span: TransactionSpan

    def begin(self) -> Any:
        return _InSpan(self._span, super().begin())


def transaction_scope(span: TransactionSpan | None) -> contextlib.AbstractContextManager[Any]:
    """The span of one transaction, inside a traced operation only: background loops'
    polls and marks (no span current) would each make a one-span trace. Also for writers
    that bypass sessions (the executor's SQLite outbox writer)."""
    if span is None or not trace.get_current_span().get_span_context().is_valid:
        return contextlib.nullcontext()
    return current_span(
        span.tracer, span.name, kind=trace.SpanKind.CLIENT, attributes=span.attributes
    )


class _InSpan:
    """A session transaction in its transaction_scope."""

    def __init__(self, span: TransactionSpan, transaction: Any) -> None:
        self._scope = transaction_scope(span)
        self._transaction = transaction

    async def __aenter__(self) -> Any:
        self._scope.__enter__()
        try:
            return await self._transaction.__aenter__()
        except BaseException as exc:
            self._scope.__exit__(type(exc), exc, exc.__traceback__)
            raise

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            result = await self._transaction.__aexit__(*exc)
        except BaseException as error:  # the commit failed
            self._scope.__exit__(type(error), error, error.__traceback__)
            raise
        self._scope.__exit__(*exc)
        return result
