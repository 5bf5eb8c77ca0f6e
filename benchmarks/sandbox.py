"""Sandbox benchmark: warm-pool handoff against docker exec and docker run, end-to-end no-op runs,
sustained throughput in per-run and reuse isolation against the container churn ceiling, and the
executor's memory.

All measured in one run on this machine, against a real Docker engine and the executor running
as its own process (`python -m services.executor`, as deployed) with a real nats-server:

- handoff: ExecuteResponse.accepted_at -> the STARTED event's started_at (the agent's marker,
  written just before it forks the script), for sequential no-op python runs, each started once
  the pool has a warm container again (the pool is what is measured, not its refill rate);
- docker_exec: `exec_run(["/bin/true"])` into a running hardened sandbox (create + start + wait of
  an exec), and docker_run: `containers.run(..., ["/bin/true"], remove=True)` with the same
  hardening, both through the Docker SDK;
- noop_e2e: Execute call -> FINISHED event received, sequential;
- throughput: --duration seconds of no-op runs kept --inflight at a time, per-run isolation
  then reuse isolation (one script), FINISHED events counted;
- churn ceiling: the same duration of create + start + remove of hardened containers, as many in
  flight as the pool creates at once (create_concurrency), measured in this run;
- executor RSS with --warm warm containers (VmRSS of the executor process).

Progress goes to stderr; the last line on stdout is one JSON object.

    .venv/bin/python benchmarks/sandbox.py [--samples 200] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
import grpc  # noqa: E402
import nats  # noqa: E402
from google.protobuf import duration_pb2  # noqa: E402

from benchmarks.children import preexec  # noqa: E402
from cli import natsd  # noqa: E402
from cli.stack import wait_healthy  # noqa: E402
from runbox.common.v1 import common_pb2  # noqa: E402
from runbox.events.v1 import events_pb2  # noqa: E402
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc  # noqa: E402
from services.executor.pool import PoolClass, hardened_options  # noqa: E402
from shared.auth import hash_token, new_token  # noqa: E402
from shared.clients import open_channel  # noqa: E402

IMAGE = os.environ.get("RUNBOX_TEST_SANDBOX_IMAGE", "runbox/sandbox-python:latest")
NOOP = b"pass\n"
FINISHED = events_pb2.RUN_EVENT_TYPE_FINISHED
STARTED = events_pb2.RUN_EVENT_TYPE_STARTED


def log(message: str) -> None:
    print(f"[sandbox-bench] {message}", file=sys.stderr, flush=True)


def pct(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return round(p50 * 1000, 3), round(p99 * 1000, 3)


def request(script: str = "bench", reuse: bool = False) -> executor_pb2.ExecuteRequest:
    return executor_pb2.ExecuteRequest(
        run_id=uuid.uuid4().hex,
        attempt=1,
        script_name=script,
        script_version="1.0.0",
        sha256=hashlib.sha256(NOOP).hexdigest(),
        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
        content=NOOP,
        limits=common_pb2.ResourceLimits(timeout=duration_pb2.Duration(seconds=30)),
        isolation=common_pb2.ISOLATION_REUSE if reuse else common_pb2.ISOLATION_PER_RUN,
    )


class Events:
    """STARTED / FINISHED events of every run, from one JetStream subscription."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.finished: dict[str, asyncio.Future[float]] = {}
        self.count = 0

    def expect(self, run_id: str) -> asyncio.Future[float]:
        future = self.finished.get(run_id)
        if future is None:
            future = self.finished[run_id] = asyncio.get_running_loop().create_future()
        return future

    async def on_message(self, msg: Any) -> None:
        event = events_pb2.RunEvent.FromString(msg.data)
        if event.type == STARTED:
            self.started[event.run_id] = event.started_at.ToDatetime().timestamp()
        elif event.type == FINISHED:
            self.count += 1
            future = self.expect(event.run_id)
            if not future.done():
                future.set_result(time.perf_counter())


