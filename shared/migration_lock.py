"""A database-level lock around a service's migrations, so a migration job, a
service starting, and a second replica never run `alembic upgrade` at once.

PostgreSQL: a session advisory lock (`pg_advisory_lock`) on a connection of its
own, keyed by the service. MariaDB/MySQL: `GET_LOCK` named after the service and
the database (its lock names are server-wide). SQLite: nothing here (the
process-wide lock in shared.db covers one process; a SQLite file has one
writer anyway). The lock is held until the upgrade ends and released with the
connection if the process dies."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# How long a migration waits for another one to finish before giving up.
DEFAULT_WAIT_S = 600.0


class MigrationLockTimeout(RuntimeError):
    """Another process held the migration lock for longer than the wait allowed."""


def advisory_key(service: str) -> int:
    """PostgreSQL's bigint advisory-lock key of a service's migrations: stable
    across processes and releases (a hash of the name, not Python's hash())."""
    digest = hashlib.sha256(f"runbox.migrate.{service}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_name(service: str, database: str | None) -> str:
    """MariaDB/MySQL's lock name (at most 64 characters): GET_LOCK is server-wide,
    so the database is part of it."""
    name = f"runbox.migrate.{service}.{database or ''}"
    if len(name) <= 64:
        return name
    return f"runbox.migrate.{hashlib.sha256(name.encode()).hexdigest()[:40]}"


@asynccontextmanager
async def migration_lock(
    url: URL, service: str, *, wait_s: float = DEFAULT_WAIT_S
) -> AsyncIterator[None]:
    """Hold the service's migration lock on the database at url for the block."""
    backend = url.get_backend_name()
    if backend not in ("postgresql", "mysql", "mariadb"):
        yield
        return
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            if backend == "postgresql":
                await _pg_lock(conn, advisory_key(service), wait_s)
            else:
                await _mysql_lock(conn, lock_name(service, url.database), wait_s)
            log.info("holding the %s migration lock", service)
            yield
            # Closing the connection releases it too; unlocking says so explicitly.
            if backend == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:k)"), {"k": advisory_key(service)}
                )
            else:
                name = lock_name(service, url.database)
                await conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
    finally:
        await engine.dispose()


async def _pg_lock(conn: AsyncConnection, key: int, wait_s: float) -> None:
    # lock_timeout bounds the wait for the advisory lock like any other lock.
    await conn.execute(sa.text(f"SET lock_timeout = {int(wait_s * 1000)}"))
    try:
        await conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
    except sa.exc.DBAPIError as exc:
        if "lock timeout" in str(exc.orig).lower():
            raise MigrationLockTimeout(
                f"another migration held the lock for more than {wait_s:.0f} s"
            ) from None
        raise
    await conn.execute(sa.text("SET lock_timeout = 0"))


async def _mysql_lock(conn: AsyncConnection, name: str, wait_s: float) -> None:
    got = await conn.scalar(sa.text("SELECT GET_LOCK(:n, :t)"), {"n": name, "t": wait_s})
    if got != 1:
        raise MigrationLockTimeout(
            f"another migration held the lock {name!r} for more than {wait_s:.0f} s"
        )
