"""Migrations never run twice at once: `python -m services.<svc> migrate` processes and
services starting take the service's database-level lock (PostgreSQL advisory lock,
MariaDB GET_LOCK) around `alembic upgrade head` (shared.migration_lock).

Two real migrate processes are started against a fresh database while the test holds
the lock, so both are seen waiting on it (a real overlap, not a lucky ordering); once
the test lets go both finish with exit 0 and the schema at head, once."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from shared.db import engine_url
from shared.migration_lock import MigrationLockTimeout, lock_name, migration_lock
from tests.integration.dialects import fresh_database

ROOT = Path(__file__).resolve().parents[2]
SERVER_DIALECTS = ("postgres", "mysql")


def _head(service: str) -> str:
    head = ScriptDirectory(str(ROOT / "services" / service / "migrations")).get_current_head()
    assert head is not None
    return head


async def _start_migrate(url: str, log: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "RUNBOX_DATABASE__URL": url, "RUNBOX_LOG__JSON_FORMAT": "false"}
    with log.open("wb") as out:  # the child has its own copy of the descriptor
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.catalogue",
            "migrate",
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def _waiting_for_lock(conn: AsyncConnection, url: str) -> int:
    """How many sessions wait for the catalogue's migration lock on this database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = :db"
        )
        return int(await conn.scalar(sa.text(sql), {"db": parsed.database}) or 0)
    sql = (
        "SELECT count(*) FROM information_schema.processlist "
        "WHERE id <> CONNECTION_ID() AND info LIKE :pattern"
    )
    pattern = f"%GET_LOCK('{lock_name('catalogue', parsed.database)}'%"
    return int(await conn.scalar(sa.text(sql), {"pattern": pattern}) or 0)


async def _wait_both_waiting(
    url: str, procs: list[asyncio.subprocess.Process], logs: list[Path]
) -> None:
    watcher = create_async_engine(engine_url(url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with watcher.connect() as conn:
            for _ in range(600):
                if any(p.returncode is not None for p in procs):
                    break
                if await _waiting_for_lock(conn, url) == 2:
                    return
                await asyncio.sleep(0.1)
    finally:
        await watcher.dispose()
    tails = "\n---\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
    raise AssertionError(f"the two migrations were never both waiting for the lock:\n{tails}")


@pytest.mark.parametrize("dialect", SERVER_DIALECTS)
@pytest.mark.timeout(180)
async def test_concurrent_migrations_serialise_on_lock_and_both_succeed(
    dialect: str, tmp_path: Path
) -> None:
    """Two migrate processes wait on the held lock, then both exit 0 with one head row."""
    async with fresh_database(dialect, tmp_path, "catalogue") as url:
        logs = [tmp_path / "migrate-1.log", tmp_path / "migrate-2.log"]
        async with migration_lock(engine_url(url), "catalogue"):
            procs = [await _start_migrate(url, log) for log in logs]
            try:
                await _wait_both_waiting(url, procs, logs)
            except BaseException:
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                    await proc.wait()
                raise
        codes = [await asyncio.wait_for(proc.wait(), 120) for proc in procs]
        output = [log.read_text(errors="replace")[-2000:] for log in logs]
        assert codes == [0, 0], output
        engine = create_async_engine(engine_url(url), poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                ).all()
                tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        finally:
            await engine.dispose()
        assert [row[0] for row in rows] == [_head("catalogue")]
        assert {"scripts", "script_versions", "script_tags", "audit_records"} <= tables


@pytest.mark.parametrize("dialect", SERVER_DIALECTS)
async def test_lock_held_elsewhere_times_out_with_clear_error(dialect: str, tmp_path: Path) -> None:
    """A migration that cannot get the lock within its wait raises MigrationLockTimeout."""
    async with fresh_database(dialect, tmp_path, "catalogue") as url:
        async with migration_lock(engine_url(url), "catalogue"):
            with pytest.raises(MigrationLockTimeout, match="another migration held the lock"):
                async with migration_lock(engine_url(url), "catalogue", wait_s=0.5):
                    pass
        # Released: the next one gets it at once.
        async with migration_lock(engine_url(url), "catalogue", wait_s=5):
            pass


async def test_sqlite_takes_no_database_lock(tmp_path: Path) -> None:
    """On SQLite the lock is a no-op (one writer per file; the process lock covers the rest)."""
    url = engine_url(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    async with migration_lock(url, "catalogue"), migration_lock(url, "catalogue", wait_s=0.1):
        pass
