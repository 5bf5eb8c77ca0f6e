"""The upgrade and rollback procedures of docs/upgrades.md, one service at a time: the
previous release's four services serve its own state; this release's `migrate` runs
while they do; then catalogue, alerting, executor and scheduler are replaced in that
order, and rolled back in the reverse one (each database migrated back to the old head
first, as documented); a run of an old script version succeeds at every step, through
services of both releases, and the old state reads the same at the end of each way. On
PostgreSQL, scheduler replicas of both releases share the work."""

from __future__ import annotations

import io
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli import natsd
from cli import stack as dev_stack
from tests.conftest import require
from tests.e2e.upgrade_checks import check_new_run, check_unchanged, reader_of, require_stack
from tests.e2e.upgrade_state import (
    RELEASES,
    REPO,
    SERVICES,
    PgDatabases,
    copy_state,
    load_expected,
)
from tests.integration.dialects import server_url

PREVIOUS, PREVIOUS_COMMIT = "0.1.0", "cd73b66"
# docs/upgrades.md: alerting before the executors and the scheduler when upgrading to 0.3.0
# (it reads the typed RunEvent subjects they publish from then on).
ORDER = ("catalogue", "alerting", "executor", "scheduler")


@dataclass
class RollingStack(dev_stack.Stack):
    """A local stack whose services run either the previous release's code or this one's."""

    old_code: Path = Path()
    old: set[str] = field(default_factory=set)
    # Extra replicas: their process name -> the service they are ("scheduler-2": "scheduler").
    replicas: dict[str, str] = field(default_factory=dict)

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start one service (or replica) from the code of the release it is on now."""
        env = dev_stack.service_env(
            name,
            self.var,
            self.ports,
            self.nats.url,
            self.service_token,
            self.settings.get(name, {}),
        )
        cwd = None
        if name in self.old:
            env["PYTHONPATH"], cwd = str(self.old_code), self.old_code
        with open(self.var / "logs" / f"{name}.log", "ab") as out:
            self._log_offsets[name] = out.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.replicas.get(name, name)}"],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = proc
        return proc

    def add_replica(self, name: str, service: str) -> None:
        """Another process of a service, on its own ports, of the release the service is on."""
        self.replicas[name] = service
        self.ports.grpc[name], self.ports.metrics[name] = natsd.free_port(), natsd.free_port()
        self.settings[name] = self.settings.get(service, {})
        if service in self.old:
            self.old.add(name)
        self.spawn(name)
        self.wait_healthy(name, 120)

    def stop(self, timeout: float = 60.0) -> None:
        """Replicas first, then what Stack.stop stops."""
        for name in self.replicas:
            self.processes[name].send_signal(signal.SIGTERM)
        super().stop(timeout)

    def replace(self, name: str) -> None:
        """SIGTERM the old process of a service, start this release's."""
        proc = self.processes[name]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, f"old {name} did not stop cleanly"
        self.old.discard(name)
        self.spawn(name)
        self.wait_healthy(name, 120)
        assert self.runs_old_code(name) is False, f"{name} still runs the old code"

    def runs_old_code(self, name: str) -> bool:
        """Whether a service's metrics have prometheus_client's `_created` series, which
        0.1.0 exported and this release turned off: which code answers, told apart."""
        url = f"http://127.0.0.1:{self.ports.metrics[name]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return b"_created" in reply.read()

    def roll_back(self, name: str) -> None:
        """SIGTERM this release's process of a service, start the previous release's."""
        proc = self.processes[name]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, f"new {name} did not stop cleanly"
        self.downgrade(name)
        self.old.add(name)
        self.spawn(name)
        self.wait_healthy(name, 120)
        assert self.runs_old_code(name), f"{name} does not run the old code"

    def downgrade(self, name: str) -> None:
        """docs/upgrades.md's way back: `alembic -c <two-line config> downgrade <old head>`
        with this release installed, the service stopped."""
        url = self.settings.get(name, {}).get(
            "RUNBOX_DATABASE__URL", f"sqlite+aiosqlite:///{self.var / (name + '.db')}"
        )
        config = self.var / f"alembic-{name}.ini"
        config.write_text(
            f"[alembic]\nscript_location = services.{name}:migrations\n"
            f"sqlalchemy.url = {url.replace('%', '%%')}\n"
        )
        alembic = Path(sys.executable).parent / "alembic"
        done = subprocess.run(
            [str(alembic), "-c", str(config), "downgrade", previous_head(name)],
            cwd=self.var,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def migrate(self, name: str) -> None:
        """This release's `python -m services.<name> migrate` on the service's database."""
        env = dev_stack.service_env(
            name,
            self.var,
            self.ports,
            self.nats.url,
            self.service_token,
            self.settings.get(name, {}),
        )
        done = subprocess.run(
            [sys.executable, "-m", f"services.{name}", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def previous_head(service: str) -> str:
    """The Alembic head of the previous release, as its own SQLite file records it."""
    database = RELEASES / PREVIOUS / "sqlite" / f"{service}.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        (head,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    conn.close()
    return str(head)


def extract_release(commit: str, target: Path) -> Path:
    """The source tree of a commit of this repository (git archive), into target."""
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    require(found.returncode == 0, f"commit {commit} is not in this clone (a shallow clone?)")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def start_old(
    tmp_path: Path, backend: str, settings: dict[str, dict[str, str]] | None = None
) -> RollingStack:
    """The previous release's four services on its own state (its SQLite files, or
    databases its dumps were restored into, named by SETTINGS)."""
    require_stack()
    code = extract_release(PREVIOUS_COMMIT, tmp_path / "release")
    var = tmp_path / "var"
    copy_state(PREVIOUS, backend, var)
    (var / "logs").mkdir()
    admin_file, service_token = dev_stack.ensure_tokens(var)
    nats = natsd.start(var / "nats", log_file=var / "logs" / "nats.log")
    stack = RollingStack(
        var=var,
        nats=nats,
        ports=dev_stack.pick_ports(0),
        admin_token_file=admin_file,
        service_token=service_token,
        settings=settings or {},
        old_code=code,
        old=set(SERVICES),
    )
    try:
        for name in SERVICES:
            stack.spawn(name)
        for name in SERVICES:
            stack.wait_healthy(name, 120)
            assert stack.runs_old_code(name), f"{name} does not run the old release"
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture
def old_stack(tmp_path: Path) -> Iterator[RollingStack]:
    """The previous release's four services on its own SQLite state."""
    stack = start_old(tmp_path, "sqlite")
    yield stack
    stack.stop()


@pytest.fixture
def old_pg_stack(tmp_path: Path) -> Iterator[RollingStack]:
    """The previous release on its PostgreSQL dumps, with a second scheduler replica."""
    server = server_url("postgres")
    require(shutil.which("psql") is not None, "psql (postgresql-client) is not installed")
    suffix = secrets.token_hex(4)
    databases = PgDatabases(server, {svc: f"rbx_rolling_{suffix}_{svc}" for svc in SERVICES})
    try:
        databases.restore(PREVIOUS)
        settings = {svc: {"RUNBOX_DATABASE__URL": databases.url(svc)} for svc in SERVICES}
        stack = start_old(tmp_path, "postgres", settings)
        try:
            stack.add_replica("scheduler-2", "scheduler")
            yield stack
        finally:
            stack.stop()
    finally:
        databases.drop()


@pytest.mark.timeout(600)
def test_services_upgraded_and_rolled_back_one_at_a_time_keep_running(
    old_stack: RollingStack,
) -> None:
    """Each step of the documented upgrade and rollback leaves a stack where old versions run."""
    expected = load_expected(PREVIOUS, "sqlite")
    reader = reader_of(old_stack)
    try:
        check_new_run(reader, expected, "all-old")
        for name in SERVICES:
            old_stack.migrate(name)
        for name in ORDER:
            old_stack.replace(name)
            check_new_run(reader, expected, f"new-{name}")
        assert not old_stack.old
        check_unchanged(reader, expected)
        for name in reversed(ORDER):
            old_stack.roll_back(name)
            check_new_run(reader, expected, f"old-{name}")
        check_unchanged(reader, expected)
        assert len(reader.runs()) == len(expected["runs"]) + 9
    finally:
        reader.close()


@pytest.mark.timeout(600)
def test_scheduler_replicas_of_both_releases_share_the_work(old_pg_stack: RollingStack) -> None:
    """On PostgreSQL, with one scheduler replica old and one new, runs submitted to either succeed."""
    stack = old_pg_stack
    expected = load_expected(PREVIOUS, "postgres")
    readers = {name: reader_of(stack) for name in ("scheduler", "scheduler-2")}
    readers["scheduler-2"].use_scheduler(stack.address("scheduler-2"))
    try:
        for name in SERVICES:
            stack.migrate(name)
        for name in ("catalogue", "alerting", "executor", "scheduler"):
            stack.replace(name)
        assert stack.runs_old_code("scheduler-2"), "replica 2 should still be the old release"
        for name, reader in readers.items():
            check_new_run(reader, expected, f"mixed-via-{name}")
        stack.replace("scheduler-2")
        for name, reader in readers.items():
            check_new_run(reader, expected, f"new-via-{name}")
        check_unchanged(readers["scheduler"], expected)
    finally:
        for reader in readers.values():
            reader.close()
