"""Upgrading from the previous release: its own databases (made BY it, see
tests/fixtures/releases/make_fixture.py) under this release's stack, on SQLite and
PostgreSQL. Migrations run at start-up; everything the old release answered reads
the same; a new run of an old script version succeeds. And every service's
migrations go back to the old head and forward again keeping the data."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from cli import stack as dev_stack
from shared.db import alembic_config
from tests.conftest import require
from tests.e2e.upgrade_checks import check_upgraded, require_stack
from tests.e2e.upgrade_state import (
    REPO,
    SERVICES,
    PgDatabases,
    Snapshot,
    copy_state,
    load_expected,
    revision,
    snapshot,
)
from tests.integration.dialects import alembic, server_url

PREVIOUS = "0.1.0"


def head(service: str) -> str | None:
    """This release's Alembic head of a service."""
    cfg = alembic_config(REPO / "services" / service / "migrations", "sqlite://")
    return ScriptDirectory.from_config(cfg).get_current_head()


@pytest.fixture
def needs_stack() -> None:
    """nats-server, a Docker engine and the sandbox image (old runs are python and shell)."""
    require_stack()


@pytest.fixture
def pg_databases() -> Iterator[PgDatabases]:
    """The previous release's PostgreSQL dumps restored into fresh databases."""
    server = server_url("postgres")
    require(shutil.which("psql") is not None, "psql (postgresql-client) is not installed")
    suffix = secrets.token_hex(4)
    databases = PgDatabases(server, {svc: f"rbx_upgrade_{suffix}_{svc}" for svc in SERVICES})
    try:
        databases.restore(PREVIOUS)
        yield databases
    finally:
        databases.drop()


def upgraded_stack(var: Path, settings: dict[str, dict[str, str]] | None = None) -> dev_stack.Stack:
    return dev_stack.up(var, say=lambda _: None, timeout=120, settings=settings)


def alembic_versions(urls: dict[str, str]) -> dict[str, str | None]:
    """Each service database's Alembic revision."""
    return {svc: asyncio.run(revision(url)) for svc, url in urls.items()}


@pytest.mark.timeout(300)
def test_previous_release_sqlite_upgrades_and_runs(tmp_path: Path, needs_stack: None) -> None:
    """0.1.0's SQLite state under this release: migrated, unchanged, and a new run succeeds."""
    var = tmp_path / "var"
    copy_state(PREVIOUS, "sqlite", var)
    stack = upgraded_stack(var)
    try:
        urls = {svc: f"sqlite+aiosqlite:///{var / (svc + '.db')}" for svc in SERVICES}
        assert alembic_versions(urls) == {svc: head(svc) for svc in SERVICES}
        check_upgraded(stack, load_expected(PREVIOUS, "sqlite"))
    finally:
        stack.stop()


@pytest.mark.timeout(300)
def test_previous_release_postgres_upgrades_and_runs(
    tmp_path: Path, needs_stack: None, pg_databases: PgDatabases
) -> None:
    """0.1.0's PostgreSQL dumps under this release: migrated, unchanged, and a new run succeeds."""
    var = tmp_path / "var"
    copy_state(PREVIOUS, "postgres", var)
    urls = {svc: pg_databases.url(svc) for svc in SERVICES}
    stack = upgraded_stack(var, {svc: {"RUNBOX_DATABASE__URL": url} for svc, url in urls.items()})
    try:
        assert alembic_versions(urls) == {svc: head(svc) for svc in SERVICES}
        check_upgraded(stack, load_expected(PREVIOUS, "postgres"))
    finally:
        stack.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def previous_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Each service's database as the previous release left it: {service: url}."""
    if request.param == "sqlite":
        copy_state(PREVIOUS, "sqlite", tmp_path)
        yield {svc: f"sqlite+aiosqlite:///{tmp_path / (svc + '.db')}" for svc in SERVICES}
        return
    server = server_url("postgres")
    require(shutil.which("psql") is not None, "psql (postgresql-client) is not installed")
    suffix = secrets.token_hex(4)
    databases = PgDatabases(server, {svc: f"rbx_downgrade_{suffix}_{svc}" for svc in SERVICES})
    try:
        databases.restore(PREVIOUS)
        yield {svc: databases.url(svc) for svc in SERVICES}
    finally:
        databases.drop()


def schema(tables: Snapshot) -> dict[str, list[str]]:
    """Table and column names of a snapshot."""
    return {name: columns for name, (columns, _) in tables.items()}


@pytest.mark.timeout(300)
async def test_migrations_downgrade_to_previous_and_upgrade_keep_data(
    previous_database: dict[str, str],
) -> None:
    """Each service migrates down to 0.1.0's head (its rows back), to base, and up again."""
    for service, url in previous_database.items():
        cfg = alembic_config(REPO / "services" / service / "migrations", url)
        old_head = await revision(url)
        before = await snapshot(url)
        await alembic(cfg, "upgrade", "head")
        assert await revision(url) == head(service)
        upgraded = await snapshot(url)
        await alembic(cfg, "downgrade", str(old_head))
        assert await revision(url) == old_head, service
        assert await snapshot(url) == before, f"{service}: downgrade did not restore 0.1.0"
        await alembic(cfg, "upgrade", "head")
        assert await snapshot(url) == upgraded, f"{service}: upgrade after downgrade differs"
        # All the way down runs every migration's downgrade; up again, the same schema.
        await alembic(cfg, "downgrade", "base")
        assert set(await snapshot(url)) <= {"alembic_version"}, service
        await alembic(cfg, "upgrade", "head")
        assert schema(await snapshot(url)) == schema(upgraded), service
