"""Upgrading from the previous release: its own databases (made BY it, see
tests/fixtures/releases/make_fixture.py) under this release's stack, on SQLite and
PostgreSQL. Migrations run at start-up; everything the old release answered reads
the same; a new run of an old script version succeeds. And every service's
migrations go back to the old head and forward again keeping the data."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from google.protobuf import struct_pb2

from cli import natsd
from cli import stack as dev_stack
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from shared.db import alembic_config
from tests.conftest import docker_available, require, sandbox_image_available
from tests.e2e.upgrade_state import (
    REPO,
    SERVICES,
    PgDatabases,
    Snapshot,
    StateReader,
    contains,
    copy_state,
    load_expected,
    revision,
    snapshot,
    without,
)
from tests.integration.dialects import alembic, server_url

PREVIOUS = "0.1.0"
TERMINAL = {
    common_pb2.RUN_STATE_SUCCEEDED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_TIMED_OUT,
    common_pb2.RUN_STATE_CANCELLED,
    common_pb2.RUN_STATE_LOST,
}
# Schedule fields a restart moves on: fire times passed while no scheduler ran.
MOVING = ("next_fire_time", "last_fire_time", "update_time")


def head(service: str) -> str | None:
    """This release's Alembic head of a service."""
    cfg = alembic_config(REPO / "services" / service / "migrations", "sqlite://")
    return ScriptDirectory.from_config(cfg).get_current_head()


@pytest.fixture
def needs_stack() -> None:
    """nats-server, a Docker engine and the sandbox image (old runs are python and shell)."""
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    require(docker_available(), "no Docker engine reachable (make docker)")
    require(sandbox_image_available(), "sandbox image missing (make sandbox-image)")


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


def check_upgraded(stack: dev_stack.Stack, expected: dict[str, Any]) -> None:
    """Everything the old release answered reads the same; a new run of an old version succeeds."""
    token = stack.admin_token_file.read_text().strip()
    reader = StateReader({svc: stack.address(svc) for svc in SERVICES}, token)
    try:
        check_scripts(reader, expected)
        check_runs(reader, expected)
        check_schedules(reader, expected)
        check_alerting(reader, expected)
        check_new_run(reader, expected)
    finally:
        reader.close()


def check_scripts(reader: StateReader, expected: dict[str, Any]) -> None:
    """Scripts, versions and parameters unchanged; content still matches its sha256."""
    for name, script in expected["scripts"].items():
        assert contains(reader.versions(name), script["versions"]) == [], name
        for version, shown in script["shown"].items():
            assert contains(reader.script(name), shown["script"]) == [], name
            assert reader.content_sha256(name, version) == shown["version"]["sha256"]
    names = {t["name"] for t in reader.templates()}
    assert {t["name"] for t in expected["templates"]} <= names


def check_runs(reader: StateReader, expected: dict[str, Any]) -> None:
    """Old runs listed with their states, exits and outputs."""
    runs = {run["id"]: run for run in reader.runs()}
    for old in expected["runs"]:
        assert old["id"] in runs, f"run {old['id']} is gone"
        assert contains(runs[old["id"]], old) == [], old["id"]
    assert contains(reader.deadletters(), expected["deadletters"]) == []


def check_schedules(reader: StateReader, expected: dict[str, Any]) -> None:
    """Schedules still there, in their states; the active one fires in the future."""
    schedules = {s["id"]: s for s in reader.schedules()}
    for old in expected["schedules"]:
        assert old["id"] in schedules, f"schedule {old['name']} is gone"
        assert contains(schedules[old["id"]], without(old, *MOVING)) == [], old["name"]
    nightly = schedules[expected["nightly_schedule"]]
    assert nightly["state"] == "SCHEDULE_STATE_ACTIVE"
    next_fire = datetime.fromisoformat(nightly["next_fire_time"].replace("Z", "+00:00"))
    assert next_fire > datetime.now(UTC)


def check_alerting(reader: StateReader, expected: dict[str, Any]) -> None:
    """Channels, rules, the fired alert and its delivery unchanged."""
    state = reader.alerting_state()
    for key, items in state.items():
        assert contains(items, expected[key]) == [], key


def check_new_run(reader: StateReader, expected: dict[str, Any]) -> None:
    """A new run of 0.1.0's greet@1.0.0 (two values given, two defaults) succeeds."""
    params = struct_pb2.Struct()
    params.update({"name": "Upgrade", "times": 2})
    submitted = reader.scheduler.SubmitRun(
        scheduler_pb2.SubmitRunRequest(
            script=common_pb2.ScriptRef(name="greet", version="1.0.0"), parameters=params
        ),
        metadata=reader.md,
        timeout=30,
    )
    deadline = time.monotonic() + 90
    run = reader.run(submitted.id)
    while run.state not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        run = reader.run(submitted.id)
    assert run.state == common_pb2.RUN_STATE_SUCCEEDED, run
    old = expected["scripts"]["greet"]["shown"]["1.0.0"]["version"]
    assert run.sha256 == old["sha256"]
    assert run.output.stdout.decode() == "Hello, Upgrade! (red, loud=False)\n" * 2


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
