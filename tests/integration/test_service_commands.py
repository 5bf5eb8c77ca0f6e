"""The commands the images run, as real processes: `runbox-health` against a real
grpc.aio server (SERVING, NOT_SERVING, nothing listening, address from
RUNBOX_GRPC__PORT) and `python -m services.<svc> migrate` (exit 0 at head, exit 1
with the password hidden when the database cannot be reached)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from cli import natsd
from shared.runtime import Running, Service, build_runtime, launch
from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
HEALTH = shutil.which("runbox-health", path=str(Path(sys.executable).parent)) or ""


async def _empty(_runtime: object) -> Service:
    return Service(registrations=[], permissions={})


@pytest.fixture
async def server() -> AsyncIterator[Running]:
    running = await launch(build_runtime("probe", ServiceSettings(metrics={"port": -1})), _empty)
    yield running
    await running.stop()


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_health_command_exits_0_when_serving(server: Running) -> None:
    """runbox-health ADDRESS exits 0, silent, against a SERVING server."""
    assert HEALTH, "runbox-health is not installed next to this python (pip install -e .)"
    assert await _run(HEALTH, f"127.0.0.1:{server.port}") == (0, "", "")


async def test_health_command_defaults_to_grpc_port_variable(server: Running) -> None:
    """Without an address it checks 127.0.0.1:$RUNBOX_GRPC__PORT."""
    code, _, err = await _run(HEALTH, env={"RUNBOX_GRPC__PORT": str(server.port)})
    assert (code, err) == (0, "")


async def test_health_command_exits_1_when_not_serving(server: Running) -> None:
    """NOT_SERVING (a service shutting down) exits 1 with the status on one stderr line."""
    await server.bundle.set_serving(False)
    code, _, err = await _run(HEALTH, f"127.0.0.1:{server.port}")
    assert code == 1
    assert err.strip().splitlines() == [
        f"runbox-health: not serving: 127.0.0.1:{server.port}: NOT_SERVING"
    ]


async def test_health_command_exits_1_when_nothing_listens() -> None:
    """A refused connection exits 1 with UNAVAILABLE on one line, within the deadline."""
    port = natsd.free_port()
    code, _, err = await _run(HEALTH, f"127.0.0.1:{port}")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}: UNAVAILABLE" in lines[0]


async def test_health_command_without_port_is_usage_error() -> None:
    """No address and no fixed RUNBOX_GRPC__PORT exits 2 saying so."""
    code, _, err = await _run(HEALTH, env={"RUNBOX_GRPC__PORT": "0"})
    assert code == 2 and "RUNBOX_GRPC__PORT" in err


@pytest.mark.parametrize("service", ["catalogue", "scheduler", "executor", "alerting"])
async def test_migrate_command_brings_sqlite_to_head_and_exits_0(
    service: str, tmp_path: Path
) -> None:
    """`python -m services.<svc> migrate` creates the schema at head and exits 0."""
    database = tmp_path / "state" / f"{service}.db"
    code, out, err = await _run(
        sys.executable,
        "-m",
        f"services.{service}",
        "migrate",
        env={"RUNBOX_DATABASE__URL": f"sqlite+aiosqlite:///{database}"},
    )
    assert code == 0, out + err
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    script = ScriptDirectory(str(ROOT / "services" / service / "migrations"))
    assert version == script.get_current_head()


async def test_migrate_command_unreachable_database_exits_1_password_hidden(
    tmp_path: Path,
) -> None:
    """A database nobody listens on exits 1; the log shows the URL with the password masked."""
    secret = tmp_path / "password"
    secret.write_text("hunter2-secret\n")
    url = f"postgresql+asyncpg://runbox@127.0.0.1:{natsd.free_port()}/scheduler"
    code, out, err = await _run(
        sys.executable,
        "-m",
        "services.scheduler",
        "migrate",
        env={"RUNBOX_DATABASE__URL": url, "RUNBOX_DATABASE__PASSWORD_FILE": str(secret)},
    )
    assert code == 1
    assert "hunter2-secret" not in out + err
    assert "runbox:***@127.0.0.1" in out + err
