"""Smoke tests of benchmarks/floor.py and benchmarks/floor_counts.py. floor.py at --smoke
size measures every primitive of a run (gRPC unary, server-streaming and bidirectional-stream
exchanges in three interceptor setups against a server process, JetStream publish and
DurableConsumer delivery on a real nats-server, six SQLite commit paths, five ways to spawn
/bin/true, the executor's fork server among them) and composes them into one JSON line, the
machine's floor and what a round trip's Celery figures require among it; floor_counts.py
counts them on a real round trip (catalogue, executor, scheduler processes). Figures are not
judged (the machine is shared); keys, shapes, the counts of a no-op run and the composition's
arithmetic are."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.floor import RUN_COUNTS
from cli import natsd
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "floor.py"
COUNTS = ROOT / "benchmarks" / "floor_counts.py"
GRPC = {"plain", "service_interceptor", "runbox"}
SQLITE = {"raw", "raw_thread", "core_loop", "core_sync", "core_async", "orm_async"}
SPAWNS = {"asyncio", "posix_spawn", "helper", "forkserver"}
FLOORS = {"today", "today_one_call", "lean", "minimal", "minimal_one_call"}
# A line of benchmarks/scheduler.py --only roundtrip, the keys floor.py --celery reads.
CELERY = {"celery_tasks_per_s_c32": 800.0, "celery_roundtrip_p50_ms_c4": 4.0}
BY_SERVICE = {
    "scheduler": {
        "total",
        "rpc_submitrun_server",
        "rpc_watchrun_server",
        "rpc_resolveversion_client",
        "rpc_execute_client",
        "link",
        "jetstream_publish",
        "jetstream_consume",
        "sqlite",
    },
    "catalogue": {"total", "rpc_resolveversion_server"},
    "executor": {
        "total",
        "rpc_execute_server",
        "link",
        "jetstream_publish",
        "sqlite",
        "spawn_parent",
    },
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


@pytest.fixture(scope="module")
def celery_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("floor") / "celery.json"
    path.write_text(json.dumps({"benchmark": "scheduler", **CELERY}) + "\n")
    return path


@pytest.fixture(scope="module")
def smoke_line(celery_file: Path) -> dict[str, Any]:
    return run(SCRIPT, "--smoke", "--celery", str(celery_file), timeout=110)


def test_smoke_prints_every_primitive_and_the_floor(smoke_line: dict[str, Any]) -> None:
    """--smoke: one round of every primitive, the per-run counts and the composed floors."""
    line = smoke_line

    assert line["benchmark"] == "floor"
    assert line["rounds"] == 1
    assert line["event_loop"].startswith("uvloop")  # the services' default loop
    primitives = line["primitives"]
    for variant in GRPC:
        # A message each way on an open stream: the run link's.
        for kind in ("unary", "stream", "bidi_exchange"):
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
    for spawn in SPAWNS:
        figures = primitives[f"spawn_{spawn}"]
        assert positive(figures["parent_cpu_us"]) and positive(figures["child_cpu_us"])
    for spawn in ("helper", "forkserver"):
        assert positive(primitives[f"spawn_{spawn}"]["helper_cpu_us"])

    assert line["per_run_counts"] == RUN_COUNTS
    by_service = line["floor_cpu_ms_per_run_by_service"]
    assert {name: set(parts) for name, parts in by_service.items()} == BY_SERVICE
    for parts in by_service.values():
        assert math.isclose(
            parts["total"], sum(v for k, v in parts.items() if k != "total"), abs_tol=0.005
        )
    totals = sum(parts["total"] for parts in by_service.values())
    assert math.isclose(line["floor_cpu_ms_per_run"], totals, abs_tol=0.02)
    # Fewer of each primitive at the same paths cannot cost more; one call costs no more
    # than SubmitRun and a stream.
    assert line["floor_cpu_ms_per_run_minimal_one_call"] > 0
    assert line["floor_cpu_ms_per_run_minimal_one_call"] <= line["floor_cpu_ms_per_run_minimal"]
    assert line["floor_cpu_ms_per_run_minimal"] <= line["floor_cpu_ms_per_run_lean"]
    assert line["floor_cpu_ms_per_run_one_call"] <= line["floor_cpu_ms_per_run"]
    assert positive(line["floor_latency_ms_c1"]) and positive(line["floor_latency_ms_c1_lean"])
    assert line["lean_paths"]["rpc"] in GRPC and line["lean_paths"]["link"] in GRPC
    assert line["lean_paths"]["scheduler_commit"].removeprefix("sqlite_") in SQLITE
    assert line["today_paths"]["link"] == "runbox"
    assert line["today_paths"]["scheduler_commit"] == "sqlite_core_loop"
    assert line["today_paths"]["spawn"] == "spawn_forkserver"
    assert line["targets"] == {"cpu_ms_per_run": 4.0, "roundtrip_p50_ms_c1": 15.0}


def test_smoke_composes_the_machine_floor_and_the_celery_targets(
    smoke_line: dict[str, Any],
) -> None:
    """The machine's floor is the services' plus the client, nats-server, the fork server and
    the run's process; its runs/s is the cores over it; the Celery-relative targets become
    CPU per run and latency bounds, and each floor is judged against them."""
    line = smoke_line
    cores = line["cores"]
    assert isinstance(cores, int) and cores >= 1
    floors = line["floor_machine"]
    assert set(floors) == FLOORS
    assert floors["today"]["services_cpu_ms_per_run"] == line["floor_cpu_ms_per_run"]
    for name, floor in floors.items():
        outside = floor["outside_cpu_ms_per_run"]
        assert set(outside) == {"client", "nats_server", "forkserver_and_child"}
        assert all(positive(v) for v in outside.values()), (name, outside)
        expected = floor["services_cpu_ms_per_run"] + sum(outside.values())
        assert math.isclose(floor["cpu_ms_per_run"], expected, abs_tol=0.02), name
        assert math.isclose(
            floor["max_runs_per_s"], cores * 1000 / floor["cpu_ms_per_run"], rel_tol=0.01
        )
        assert positive(floor["latency_ms_c1"])
    assert line["floor_machine_cpu_ms_per_run"] == floors["today"]["cpu_ms_per_run"]
    assert line["floor_max_runs_per_s"] == floors["today"]["max_runs_per_s"]
    assert floors["minimal_one_call"]["cpu_ms_per_run"] <= floors["minimal"]["cpu_ms_per_run"]

    needs = line["celery_requirements"]
    tps, p50 = CELERY["celery_tasks_per_s_c32"], CELERY["celery_roundtrip_p50_ms_c4"]
    assert needs["runs_per_s_c32_needed"] == tps / 2
    assert math.isclose(needs["max_machine_cpu_ms_per_run_for_throughput"], cores * 2000 / tps)
    assert math.isclose(needs["max_machine_cpu_ms_per_run_for_p50_c4"], 2 * p50 * cores / 4)
    assert needs["max_latency_ms_for_p50_c4"] == 2 * p50
    verdicts = line["celery_verdicts"]
    assert set(verdicts) == FLOORS
    for name, verdict in verdicts.items():
        cpu = floors[name]["cpu_ms_per_run"]
        assert verdict["throughput_c32_reachable"] == (
            cpu <= needs["max_machine_cpu_ms_per_run_for_throughput"]
        )
        assert math.isclose(
            verdict["throughput_c32_headroom_ms"],
            needs["max_machine_cpu_ms_per_run_for_throughput"] - cpu,
            abs_tol=0.002,
        )
        assert math.isclose(
            verdict["p50_c4_headroom_ms"],
            needs["max_machine_cpu_ms_per_run_for_p50_c4"] - cpu,
            abs_tol=0.002,
        )
        p50_floor = max(floors[name]["latency_ms_c1"], 4 * cpu / cores)
        assert math.isclose(verdict["p50_c4_floor_ms"], p50_floor, abs_tol=0.001)
        assert verdict["p50_c4_reachable"] == (p50_floor <= 2 * p50)


def test_primitives_of_an_earlier_line_compose_again(
    smoke_line: dict[str, Any], tmp_path: Path
) -> None:
    """--primitives: no measuring; the same primitives and counts compose the same floors."""
    earlier = tmp_path / "floor.json"
    earlier.write_text(json.dumps(smoke_line) + "\n")
    line = run(SCRIPT, "--primitives", str(earlier), timeout=60)
    assert line["primitives"] == smoke_line["primitives"]
    assert line["floor_machine"] == smoke_line["floor_machine"]
    assert "celery_verdicts" not in line

    # With a floor_counts.py line: its counts, and the floor with the rest as it measured.
    measured = {"client": 1.0, "nats_server": 0.5, "forkserver_and_child": 1.25}
    counts = tmp_path / "counts.json"
    counts.write_text(
        json.dumps(
            {
                "benchmark": "floor_counts",
                "in_flight": 4,
                "roundtrip_p50_ms": 10.0,
                "counts": RUN_COUNTS | {"rpc_watchrun_messages": 1},
                "cpu_ms_per_run": {"scheduler": 2, "executor": 1, "catalogue": 0}
                | {"executor_children": measured["forkserver_and_child"]},
                "client_cpu_ms_per_run": measured["client"],
                "nats_server_cpu_ms_per_run": measured["nats_server"],
                "idle_cpu_ms_per_s": {"scheduler": 10},
            }
        )
    )
    line = run(SCRIPT, "--primitives", str(earlier), "--counts", str(counts), timeout=60)
    assert line["per_run_counts"]["rpc_watchrun_messages"] == 1
    floors = line["floor_machine"]
    assert set(floors) == FLOORS | {"today_outside_measured"}
    both = floors["today_outside_measured"]
    assert both["outside_cpu_ms_per_run"] == measured
    assert both["services_cpu_ms_per_run"] == floors["today"]["services_cpu_ms_per_run"]
    assert math.isclose(
        both["cpu_ms_per_run"], both["services_cpu_ms_per_run"] + 2.75, abs_tol=0.01
    )
    assert line["measured_in_flight"] == 4


def test_counts_smoke_counts_each_primitive_of_a_noop_run() -> None:
    """floor_counts.py --smoke: the counts under floor.py's keys; a no-op run is one of each
    RPC but Execute (it goes over the run link, one Link stream for the whole run: the Execute
    down it, its answer and the STARTED and FINISHED events up), one spawn, four RunEvents
    published (the executor's three through its outbox writer), of which the scheduler gets
    the two it applies (STARTED, FINISHED) over the link, not from its consumer."""
    line = run(COUNTS, "--smoke", timeout=110)

    assert line["benchmark"] == "floor_counts"
    assert line["runs"] == 20
    counts = line["counts"]
    assert set(counts) == set(RUN_COUNTS)
    # One SubmitAndWatchRun stream a run (benchmarks/scheduler.py's client call), no SubmitRun.
    assert (counts["rpc_submitrun"], counts["rpc_watchrun_streams"]) == (0, 1)
    assert counts["rpc_execute"] == 0
    link = line["run_link_per_run"]
    assert (link["link_executes"], link["link_answers"], link["link_events"]) == (1, 1, 2)
    # A message carries one or more items: at least the Execute down and its answer up, at
    # most a message per item (acks ride with the next Execute or go alone after a linger).
    assert 1 <= counts["link_messages_to_executor"] <= link["link_executes"] + link["link_acks"]
    assert 1 <= counts["link_messages_to_scheduler"] <= link["link_answers"] + link["link_events"]
    # A warm submit of "latest" asks the catalogue nothing (change notes and a NATS flush:
    # shared/script_notes.py); at most the first submit's cache miss, counted per run.
    assert counts["rpc_resolveversion"] <= 0.1
    assert counts["spawns"] == 1
    assert counts["jetstream_publishes_executor"] >= 3
    assert line["executor_outbox_writer_per_run"]["rows"] == 3
    executor_commits = (
        counts["sqlite_transactions_executor_raw"]
        + counts["sqlite_transactions_executor_raw_thread"]
    )
    assert executor_commits >= 2
    # Acked over the link, published outside the consumer's filters; one not acked within
    # the executor's hold (1 s, a busy machine) is delivered as before.
    assert counts["jetstream_consumptions_scheduler"] < 0.5
    assert counts["rpc_watchrun_messages"] >= 1
    # The per-run transactions go through the Core path (shared.db_transactions) since
    # s3-sqlhot; the ORM's are background loops'.
    assert counts["sqlite_transactions_scheduler_core"] >= 2
    assert line["in_flight"] == 1 and positive(line["runs_per_s"])
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
