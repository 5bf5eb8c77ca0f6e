"""The SQL dialects database tests run on: SQLite always; PostgreSQL and MariaDB
when RUNBOX_TEST_POSTGRES_URL / RUNBOX_TEST_MYSQL_URL name a server (CI sets
both; a missing one skips locally and fails in CI, see require()).

Each test gets a database of its own, created on the server through a plain
admin connection (the URL's database is only where that connection lands) and
dropped afterwards, so tests never see each other's rows."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from shared.db import engine_url
from tests.conftest import require

DIALECTS = ("sqlite", "postgres", "mysql")
SERVER_URL_VARS = {"postgres": "RUNBOX_TEST_POSTGRES_URL", "mysql": "RUNBOX_TEST_MYSQL_URL"}
_EXAMPLES = {
    "postgres": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+aiomysql://root@127.0.0.1:3306/test",
}


def server_url(dialect: str) -> str:
    """The configured server URL of a dialect; skips (fails in CI) when unset."""
    var = SERVER_URL_VARS[dialect]
    url = os.environ.get(var, "")
    require(bool(url), f"{var} is not set (a {dialect} server URL, e.g. {_EXAMPLES[dialect]})")
    return url


def _create_sql(dialect: str, name: str) -> str:
    if dialect == "mysql":
        # utf8mb4 explicitly: the server default may be latin1 or 3-byte utf8.
        return f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
    return f'CREATE DATABASE "{name}"'


def _drop_sql(dialect: str, name: str) -> str:
    if dialect == "mysql":
        return f"DROP DATABASE IF EXISTS `{name}`"
    # FORCE: a test that failed half-way may leave a connection behind.
    return f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


@asynccontextmanager
async def fresh_database(dialect: str, tmp_path: Path, name: str) -> AsyncIterator[str]:
    """The async SQLAlchemy URL of an empty database of the dialect, dropped on exit."""
    if dialect == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}"
        return
    server = server_url(dialect)
    database = f"rbx_{secrets.token_hex(6)}"
    admin = create_async_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(_create_sql(dialect, database)))
        try:
            yield make_url(server).set(database=database).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(sa.text(_drop_sql(dialect, database)))
    finally:
        await admin.dispose()


async def tables(url: str) -> set[str]:
    """Names of the tables in the database at url."""
    engine = create_async_engine(engine_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def alembic(cfg: Config, name: str, *args: str) -> None:
    """An Alembic command (upgrade, check, ...) in a thread: env.py runs its own event loop."""
    await asyncio.to_thread(getattr(command, name), cfg, *args)
