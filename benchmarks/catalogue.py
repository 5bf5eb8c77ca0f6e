"""Catalogue benchmark: ListScripts, resolve-latest and ValidateParameters over gRPC.

Loads --scripts scripts with --versions-per-script versions each (bulk insert
into the catalogue's own tables after its migrations ran; the parameter
definitions and content of every version come from one version published over
gRPC, so they are exactly what the service stores), then measures, over a real
gRPC channel on loopback with a bearer token:

- baseline: the health Check RPC (no database), measured in the same run, so the
  other figures can be read against the cost of a bare authenticated round trip;
- list: ListScripts filtered by tag (any of one) and execution type, 50 per page,
  first pages and the following page via page_token;
- resolve: ResolveVersion of a random script with an empty selector (latest);
- validate: ValidateParameters of a random script (range ^1) with typical values, on scripts
  just resolved (warm: resolution cache and compiled validator hit);
- validate_cold: the same on scripts not touched before (resolution from the database and the
  parameter set compiled on first use).

SQLite always; PostgreSQL too when reachable (--postgres-url, default
$RUNBOX_TEST_POSTGRES_URL), each in a fresh database dropped afterwards.
Progress goes to stderr; the last line on stdout is one JSON object.

    .venv/bin/python benchmarks/catalogue.py [--scripts 100000] [--samples 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Before grpc is imported: no fork handlers (why: benchmarks/children.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from benchmarks.children import preexec  # noqa: E402
from cli import natsd  # noqa: E402
from cli.stack import wait_healthy  # noqa: E402
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc  # noqa: E402
from runbox.common.v1 import common_pb2  # noqa: E402
from services.catalogue.models import ScriptRow, ScriptTagRow, VersionRow  # noqa: E402
from shared.auth import hash_token, new_token  # noqa: E402
from shared.clients import open_channel  # noqa: E402

TAGS = [f"team-{i}" for i in range(50)]
OWNERS = [f"owner-{i}" for i in range(20)]
VERSIONS = ["1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.1.0"]
PY = common_pb2.EXECUTION_TYPE_PYTHON
SHELL = common_pb2.EXECUTION_TYPE_SHELL
T = catalogue_pb2.ParameterType

PARAMS = [
    catalogue_pb2.ParameterDefinition(name="host", type=T.PARAMETER_TYPE_STRING, required=True),
    catalogue_pb2.ParameterDefinition(
        name="port",
        type=T.PARAMETER_TYPE_INTEGER,
        rules=catalogue_pb2.ParameterRules(min_value=1, max_value=65535),
    ),
    catalogue_pb2.ParameterDefinition(name="verbose", type=T.PARAMETER_TYPE_BOOLEAN),
    catalogue_pb2.ParameterDefinition(name="ratio", type=T.PARAMETER_TYPE_FLOAT),
    catalogue_pb2.ParameterDefinition(name="notify", type=T.PARAMETER_TYPE_EMAIL),
    catalogue_pb2.ParameterDefinition(name="endpoint", type=T.PARAMETER_TYPE_URL),
    catalogue_pb2.ParameterDefinition(
        name="mode",
        type=T.PARAMETER_TYPE_SELECT,
        rules=catalogue_pb2.ParameterRules(
            allowed_values=[struct_pb2.Value(string_value=v) for v in ("fast", "safe", "full")]
        ),
    ),
    catalogue_pb2.ParameterDefinition(name="token", type=T.PARAMETER_TYPE_PASSWORD),
    catalogue_pb2.ParameterDefinition(
        name="options",
        type=T.PARAMETER_TYPE_JSON,
        rules=catalogue_pb2.ParameterRules(
            json_schema=json.dumps(
                {
                    "type": "object",
                    "properties": {"retries": {"type": "integer", "minimum": 0}},
                    "additionalProperties": False,
                }
            )
        ),
    ),
    catalogue_pb2.ParameterDefinition(name="not_before", type=T.PARAMETER_TYPE_DATETIME),
    catalogue_pb2.ParameterDefinition(
        name="full_depth",
        type=T.PARAMETER_TYPE_INTEGER,
        required=True,
        condition=catalogue_pb2.ParameterCondition(
            parameter="mode", equals=struct_pb2.Value(string_value="full")
        ),
    ),
]
VALUES = {
    "host": "db-1.internal",
    "port": "5432",
    "verbose": "true",
    "ratio": 0.5,
    "notify": "ops@example.com",
    "endpoint": "https://example.com/hook",
    "mode": "safe",
    "token": "s3cret-value",
    "options": {"retries": 2},
    "not_before": "2026-11-24T08:00:00+01:00",
}


def log(message: str) -> None:
    print(f"[catalogue-bench] {message}", file=sys.stderr, flush=True)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return round(p50 * 1000, 3), round(p99 * 1000, 3)


async def timed(
    samples: int, call: Callable[[int], Awaitable[Any]], warm: bool = True
) -> list[float]:
    for i in range(min(50, samples) if warm else 0):  # warm caches and the channel
        await call(i)
    out = []
    for i in range(samples):
        start = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - start)
    return out


async def bulk_load(url: str, n_scripts: int, per_script: int, seed: VersionRow) -> None:
    """Insert scripts, their tags and versions with core INSERTs in chunks."""
    engine = create_async_engine(url)
    now = datetime.now(UTC)
    rng = random.Random(7)
    chunk = 5000
    started = time.perf_counter()
    try:
        async with engine.begin() as conn:
            first_id = (await conn.scalar(select(ScriptRow.id).order_by(ScriptRow.id.desc()))) or 0
        for base in range(0, n_scripts, chunk):
            scripts, tags, versions = [], [], []
            for i in range(base, min(base + chunk, n_scripts)):
                sid = first_id + 1 + i
                chosen = sorted(rng.sample(TAGS, 3))
                scripts.append(
                    {
                        "id": sid,
                        "name": f"job-{i:06d}",
                        "description": f"benchmark job {i} for {chosen[0]}",
                        "tags": chosen,
                        "owner": OWNERS[i % len(OWNERS)],
                        "execution_type": PY if i % 4 else SHELL,
                        "config": {},
                        "default_limits": {},
                        "default_retry": {},
                        "isolation": 0,
                        "runtime": 0,
                        "is_template": False,
                        "latest_version": VERSIONS[per_script - 1],
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                tags += [{"script_id": sid, "tag": t} for t in chosen]
                for v in VERSIONS[:per_script]:
                    major, minor, patch = (int(p) for p in v.split("."))
                    versions.append(
                        {
                            "script_id": sid,
                            "version": v,
                            "major": major,
                            "minor": minor,
                            "patch": patch,
                            "prerelease": "",
                            "sha256": seed.sha256,
                            "size_bytes": seed.size_bytes,
                            "parameters": seed.parameters,
                            "state": seed.state,
                            "state_reason": "",
                            "changelog": "",
                            "created_by": "bench",
                            "created_at": now,
                        }
                    )
            async with engine.begin() as conn:
                await conn.execute(insert(ScriptRow), scripts)
                await conn.execute(insert(ScriptTagRow), tags)
                await conn.execute(insert(VersionRow), versions)
            if (base // chunk) % 5 == 0:
                log(
                    f"  loaded {base + len(scripts)} scripts ({time.perf_counter() - started:.0f} s)"
                )
        if (
            make_url(url).get_backend_name() == "postgresql"
            or make_url(url).get_backend_name() == "sqlite"
        ):
            async with engine.begin() as conn:
                await conn.execute(text("ANALYZE"))
    finally:
        await engine.dispose()


def spawn_catalogue(env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "services.catalogue"],
            env=env,
            stdout=out,
            stderr=out,
            cwd=ROOT,
            preexec_fn=preexec(),
        )


async def measure(
    label: str, url: str, args: argparse.Namespace, nats_url: str, tmp: Path
) -> dict[str, Any]:
    token = new_token()
    principals = tmp / f"principals-{label}.json"
    principals.write_text(
        json.dumps(
            {
                "principals": [
                    {"name": "bench", "token_sha256": hash_token(token), "permissions": ["*"]}
                ]
            }
        )
    )
    # The catalogue runs in its own process, as deployed; this process is the client.
    port = natsd.free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
    env.update(
        RUNBOX_INSTANCE_ID=f"catalogue-bench-{label}",
        RUNBOX_GRPC__HOST="127.0.0.1",
        RUNBOX_GRPC__PORT=str(port),
        RUNBOX_METRICS__PORT="-1",
        RUNBOX_DATABASE__URL=url,
        RUNBOX_NATS__URL=nats_url,
        RUNBOX_AUTH__PRINCIPALS_FILE=str(principals),
        RUNBOX_LOG__LEVEL="WARNING",
        RUNBOX_BLOB_DIR=str(tmp / f"blobs-{label}"),
    )
    log_file = tmp / f"catalogue-{label}.log"
    proc = spawn_catalogue(env, log_file)
    try:
        await asyncio.to_thread(wait_healthy, address, proc, log_file, 60)
        async with open_channel(address, token=token) as channel:
            stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
            await stub.CreateScript(
                catalogue_pb2.CreateScriptRequest(
                    script=catalogue_pb2.Script(name="seed", execution_type=PY)
                )
            )
            await stub.PublishVersion(
                catalogue_pb2.PublishVersionRequest(
                    script_name="seed",
                    version="1.0.0",
                    content=b"import json, os\nprint(json.load(open(os.environ['RUNBOX_PARAMS_FILE'])))\n",
                    parameters=PARAMS,
                )
            )
            engine = create_async_engine(url)
            async with engine.connect() as conn:
                seed_row = (
                    await conn.execute(
                        select(VersionRow)
                        .join(ScriptRow, ScriptRow.id == VersionRow.script_id)
                        .where(ScriptRow.name == "seed", VersionRow.version == "1.0.0")
                    )
                ).one()
            await engine.dispose()
            seed = VersionRow(
                sha256=seed_row.sha256,
                size_bytes=seed_row.size_bytes,
                parameters=seed_row.parameters,
                state=seed_row.state,
            )
            log(f"{label}: loading {args.scripts} scripts x {args.versions_per_script} versions")
            started = time.perf_counter()
            await bulk_load(url, args.scripts, args.versions_per_script, seed)
            load_s = time.perf_counter() - started
            log(f"{label}: loaded in {load_s:.1f} s")
            rng = random.Random(11)
            names = [f"job-{rng.randrange(args.scripts):06d}" for _ in range(args.samples)]
            untouched = sorted(set(range(args.scripts)) - {int(n[4:]) for n in names})
            cold_names = [f"job-{i:06d}" for i in rng.sample(untouched, args.samples)]
            health = health_pb2_grpc.HealthStub(channel)

            async def baseline(i: int) -> Any:
                return await health.Check(health_pb2.HealthCheckRequest())

            first_pages: dict[str, str] = {}

            async def list_page(i: int) -> Any:
                tag = TAGS[i % len(TAGS)]
                request = catalogue_pb2.ListScriptsRequest(
                    page_size=50, tags_any=[tag], execution_type=PY
                )
                if i % 2 and tag in first_pages:
                    request.page_token = first_pages[tag]
                page = await stub.ListScripts(request)
                assert page.scripts, request
                if not request.page_token:
                    first_pages[tag] = page.next_page_token
                return page

            async def resolve(i: int) -> Any:
                got = await stub.ResolveVersion(
                    catalogue_pb2.ResolveVersionRequest(ref=common_pb2.ScriptRef(name=names[i]))
                )
                assert got.version == VERSIONS[args.versions_per_script - 1]
                return got

            values = struct_pb2.Struct()
            values.update(VALUES)

            async def validate(i: int) -> Any:
                return await stub.ValidateParameters(
                    catalogue_pb2.ValidateParametersRequest(
                        ref=common_pb2.ScriptRef(name=names[i], version="^1"), values=values
                    )
                )

            async def validate_cold(i: int) -> Any:
                return await stub.ValidateParameters(
                    catalogue_pb2.ValidateParametersRequest(
                        ref=common_pb2.ScriptRef(name=cold_names[i], version="^1"), values=values
                    )
                )

            result: dict[str, Any] = {"load_s": round(load_s, 1)}
            for key, call in (
                ("baseline", baseline),
                ("list", list_page),
                ("resolve", resolve),
                ("validate", validate),
                ("validate_cold", validate_cold),
            ):
                p50, p99 = percentiles(await timed(args.samples, call, warm=key != "validate_cold"))
                result[f"{key}_p50_ms"], result[f"{key}_p99_ms"] = p50, p99
                log(f"{label}: {key:<9} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")
            return result
    finally:
        proc.terminate()
        proc.wait(30)


async def postgres_database(admin_url: str) -> tuple[str, Callable[[], Awaitable[None]]] | None:
    """A fresh database on the server of admin_url, and how to drop it; None if unreachable."""
    name = f"runbox_bench_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        log(f"postgres unreachable at {admin_url}: {exc.__class__.__name__}: {exc}")
        await engine.dispose()
        return None

    async def drop() -> None:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await engine.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, default=100_000)
    parser.add_argument("--versions-per-script", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "RUNBOX_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        help="server to create a scratch database on; empty to skip PostgreSQL",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runbox-bench-") as tmp_name:
        tmp = Path(tmp_name)
        nats = natsd.start(tmp / "nats", preexec_fn=preexec())
        try:
            sqlite = await measure(
                "sqlite", f"sqlite+aiosqlite:///{tmp / 'catalogue.db'}", args, nats.url, tmp
            )
            postgres: dict[str, Any] = {}
            made = await postgres_database(args.postgres_url) if args.postgres_url else None
            if made is not None:
                url, drop = made
                try:
                    postgres = await measure("postgres", url, args, nats.url, tmp)
                finally:
                    await drop()
        finally:
            nats.stop()
    summary: dict[str, Any] = {
        "benchmark": "catalogue",
        "scripts": args.scripts,
        "versions": args.scripts * args.versions_per_script,
        "samples": args.samples,
        "baseline_rpc_p50_ms": sqlite["baseline_p50_ms"],
        "validate_p50_ms": sqlite["validate_p50_ms"],
        "validate_p99_ms": sqlite["validate_p99_ms"],
        "validate_cold_p50_ms": sqlite["validate_cold_p50_ms"],
        "validate_cold_p99_ms": sqlite["validate_cold_p99_ms"],
        "resolve_p50_ms": sqlite["resolve_p50_ms"],
        "resolve_p99_ms": sqlite["resolve_p99_ms"],
        "list_p50_ms_sqlite": sqlite["list_p50_ms"],
        "list_p99_ms_sqlite": sqlite["list_p99_ms"],
        "list_p99_ms_postgres": postgres.get("list_p99_ms"),
        "sqlite": sqlite,
        "postgres": postgres or None,
        "targets": {"validate_p50_ms": 2, "validate_p99_ms": 10, "list_p99_ms": 20},
    }
    summary["meets_targets"] = {
        "validate_p50": sqlite["validate_p50_ms"] <= 2,
        "validate_p99": sqlite["validate_p99_ms"] <= 10,
        "list_p99_sqlite": sqlite["list_p99_ms"] <= 20,
        "list_p99_postgres": bool(postgres) and postgres["list_p99_ms"] <= 20,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    grpc.aio.init_grpc_aio()
    asyncio.run(main())
