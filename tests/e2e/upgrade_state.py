"""What the upgrade tests need around a previous release's fixture
(tests/fixtures/releases/<version>/, made by make_fixture.py there): copying it
into a state directory, restoring its PostgreSQL dumps, reading a running stack's
state in the same JSON shape the release's CLI printed (`--json`: proto field
names), and comparing the two."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from runbox.alerting.v1 import alerting_pb2, alerting_pb2_grpc
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
RELEASES = REPO / "tests" / "fixtures" / "releases"
SERVICES = ("catalogue", "executor", "scheduler", "alerting")


def to_dict(message: Message) -> dict[str, Any]:
    """A message as the CLI's --json prints it."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def contains(actual: Any, expected: Any, path: str = "") -> list[str]:
    """Where ACTUAL differs from EXPECTED, ignoring keys only ACTUAL has (fields a
    newer release added): every field the old release answered must read the same."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        problems: list[str] = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}.{key}: missing (was {value!r})")
            else:
                problems.extend(contains(actual[key], value, f"{path}.{key}"))
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} items, got {actual!r}"]
        return [
            p
            for i, (a, e) in enumerate(zip(actual, expected, strict=True))
            for p in contains(a, e, f"{path}[{i}]")
        ]
    return [] if actual == expected else [f"{path}: {actual!r} != {expected!r}"]


async def revision(url: str) -> str | None:
    """The Alembic revision a database is at."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            value = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar()
            return None if value is None else str(value)
    finally:
        await engine.dispose()


Snapshot = dict[str, tuple[list[str], list[tuple[Any, ...]]]]


async def snapshot(url: str) -> Snapshot:
    """Every table's column names and rows (sorted): schema and data in one value."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_snapshot)
    finally:
        await engine.dispose()


def _snapshot(conn: sa.Connection) -> Snapshot:
    inspector = sa.inspect(conn)
    found: Snapshot = {}
    for table in sorted(inspector.get_table_names()):
        names = sorted(c["name"] for c in inspector.get_columns(table))
        columns: list[sa.ColumnClause[Any]] = [sa.column(n) for n in names]
        rows = [
            tuple(row) for row in conn.execute(sa.select(*columns).select_from(sa.table(table)))
        ]
        found[table] = (names, sorted(rows, key=repr))
    return found


def without(item: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in keys}


def load_expected(release: str, backend: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RELEASES / release / backend / "expected.json").read_text())
    return data


def copy_state(release: str, backend: str, var: Path) -> None:
    """The fixture's SQLite files (sqlite), blobs and JetStream store into VAR."""
    source = RELEASES / release / backend
    var.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "blobs", var / "blobs")
    shutil.copytree(source / "nats" / "js", var / "nats" / "js")
    for db in source.glob("*.db"):
        shutil.copyfile(db, var / db.name)


def libpq(url: str, database: str) -> str:
    """A libpq URL (psql, pg_dump) for DATABASE on the server of a SQLAlchemy URL."""
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


def psql(url: str, *args: str) -> None:
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", url, *args],
        check=True,
        capture_output=True,
        env={"PGOPTIONS": "--client-min-messages=warning", "PATH": "/usr/bin:/bin"},
    )


@dataclass
class PgDatabases:
    """One fresh PostgreSQL database per service, holding the release's dump."""

    server: str
    names: dict[str, str]

    def url(self, service: str) -> str:
        """The async SQLAlchemy URL of a service's database."""
        url = make_url(self.server).set(database=self.names[service])
        return url.render_as_string(hide_password=False)

    def restore(self, release: str) -> None:
        admin = libpq(self.server, str(make_url(self.server).database))
        for service, name in self.names.items():
            psql(admin, "-c", f'CREATE DATABASE "{name}"')
            dump = RELEASES / release / "postgres" / f"{service}.sql"
            psql(libpq(self.server, name), "-f", str(dump))

    def drop(self) -> None:
        admin = libpq(self.server, str(make_url(self.server).database))
        for name in self.names.values():
            psql(admin, "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class StateReader:
    """Reads a running stack's state through gRPC, shaped like the old CLI's --json."""

    def __init__(self, addresses: dict[str, str], token: str) -> None:
        self.md: tuple[tuple[str, str | bytes], ...] = (("authorization", f"Bearer {token}"),)
        self.channels = {svc: grpc.insecure_channel(addr) for svc, addr in addresses.items()}
        self.catalogue = catalogue_pb2_grpc.CatalogueServiceStub(self.channels["catalogue"])
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channels["scheduler"])
        self.alerting = alerting_pb2_grpc.AlertingServiceStub(self.channels["alerting"])

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    def use_scheduler(self, address: str) -> None:
        """Talk to another scheduler replica."""
        self.channels["scheduler"].close()
        self.channels["scheduler"] = grpc.insecure_channel(address)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channels["scheduler"])

    def _all(self, call: Any, request: Any, field: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            reply = call(request, metadata=self.md, timeout=30)
            items.extend(to_dict(m) for m in getattr(reply, field))
            if not reply.next_page_token:
                return items
            request.page_token = reply.next_page_token

    def versions(self, name: str) -> list[dict[str, Any]]:
        request = catalogue_pb2.ListVersionsRequest(script_name=name, include_yanked=True)
        return self._all(self.catalogue.ListVersions, request, "versions")

    def script(self, name: str) -> dict[str, Any]:
        request = catalogue_pb2.GetScriptRequest(name=name)
        return to_dict(self.catalogue.GetScript(request, metadata=self.md, timeout=30))

    def content_sha256(self, name: str, version: str) -> str:
        """SHA-256 of the content the catalogue streams for one version."""
        request = catalogue_pb2.GetContentRequest(script_name=name, version=version)
        digest = hashlib.sha256()
        for chunk in self.catalogue.GetContent(request, metadata=self.md, timeout=30):
            digest.update(chunk.chunk)
        return digest.hexdigest()

    def templates(self) -> list[dict[str, Any]]:
        return self._all(
            self.catalogue.ListTemplates, catalogue_pb2.ListTemplatesRequest(), "templates"
        )

    def runs(self) -> list[dict[str, Any]]:
        return self._all(self.scheduler.ListRuns, scheduler_pb2.ListRunsRequest(), "runs")

    def run(self, run_id: str) -> scheduler_pb2.Run:
        request = scheduler_pb2.GetRunRequest(id=run_id)
        return self.scheduler.GetRun(request, metadata=self.md, timeout=30)

    def schedules(self) -> list[dict[str, Any]]:
        request = scheduler_pb2.ListSchedulesRequest()
        return self._all(self.scheduler.ListSchedules, request, "schedules")

    def deadletters(self) -> list[dict[str, Any]]:
        request = scheduler_pb2.ListDeadLettersRequest()
        return self._all(self.scheduler.ListDeadLetters, request, "dead_letters")

    def alerting_state(self) -> dict[str, list[dict[str, Any]]]:
        """Channels, rules, alerts and deliveries, keyed as in expected.json."""
        return {
            "alert_channels": self._all(
                self.alerting.ListChannels, alerting_pb2.ListChannelsRequest(), "channels"
            ),
            "alert_rules": self._all(
                self.alerting.ListRules, alerting_pb2.ListRulesRequest(), "rules"
            ),
            "alerts": self._all(
                self.alerting.ListAlerts, alerting_pb2.ListAlertsRequest(), "alerts"
            ),
            "alert_deliveries": self._all(
                self.alerting.ListDeliveries, alerting_pb2.ListDeliveriesRequest(), "deliveries"
            ),
        }
