"""The deployable images `make images` builds (deploy/images/build.sh), run on the real
Docker engine: the service image serves as uid 10001 on a read-only root, its health
check command and HEALTHCHECK report SERVING, `migrate` migrates (SQLite, and PostgreSQL
in runbox/postgres with the password from a file), the labels are there, and no
compiler is in it.

The images must exist (CI runs `make images` before the tests); locally a missing
image skips with the command that builds it. With this engine's --bridge=none a
container has loopback only, so a service shares the network namespace of the NATS
or PostgreSQL container it talks to (`network_mode=container:<id>`)."""

from __future__ import annotations

import re
import secrets
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from tests.conftest import docker_available, require

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
RUNBOX = f"runbox/runbox:{VERSION}"
NATS = f"runbox/nats:{VERSION}"
POSTGRES = f"runbox/postgres:{VERSION}"
PROMETHEUS = f"runbox/prometheus:{VERSION}"
IMAGES = (RUNBOX, NATS, POSTGRES, PROMETHEUS, f"runbox/sandbox-python:{VERSION}")
LABEL = {"org.runbox.test": "test_images"}
# Where the service keeps its SQLite files (WORKDIR): a tmpfs owned by the runbox user.
STATE_TMPFS = {"/var/lib/runbox": "uid=10001,gid=10001,mode=0750", "/tmp": "mode=1777"}

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """A Docker client; every image `make images` builds must exist."""
    require(docker_available(), "no Docker engine reachable (make docker)")
    import docker

    client = docker.from_env(timeout=60)
    missing = [tag for tag in IMAGES if not client.images.list(name=tag)]
    require(not missing, f"images missing: {', '.join(missing)} (make images)")
    yield client
    for container in client.containers.list(all=True, filters={"label": "org.runbox.test"}):
        if container.labels.get("org.runbox.test") == "test_images":
            container.remove(force=True)
    client.close()


@pytest.fixture
def run(engine: Any) -> Iterator[Callable[..., Any]]:
    """Start a detached, labelled container; removed after the test."""
    started: list[Any] = []

    def start(image: str, command: list[str] | None = None, **kwargs: Any) -> Any:
        container = engine.containers.run(image, command, detach=True, labels=LABEL, **kwargs)
        started.append(container)
        return container

    yield start
    for container in reversed(started):
        container.remove(force=True)


def _wait(condition: Callable[[], bool], what: str, container: Any, limit_s: float = 90) -> None:
    """Poll until condition() holds; fail with the container's log tail if it never does."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.3)
    logs = container.logs().decode(errors="replace")[-3000:]
    raise AssertionError(f"{what} never happened; container log tail:\n{logs}")


def _health_ok(container: Any) -> bool:
    code, _ = container.exec_run(["runbox-health"])
    return bool(code == 0)


def _head(service: str) -> str:
    script = ScriptDirectory(str(ROOT / "services" / service / "migrations"))
    head = script.get_current_head()
    assert head is not None
    return head


def test_service_image_serves_catalogue_as_runbox_user_and_reports_healthy(
    run: Callable[..., Any],
) -> None:
    """The catalogue serves from the image (read-only root, uid 10001); runbox-health and
    the image's own HEALTHCHECK turn healthy."""
    nats = run(NATS, tmpfs={"/data": "uid=10002,gid=10002,mode=0750"})
    _wait(lambda: nats.exec_run(["nats-healthz"])[0] == 0, "nats healthz 200", nats)
    catalogue = run(
        RUNBOX,
        ["python", "-m", "services.catalogue"],
        network_mode=f"container:{nats.id}",
        read_only=True,
        tmpfs=STATE_TMPFS,
        # Only the interval: the test command is the image's HEALTHCHECK.
        healthcheck={"interval": 1_000_000_000, "start_period": 60_000_000_000},
    )
    _wait(lambda: _health_ok(catalogue), "runbox-health exit 0", catalogue)

    def healthy() -> bool:
        catalogue.reload()
        return bool(catalogue.attrs["State"]["Health"]["Status"] == "healthy")

    _wait(healthy, "HEALTHCHECK healthy", catalogue)
    code, out = catalogue.exec_run(["id", "-u"])
    assert (code, out.decode().strip()) == (0, "10001")
    assert catalogue.attrs["Config"]["User"] == "10001:10001"
    code, out = catalogue.exec_run(["sh", "-c", "ls var/"])
    assert code == 0 and "catalogue.db" in out.decode()


def test_health_command_without_server_exits_1_with_reason(run: Callable[..., Any]) -> None:
    """runbox-health exits 1 with one line on stderr when nothing serves the address."""
    box = run(RUNBOX, ["sleep", "60"], read_only=True, tmpfs=STATE_TMPFS)
    code, (out, err) = box.exec_run(["runbox-health", "127.0.0.1:1"], demux=True)
    assert code == 1 and out is None
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runbox-health: not serving: 127.0.0.1:1:")