def spawn_executor(tmp: Path, nats_url: str, args: argparse.Namespace) -> tuple[Any, str, str]:
    token = new_token()
    principals = tmp / "principals.json"
    principals.write_text(
        json.dumps(
            {
                "principals": [
                    {"name": "bench", "token_sha256": hash_token(token), "permissions": ["*"]}
                ]
            }
        )
    )
    port = natsd.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
    env.update(
        RUNBOX_INSTANCE_ID="executor-bench",
        RUNBOX_GRPC__HOST="127.0.0.1",
        RUNBOX_GRPC__PORT=str(port),
        RUNBOX_METRICS__PORT="-1",
        RUNBOX_DATABASE__URL=f"sqlite+aiosqlite:///{tmp / 'executor.db'}",
        RUNBOX_NATS__URL=nats_url,
        RUNBOX_AUTH__PRINCIPALS_FILE=str(principals),
        RUNBOX_LOG__LEVEL="WARNING",
        RUNBOX_SANDBOX__BACKEND="docker",
        RUNBOX_SANDBOX__IMAGE=IMAGE,
        RUNBOX_SANDBOX__POOL__MIN_IDLE=str(args.warm),
        RUNBOX_SANDBOX__POOL__MAX_IDLE=str(max(args.warm, args.inflight)),
        RUNBOX_MAX_CONCURRENT_RUNS=str(args.inflight),
        RUNBOX_MAX_QUEUED_RUNS=str(args.inflight * 4),
        RUNBOX_WORK_DIR=str(tmp / "work"),
    )
    log_file = tmp / "executor.log"
    out = log_file.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.executor"],
        env=env,
        stdout=out,
        stderr=out,
        cwd=ROOT,
        preexec_fn=preexec(),
    )
    address = f"127.0.0.1:{port}"
    wait_healthy(address, proc, log_file, 60)
    return proc, address, token


