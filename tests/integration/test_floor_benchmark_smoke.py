"""Smoke test of benchmarks/floor.py: at --smoke size it measures every primitive of a run
(gRPC unary and streaming calls in three interceptor setups against a server process,
JetStream publish and DurableConsumer delivery on a real nats-server, five SQLite commit
paths, four ways to spawn /bin/true) and composes them into one JSON line. Figures are not
judged (the machine is shared); keys, shapes and the composition's arithmetic are."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from cli import natsd
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "floor.py"
GRPC = {"plain", "service_interceptor", "runbox"}
SQLITE = {"raw", "raw_thread", "core_sync", "core_async", "orm_async"}
BY_PRIMITIVE = {
    "rpc_submitrun_server",
    "rpc_watchrun_server",
    "rpc_resolveversion",
    "rpc_execute",
    "jetstream_publish",
    "jetstream_consume",
    "sqlite_scheduler",
    "sqlite_executor",
    "spawn_parent",
}


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_smoke_prints_every_primitive_and_the_floor() -> None:
    """--smoke: one round of every primitive, the per-run counts and the composed floors."""
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])

    assert line["benchmark"] == "floor"
    assert line["rounds"] == 1
    primitives = line["primitives"]
    for variant in GRPC:
        for kind in ("unary", "stream"):
            figures = primitives[f"grpc_{kind}_{variant}"]
            assert set(figures) == {"client_cpu_us", "server_cpu_us", "latency_p50_us"}
            assert all(positive(v) for v in figures.values()), (kind, variant, figures)
    for name in SQLITE:
        assert set(primitives[f"sqlite_{name}"]) == {"cpu_us", "latency_p50_us"}
        assert all(positive(v) for v in primitives[f"sqlite_{name}"].values())
    assert positive(primitives["jetstream_publish"]["publisher_cpu_us"])
    assert positive(primitives["jetstream_publish"]["nats_server_cpu_us"])
    assert positive(primitives["jetstream_consume"]["consumer_cpu_us"])
    # Publish -> handler on one machine: well under a pull request's 1 s lifetime.
    assert 0 < primitives["jetstream_consume"]["latency_p50_us"] < 500_000
    for spawn in ("asyncio", "posix_spawn", "helper"):
        figures = primitives[f"spawn_{spawn}"]
        assert positive(figures["parent_cpu_us"]) and positive(figures["child_cpu_us"])
    assert positive(primitives["spawn_helper"]["helper_cpu_us"])

    assert line["per_run_counts"]["rpc_execute"] == 1
    by_primitive = line["floor_cpu_ms_per_run_by_primitive"]
    assert set(by_primitive) == BY_PRIMITIVE
    assert math.isclose(line["floor_cpu_ms_per_run"], sum(by_primitive.values()), abs_tol=0.02)
    # Fewer of each primitive at the same paths cannot cost more.
    assert 0 < line["floor_cpu_ms_per_run_minimal"] <= line["floor_cpu_ms_per_run_lean"]
    assert positive(line["floor_latency_ms_c1"]) and positive(line["floor_latency_ms_c1_lean"])
    assert line["lean_paths"]["rpc"] in GRPC
    assert line["lean_paths"]["scheduler_commit"].removeprefix("sqlite_") in SQLITE
    assert line["targets"] == {"cpu_ms_per_run": 4.0, "roundtrip_p50_ms_c1": 15.0}
