"""Executor benchmark: the executor's own part of a run's round trip, A/B across source trees.

A real executor (`python -m services.executor`, backend local, its own process and SQLite
outbox) on a real nats-server; this process calls Execute for a no-op LOCAL run (the
allow-listed /bin/true, content inline so no catalogue is involved) and waits for the run's
FINISHED event on NATS (a core subscription on the events subjects). --concurrency runs in
flight. Measured per run: the Execute call (send -> answer) and the round trip (send ->
FINISHED seen on NATS); per variant: the executor's CPU (utime + stime from /proc/<pid>/stat
over the measured runs only) divided by the runs.

Each --root is a source tree (a checkout of the repo: the executor is started from it, with
this venv's interpreter); the variants are measured alternately, --rounds times each, in the
same window, so machine noise hits them alike. Progress goes to stderr; the last line on
stdout is one JSON object: per variant, the median over rounds of each figure.

    .venv/bin/python benchmarks/executor.py --root /tmp/base --root . --runs 300 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Before grpc is imported: no fork handlers (why: benchmarks/children.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import nats  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from benchmarks.children import preexec  # noqa: E402
from cli import natsd  # noqa: E402
from cli.stack import ensure_tokens, wait_healthy  # noqa: E402
from runbox.common.v1 import common_pb2  # noqa: E402
from runbox.events.v1 import events_pb2  # noqa: E402
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc  # noqa: E402
from shared.clients import open_channel  # noqa: E402

CONTENT = b"# runs /bin/true\n"


def cpu_s(pid: int) -> float:
    return stat_cpu(pid)[0]


def stat_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of a process and of its reaped children."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def children_cpu_s(pid: int) -> float:
    """CPU seconds of a process's children: those it reaped, and its live ones (a fork
    server, warm shims) with what they reaped (the commands they started)."""
    total = stat_cpu(pid)[1]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += sum(stat_cpu(int(child)))
            except (FileNotFoundError, ProcessLookupError):
                pass  # ended meanwhile
    return total


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def request() -> executor_pb2.ExecuteRequest:
    config = struct_pb2.Struct()
    config.update({"local": {"command": "true"}})
    return executor_pb2.ExecuteRequest(
        run_id=uuid.uuid4().hex,
        attempt=1,
        script_name="noop",
        script_version="1.0.0",
        sha256=hashlib.sha256(CONTENT).hexdigest(),
        execution_type=common_pb2.EXECUTION_TYPE_LOCAL,
        config=config,
        content=CONTENT,
    )


def spawn(root: Path, tmp: Path, nats_url: str, token: str, args: argparse.Namespace) -> Any:
    """The executor from `root`, on a fresh SQLite file, healthy."""
    port = natsd.free_port()
    name = f"{len(list(tmp.glob('executor-*.db')))}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
    env.update(
        PYTHONPATH=str(root),
        RUNBOX_INSTANCE_ID="executor-bench",
        RUNBOX_GRPC__HOST="127.0.0.1",
        RUNBOX_GRPC__PORT=str(port),
        RUNBOX_METRICS__PORT="-1",
        RUNBOX_DATABASE__URL=f"sqlite+aiosqlite:///{tmp / f'executor-{name}.db'}",
        RUNBOX_NATS__URL=nats_url,
        RUNBOX_AUTH__PRINCIPALS_FILE=str(tmp / "principals.json"),
        RUNBOX_AUTH__SERVICE_TOKEN=token,
        RUNBOX_LOG__LEVEL="WARNING",
        RUNBOX_SANDBOX__BACKEND="local",
        RUNBOX_LOCAL__COMMANDS=json.dumps({"true": "/bin/true"}),
        RUNBOX_MAX_CONCURRENT_RUNS=str(max(args.concurrency, 4)),
        RUNBOX_MAX_QUEUED_RUNS=str(args.concurrency * 4),
        RUNBOX_WORK_DIR=str(tmp / f"work-{name}"),
        PYTHONUNBUFFERED="1",
        **dict(kv.split("=", 1) for kv in args.env),
    )
    log_file = tmp / f"executor-{name}.log"
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.executor"],
            env=env,
            stdout=out,
            stderr=out,
            cwd=root,
            preexec_fn=preexec(),
        )
    wait_healthy(f"127.0.0.1:{port}", proc, log_file, 60)
    return proc, f"127.0.0.1:{port}"


def profile(pid: int, root: Path, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    """py-spy on the executor over the measured runs (--py-spy DIR: one raw file a variant)."""
    if args.py_spy is None:
        return None
    args.py_spy.mkdir(parents=True, exist_ok=True)
    out = args.py_spy / f"{root.name}-c{args.concurrency}-{time.time_ns()}.txt"
    spy = Path(sys.executable).parent / "py-spy"
    argv = [str(spy), "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(out)]
    return subprocess.Popen([*argv, "--nonblocking"], stdout=subprocess.DEVNULL)


async def one_variant(
    root: Path, tmp: Path, nats_url: str, token: str, args: argparse.Namespace
) -> dict[str, float]:
    proc, address = await asyncio.to_thread(spawn, root, tmp, nats_url, token, args)
    finished: dict[str, asyncio.Future[float]] = {}

    async def tap(msg: Any) -> None:
        event = events_pb2.RunEvent.FromString(msg.data)
        if event.type == events_pb2.RUN_EVENT_TYPE_FINISHED:
            future = finished.get(event.run_id)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())

    nc = await nats.connect(nats_url)
    await nc.subscribe("runbox.events.run.>", cb=tap)
    executes: list[float] = []
    trips: list[float] = []
    try:
        async with open_channel(address, token=token) as channel:
            stub = executor_pb2_grpc.ExecutorServiceStub(channel)

            async def run_one(record: bool) -> None:
                req = request()
                done = finished[req.run_id] = asyncio.get_running_loop().create_future()
                began = time.perf_counter()
                await stub.Execute(req, timeout=30)
                answered = time.perf_counter()
                end = await asyncio.wait_for(done, 30)
                finished.pop(req.run_id)
                if record:
                    executes.append(answered - began)
                    trips.append(end - began)

            async def lanes(count: int, record: bool) -> None:
                left = [count]

                async def lane() -> None:
                    while left[0] > 0:
                        left[0] -= 1
                        await run_one(record)

                await asyncio.gather(*(lane() for _ in range(args.concurrency)))

            await lanes(max(args.runs // 10, 20), False)
            spy = profile(proc.pid, root, args)
            cpu0, wall0 = cpu_s(proc.pid), time.perf_counter()
            children0 = children_cpu_s(proc.pid)
            await lanes(args.runs, True)
            cpu1, wall1 = cpu_s(proc.pid), time.perf_counter()
            children1 = children_cpu_s(proc.pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                await asyncio.to_thread(spy.wait, 30)
    finally:
        await nc.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    return {
        "execute_p50_ms": p(executes, 0.5),
        "roundtrip_p50_ms": p(trips, 0.5),
        "roundtrip_p99_ms": p(trips, 0.99),
        "cpu_ms_per_run": round((cpu1 - cpu0) * 1000 / args.runs, 2),
        "children_cpu_ms_per_run": round((children1 - children0) * 1000 / args.runs, 2),
        "runs_per_s": round(args.runs / (wall1 - wall0), 1),
    }


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = natsd.start(tmp / "nats", preexec_fn=preexec())
    _, token = ensure_tokens(tmp)
    rounds: dict[str, list[dict[str, float]]] = {str(r): [] for r in args.root}
    try:
        for i in range(args.rounds):
            for root in args.root:
                figures = await one_variant(root, tmp, server.url, token, args)
                print(f"round {i} {root}: {figures}", file=sys.stderr, flush=True)
                rounds[str(root)].append(figures)
    finally:
        server.stop()
    return {
        "concurrency": args.concurrency,
        "runs": args.runs,
        "rounds": args.rounds,
        "variants": {
            root: {k: round(statistics.median(r[k] for r in results), 2) for k in results[0]}
            for root, results in rounds.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--py-spy", type=Path, help="record a py-spy profile per variant here")
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the executor")
    args = parser.parse_args()
    args.root = [r.resolve() for r in (args.root or [ROOT])]
    with tempfile.TemporaryDirectory(prefix="runbox-bench-executor-") as tmp:
        print(json.dumps(asyncio.run(measure(args, Path(tmp)))))


if __name__ == "__main__":
    main()