async def wait_warm(stub: executor_pb2_grpc.ExecutorServiceStub, count: int) -> None:
    while True:
        status = await stub.GetPoolStatus(executor_pb2.GetPoolStatusRequest())
        if any(c.idle >= count for c in status.classes):
            return
        await asyncio.sleep(0.02)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def docker_baselines(samples: int) -> dict[str, float]:
    """docker exec into a running sandbox and docker run --rm, same image and hardening."""
    client = docker.from_env(timeout=120)
    cls = PoolClass(IMAGE, "", 1.0, 256 << 20, 128, 64 << 20, 64 << 20, "none")
    options = hardened_options(cls)
    options.update(command=["sleep", "3600"], stdin_open=False)
    container = client.containers.run(**options)
    try:
        container.exec_run(["/bin/true"])
        execs = []
        for _ in range(samples):
            started = time.perf_counter()
            container.exec_run(["/bin/true"])
            execs.append(time.perf_counter() - started)
    finally:
        container.remove(force=True)
    runs = []
    options = hardened_options(cls)
    options.update(command=["/bin/true"], stdin_open=False, detach=False, remove=True)
    for _ in range(max(samples // 4, 20)):
        started = time.perf_counter()
        client.containers.run(**options)
        runs.append(time.perf_counter() - started)
    client.close()
    exec_p50, exec_p99 = pct(execs)
    run_p50, run_p99 = pct(runs)
    return {
        "docker_exec_p50_ms": exec_p50,
        "docker_exec_p99_ms": exec_p99,
        "docker_run_p50_ms": run_p50,
        "docker_run_p99_ms": run_p99,
    }


def churn_ceiling(duration: float, concurrency: int) -> float:
    """Hardened containers created, started and removed per second, `concurrency` at a time."""
    client = docker.from_env(timeout=120)
    cls = PoolClass(IMAGE, "", 1.0, 256 << 20, 128, 64 << 20, 64 << 20, "none")
    options = hardened_options(cls)
    options.update(command=["sleep", "60"], stdin_open=False)
    done = 0
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            container = client.containers.create(**options)
            container.start()
            container.remove(force=True)
            with lock:
                done += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    return round(done / (time.monotonic() - started), 2)


async def throughput(
    stub: executor_pb2_grpc.ExecutorServiceStub,
    events: Events,
    duration: float,
    inflight: int,
    reuse: bool,
) -> float:
    stop = time.monotonic() + duration
    finished = 0

    async def lane() -> None:
        nonlocal finished
        while time.monotonic() < stop:
            req = request(script="tput", reuse=reuse)
            waiter = events.expect(req.run_id)
            while True:
                try:
                    await stub.Execute(req)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(waiter, 60)
            finished += 1

    started = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    return round(finished / (time.monotonic() - started), 2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--warm", type=int, default=8)
    args = parser.parse_args()
    log("docker exec / docker run baselines")
    baselines = await asyncio.to_thread(docker_baselines, args.samples)
    log(f"baselines: {baselines}")
    with tempfile.TemporaryDirectory(prefix="runbox-sandbox-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = natsd.start(tmp / "nats", preexec_fn=preexec())
        proc, address, token = spawn_executor(tmp, server.url, args)
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            events = Events()
            # An ordered consumer: no acknowledgements for the client to send back.
            await js.subscribe("runbox.events.run.>", cb=events.on_message, ordered_consumer=True)
            async with open_channel(address, token=token) as channel:
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                await wait_warm(stub, args.warm)
                await asyncio.sleep(1.0)
                rss = rss_mb(proc.pid)
                log(f"executor RSS with {args.warm} warm containers: {rss} MB")
                handoffs, e2e = [], []
                for i in range(args.samples + 5):
                    await wait_warm(stub, 1)
                    req = request()
                    waiter = events.expect(req.run_id)
                    sent = time.perf_counter()
                    reply = await stub.Execute(req)
                    finished_at = await asyncio.wait_for(waiter, 60)
                    if i < 5:
                        continue  # warm the channel, the consumer and the executor's paths
                    accepted = reply.accepted_at.ToDatetime().timestamp()
                    handoffs.append(events.started[req.run_id] - accepted)
                    e2e.append(finished_at - sent)
                handoff_p50, handoff_p99 = pct(handoffs)
                e2e_p50, e2e_p99 = pct(e2e)
                log(f"handoff p50 {handoff_p50} ms p99 {handoff_p99} ms; e2e p50 {e2e_p50} ms")
                per_run = await throughput(stub, events, args.duration, args.inflight, False)
                log(f"per-run isolation: {per_run} runs/s")
                reuse = await throughput(stub, events, args.duration, args.inflight, True)
                log(f"reuse isolation: {reuse} runs/s")
        finally:
            await nc.close()
            proc.terminate()
            proc.wait(60)
            server.stop()
    create_concurrency = 2
    churn = await asyncio.to_thread(churn_ceiling, min(args.duration, 30.0), create_concurrency)
    log(f"churn ceiling: {churn} containers/s ({create_concurrency} at a time)")
    summary = {
        "benchmark": "sandbox",
        "samples": args.samples,
        "duration_s": args.duration,
        "inflight": args.inflight,
        "handoff_p50_ms": handoff_p50,
        "handoff_p99_ms": handoff_p99,
        **baselines,
        "noop_e2e_p50_ms": e2e_p50,
        "noop_e2e_p99_ms": e2e_p99,
        "per_run_runs_per_s": per_run,
        "reuse_runs_per_s": reuse,
        "churn_ceiling_per_s": churn,
        "per_run_vs_churn": round(per_run / churn, 3) if churn else None,
        "executor_rss_mb": rss,
        "warm_containers": args.warm,
        "targets": {
            "handoff_p50_ms": 5,
            "handoff_p99_ms": 20,
            "reuse_runs_per_s": 100,
            "per_run_vs_churn": 0.9,
            "executor_rss_mb": 150,
        },
    }
    summary["meets_targets"] = {
        "handoff_p50": handoff_p50 <= 5,
        "handoff_p99": handoff_p99 <= 20,
        "reuse": reuse >= 100,
        "per_run": bool(churn) and per_run >= 0.9 * churn,
        "rss": rss <= 150,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    grpc.aio.init_grpc_aio()
    asyncio.run(main())