def test_migrate_subcommand_migrates_sqlite_and_exits_0(run: Callable[..., Any]) -> None:
    """`python -m services.catalogue migrate` exits 0 with the database at the head revision."""
    box = run(RUNBOX, ["sleep", "120"], read_only=True, tmpfs=STATE_TMPFS)
    code, out = box.exec_run(["python", "-m", "services.catalogue", "migrate"])
    assert code == 0, out.decode(errors="replace")
    query = (
        "import sqlite3; print(sqlite3.connect('var/catalogue.db')"
        ".execute('select version_num from alembic_version').fetchone()[0])"
    )
    code, out = box.exec_run(["python", "-c", query])
    assert (code, out.decode().strip()) == (0, _head("catalogue"))


def test_postgres_image_creates_databases_and_migrate_reads_password_file(
    run: Callable[..., Any], tmp_path: Path
) -> None:
    """runbox/postgres initialises with the password file and POSTGRES_DATABASES; the
    scheduler's migrate reaches it with RUNBOX_DATABASE__PASSWORD_FILE and never logs it."""
    password = secrets.token_urlsafe(18)
    secret = tmp_path / "db_password"
    secret.write_text(password + "\n")
    secret.chmod(0o644)
    mount = {str(secret): {"bind": "/run/secrets/db_password", "mode": "ro"}}
    pg = run(
        POSTGRES,
        environment={
            "POSTGRES_PASSWORD_FILE": "/run/secrets/db_password",
            "POSTGRES_DATABASES": "catalogue, scheduler",
        },
        volumes=mount,
        tmpfs={"/var/lib/postgresql/data": "uid=999,gid=999,mode=0700"},
    )
    ready = ["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]
    _wait(lambda: pg.exec_run(ready)[0] == 0, "pg_isready on 0.0.0.0:5432", pg)
    migrate = run(
        RUNBOX,
        ["python", "-m", "services.scheduler", "migrate"],
        network_mode=f"container:{pg.id}",
        read_only=True,
        tmpfs=STATE_TMPFS,
        volumes=mount,
        environment={
            "RUNBOX_DATABASE__URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/scheduler",
            "RUNBOX_DATABASE__PASSWORD_FILE": "/run/secrets/db_password",
        },
    )
    result = migrate.wait(timeout=120)
    logs = migrate.logs().decode(errors="replace")
    assert result["StatusCode"] == 0, logs
    assert password not in logs and "***" in logs
    sql = "select version_num from alembic_version"
    psql = ["psql", "-U", "postgres", "-d", "scheduler", "-tAc", sql]
    code, out = pg.exec_run(psql)
    assert (code, out.decode().strip()) == (0, _head("scheduler"))
    code, out = pg.exec_run(["psql", "-U", "postgres", "-tAl"])
    assert code == 0 and {"catalogue", "scheduler"} <= {
        line.split("|")[0] for line in out.decode().splitlines()
    }
    assert pg.attrs["Config"]["User"] == "999:999"


def test_images_carry_oci_labels_and_version_tags(engine: Any) -> None:
    """Every image has the OCI labels, its version and the git revision it was built from."""
    for tag in (RUNBOX, NATS, POSTGRES, PROMETHEUS):
        labels = engine.images.get(tag).labels
        keys = ("title", "version", "revision", "created", "source", "licenses", "description")
        for key in keys:
            assert labels.get(f"org.opencontainers.image.{key}"), (tag, key)
        assert labels["org.opencontainers.image.version"] == VERSION
        assert re.fullmatch(r"[0-9a-f]{40}", labels["org.opencontainers.image.revision"])
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_service_image_has_no_compiler(engine: Any) -> None:
    """No C compiler, linker, assembler or make in the service image, no python3-dev."""
    tools = "gcc cc c++ g++ clang tcc x86_64-linux-gnu-gcc aarch64-linux-gnu-gcc ld as make"
    script = (
        f"for t in {tools}; do command -v $t; done; "
        "dpkg-query -W -f='${Package}\\n' | grep -E "
        "'^(gcc|g\\+\\+|cpp|clang|tcc)(-[0-9.]+)?$|^binutils|^libc6-dev$|^python3(\\.[0-9]+)?-dev$|^make$' "
        "|| true"
    )
    out = engine.containers.run(
        RUNBOX, ["sh", "-c", script], remove=True, labels=LABEL, network_mode="none"
    )
    assert out.decode().strip() == ""


def test_prometheus_and_nats_images_run_their_entry_commands(engine: Any) -> None:
    """prometheus, promtool and nats-server answer --version from their images."""
    commands = [
        (PROMETHEUS, None, ["--version"], "prometheus, version"),
        (PROMETHEUS, "promtool", ["--version"], "promtool, version"),
        (NATS, None, ["--version"], "nats-server: v"),
    ]
    for image, entrypoint, args, expected in commands:
        out = engine.containers.run(
            image,
            args,
            entrypoint=entrypoint,
            remove=True,
            labels=LABEL,
            network_mode="none",
            stderr=True,
        )
        assert expected in out.decode(), (image, out)
