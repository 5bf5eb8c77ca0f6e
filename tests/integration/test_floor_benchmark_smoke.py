"""Smoke tests of benchmarks/floor.py and benchmarks/floor_counts.py. floor.py at --smoke
size measures every primitive of a run (gRPC unary and streaming calls in three interceptor
setups against a server process, JetStream publish and DurableConsumer delivery on a real
nats-server, five SQLite commit paths, four ways to spawn /bin/true) and composes them into one
JSON line; floor_counts.py counts them on a real round trip (catalogue, executor, scheduler
processes). Figures are not judged (the machine is shared); keys, shapes, the counts of a
no-op run and the composition's arithmetic are."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.floor import RUN_COUNTS
from cli import natsd
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "floor.py"
COUNTS = ROOT / "benchmarks" / "floor_counts.py"
GRPC = {"plain", "service_interceptor", "runbox"}
SQLITE = {"raw", "raw_thread", "core_sync", "core_async", "orm_async"}
BY_SERVICE = {
    "scheduler": {
        "total",
        "rpc_submitrun_server",
        "rpc_watchrun_server",
        "rpc_resolveversion_client",
        "rpc_execute_client",
        "jetstream_publish",
        "jetstream_consume",
        "sqlite",
    },
    "catalogue": {"total", "rpc_resolveversion_server"},
    "executor": {"total", "rpc_execute_server", "jetstream_publish", "sqlite", "spawn_parent"},
}


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def run(script: Path, *argv: str, timeout: float) -> dict[str, Any]:
    """The script's JSON line, after checking nats-server is here and the script succeeded."""
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    done = subprocess.run(
        [sys.executable, str(script), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return line


def test_smoke_prints_every_primitive_and_the_floor() -> None:
    """--smoke: one round of every primitive, the per-run counts and the composed floors."""
    line = run(SCRIPT, "--smoke", timeout=110)

    assert line["benchmark"] == "floor"
    assert line["rounds"] == 1
    primitives = line["primitives"]
    for variant in GRPC:
        for kind in ("unary", "stream"):
            figures = primitives[f"grpc_{kind}_{variant}"]
            assert set(figures) == {"client_cpu_us", "server_cpu_us", "latency_p50_us"}
            assert all(positive(v) for v in figures.values()), (kind, variant, figures)
    bidi = primitives["grpc_bidi_exchange_plain"]  # a message each way on an open stream
    assert set(bidi) == {"client_cpu_us", "server_cpu_us", "latency_p50_us"}
    assert all(positive(v) for v in bidi.values()), bidi
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
    by_service = line["floor_cpu_ms_per_run_by_service"]
    assert {name: set(parts) for name, parts in by_service.items()} == BY_SERVICE
    for parts in by_service.values():
        assert math.isclose(
            parts["total"], sum(v for k, v in parts.items() if k != "total"), abs_tol=0.005
        )
    totals = sum(parts["total"] for parts in by_service.values())
    assert math.isclose(line["floor_cpu_ms_per_run"], totals, abs_tol=0.02)
    # Fewer of each primitive at the same paths cannot cost more.
    assert 0 < line["floor_cpu_ms_per_run_minimal"] <= line["floor_cpu_ms_per_run_lean"]
    assert positive(line["floor_latency_ms_c1"]) and positive(line["floor_latency_ms_c1_lean"])
    assert line["lean_paths"]["rpc"] in GRPC
    assert line["lean_paths"]["scheduler_commit"].removeprefix("sqlite_") in SQLITE
    assert line["targets"] == {"cpu_ms_per_run": 4.0, "roundtrip_p50_ms_c1": 15.0}


def test_counts_smoke_counts_each_primitive_of_a_noop_run() -> None:
    """floor_counts.py --smoke: the counts under floor.py's keys; a no-op run is one of each
    RPC but Execute (it goes over the run link, one Link stream for the whole run), one spawn,
    four RunEvents published (the executor's three through its outbox writer), of which the
    scheduler gets the two it applies (STARTED, FINISHED) over the link, not from its
    consumer."""
    line = run(COUNTS, "--smoke", timeout=110)

    assert line["benchmark"] == "floor_counts"
    assert line["runs"] == 20
    counts = line["counts"]
    assert set(counts) == set(RUN_COUNTS)
    for key in ("rpc_submitrun", "rpc_watchrun_streams"):
        assert counts[key] == 1, key
    assert counts["rpc_execute"] == 0
    # A warm submit of "latest" asks the catalogue nothing (change notes and a NATS flush:
    # shared/script_notes.py); at most the first submit's cache miss, counted per run.
    assert counts["rpc_resolveversion"] <= 0.1
    assert counts["spawns"] == 1
    assert counts["jetstream_publishes_executor"] >= 3
    assert line["executor_outbox_writer_per_run"]["rows"] == 3
    # Acked over the link, published outside the consumer's filters; one not acked within
    # the executor's hold (1 s, a busy machine) is delivered as before.
    assert counts["jetstream_consumptions_scheduler"] < 0.5
    assert counts["rpc_watchrun_messages"] >= 1
    # The per-run transactions go through the Core path (shared.db_transactions) since
    # s3-sqlhot; the ORM's are background loops'.
    assert counts["sqlite_transactions_scheduler_core"] >= 2
    assert set(line["cpu_ms_per_run"]) == {
        "catalogue",
        "scheduler",
        "executor",
        "executor_children",
    }
    # The catalogue is asked nothing per warm run: its share is its idle CPU, which may round
    # to 0 ms per run; the other three do work for every run.
    assert line["cpu_ms_per_run"]["catalogue"] >= 0
    assert all(positive(v) for k, v in line["cpu_ms_per_run"].items() if k != "catalogue")
