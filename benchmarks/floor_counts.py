"""How many of each primitive one run uses: the counts benchmarks/floor.py multiplies its
per-primitive costs by (its RUN_COUNTS), measured on a real round trip.

The round trip of benchmarks/scheduler.py (catalogue, executor with backend local running
/bin/true through its fork server, scheduler, each its own process on the services' default
event loop (uvloop); SQLite; a real nats-server), --runs no-op runs at --in-flight at a time
(default 1) after warm-up runs, with each service's /metrics endpoint on. Over the measured
runs, divided by their number:

- RPCs each service served (runbox_<svc>_rpc_requests_total by method; Execute is the unary
  fallback, 0 while the run link is up) and the WatchRun messages the client received. The
  client's call is `submit_and_watch` below, SubmitAndWatchRun as benchmarks/scheduler.py's
  client makes it (one stream carrying the submitted run and its states; counted as a
  WatchRun stream, SubmitRun 0);
- the run link (ExecutorService.Link, one long-lived stream per scheduler replica and
  executor): messages each way and what they carried, counted at the executor's end
  (scheduler -> executor: LinkRequests with their Executes and acks; executor -> scheduler:
  LinkResponses with their Execute answers and the linked runs' events);
- SQLite transactions per service: the scheduler's per-run ones through
  shared.db_transactions (runbox_db_core_transactions_total: on the loop's sqlite3
  connection, or in its thread when the file was locked; group commit makes one of several
  writes that arrive together) and its SQLAlchemy sessions' (runbox_db_pool_checkouts_total:
  the background loops); statements by kind (runbox_db_query_duration_seconds_count);
- the executor's outbox writer calls (its own sqlite3 connection, not SQLAlchemy, so not in
  the metrics): the executor runs under this file's `--executor-probe`, which counts
  SqliteOutboxWriter.insert_now (a commit on the loop), insert (a commit in its thread) and
  created_at (a lookup in its thread), and Links.serve's messages, then runs
  `services.executor` unchanged (it has imported this file's modules first: start-up only);
- JetStream: messages added to the stream, RunEvents published by type and by service
  (SUBMITTED is the scheduler's, the rest the executor's; a core subscription on the
  subjects), and messages delivered to each durable consumer (the scheduler applies STARTED
  and FINISHED from the link; its consumer gets only those not acked within the hold);
- spawns (runbox_executor_runs_total);
- CPU (utime + stime) per run of each service, of the executor's children (fork server and
  the runs' processes) and of nats-server, and each service's CPU per second while idle
  (before the runs: timers, sweeps, pull renewals), which a run at 1 in flight pays a share of.

`counts` holds the figures under floor.py's RUN_COUNTS keys; `floor.py --counts FILE` takes
such a line (the JSON object) instead of its built-in counts. One JSON line on stdout.

    .venv/bin/python benchmarks/floor_counts.py [--runs 100] [--in-flight 1] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import runpy
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import nats  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from benchmarks import scheduler as bench  # noqa: E402
from benchmarks.children import preexec  # noqa: E402
from cli import natsd  # noqa: E402
from cli.stack import ensure_tokens  # noqa: E402
from runbox.events.v1 import events_pb2  # noqa: E402
from runbox.scheduler.v1 import scheduler_pb2 as pb  # noqa: E402
from runbox.scheduler.v1 import scheduler_pb2_grpc  # noqa: E402
from shared.clients import open_channel  # noqa: E402

SERVICES = ("catalogue", "scheduler", "executor")
IDLE_S = 5.0
# What the executor probe counts; how often it writes them to its file.
PROBE_KEYS = (
    "commits_loop",
    "commits_thread",
    "rows",
    "lookups",
    "link_requests",
    "link_executes",
    "link_acks",
    "link_responses",
    "link_answers",
    "link_events",
)
PROBE_SAVE_S = 0.25


def log(message: str) -> None:
    print(f"[floor-counts] {message}", file=sys.stderr, flush=True)


# --- the executor under a probe -------------------------------------------------------------


def executor_probe(out: str) -> None:
    """Run services.executor with its outbox writer's calls and its run links' messages
    counted into the file `out` (written every PROBE_SAVE_S by a thread of the probe's own,
    and at each call before the first run: not a file write per counted call)."""
    from services.executor import link, outbox_writer

    counts = dict.fromkeys(PROBE_KEYS, 0)
    writer = outbox_writer.SqliteOutboxWriter
    insert, insert_now, created_at = writer.insert, writer.insert_now, writer.created_at
    serve = link.Links.serve

    def save() -> None:
        Path(out + ".tmp").write_text(json.dumps(counts))
        os.replace(out + ".tmp", out)

    def keep_saving() -> None:
        while True:
            time.sleep(PROBE_SAVE_S)
            save()

    async def counted_insert(self: Any, messages: Any) -> None:
        counts["commits_thread"] += 1
        counts["rows"] += len(messages)
        await insert(self, messages)

    def counted_insert_now(self: Any, messages: Any) -> bool:
        # A commit made on the loop (True); False wrote nothing (insert follows, counted).
        done: bool = insert_now(self, messages)
        if done:
            counts["commits_loop"] += 1
            counts["rows"] += len(messages)
        return done

    async def counted_created_at(self: Any, msg_id: str) -> Any:
        counts["lookups"] += 1
        return await created_at(self, msg_id)

    async def counted_serve(
        self: Any, requests: AsyncIterator[Any], accept: Any, executor_id: str
    ) -> AsyncIterator[Any]:
        async def counted_requests() -> AsyncIterator[Any]:
            async for request in requests:
                counts["link_requests"] += 1
                counts["link_executes"] += len(request.executes)
                counts["link_acks"] += len(request.acks)
                yield request

        async for response in serve(self, counted_requests(), accept, executor_id):
            counts["link_responses"] += 1
            counts["link_answers"] += len(response.answers)
            counts["link_events"] += len(response.events)
            yield response

    writer.insert = counted_insert  # type: ignore[method-assign]
    writer.insert_now = counted_insert_now  # type: ignore[method-assign]
    writer.created_at = counted_created_at  # type: ignore[method-assign]
    link.Links.serve = counted_serve  # type: ignore[method-assign]
    save()
    threading.Thread(target=keep_saving, name="floor-counts-probe", daemon=True).start()
    sys.argv = ["services.executor"]
    runpy.run_module("services.executor", run_name="__main__", alter_sys=True)


# --- what is counted ------------------------------------------------------------------------


def scrape(port: int) -> Counter[str]:
    """Every counter and histogram count of a /metrics endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_sum", "_created")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


async def jetstream_counts(js: Any) -> Counter[str]:
    out: Counter[str] = Counter()
    for stream in await js.streams_info():
        out[f"stream {stream.config.name} messages"] = stream.state.messages
        for consumer in await js.consumers_info(stream.config.name):
            out[f"consumer {consumer.name} delivered"] = consumer.delivered.consumer_seq
    return out


def per_run(after: Counter[str], before: Counter[str], runs: int) -> dict[str, float]:
    return {
        key: round((after[key] - before[key]) / runs, 3)
        for key in sorted(after)
        if after[key] != before[key]
    }


def floor_counts(
    metrics: dict[str, dict[str, float]],
    probe: dict[str, float],
    events: dict[str, float],
    watch_messages: float,
    consumed: dict[str, float],
) -> dict[str, float]:
    """The measured figures under floor.py's RUN_COUNTS keys."""

    def rpc(service: str, method: str) -> float:
        # Keys end with the method label (labels are sorted: code, then method).
        return sum(
            v
            for k, v in metrics[service].items()
            if k.startswith(f"runbox_{service}_rpc_requests_total") and k.endswith(f"/{method}}}")
        )

    def checkouts(service: str) -> float:
        return sum(
            v for k, v in metrics[service].items() if k.startswith("runbox_db_pool_checkouts_total")
        )

    def core(service: str) -> float:
        return sum(
            v
            for k, v in metrics[service].items()
            if k.startswith("runbox_db_core_transactions_total")
        )

    submitted = events.get("RUN_EVENT_TYPE_SUBMITTED", 0.0)
    return {
        "rpc_submitrun": rpc("scheduler", "SubmitRun"),
        "rpc_watchrun_streams": rpc("scheduler", "WatchRun")
        + rpc("scheduler", "SubmitAndWatchRun"),
        "rpc_watchrun_messages": round(watch_messages, 3),
        "rpc_resolveversion": rpc("catalogue", "ResolveVersion"),
        "rpc_execute": rpc("executor", "Execute"),
        "link_messages_to_executor": probe["link_requests"],
        "link_messages_to_scheduler": probe["link_responses"],
        "jetstream_publishes_scheduler": submitted,
        "jetstream_publishes_executor": round(sum(events.values()) - submitted, 3),
        "jetstream_consumptions_scheduler": consumed.get("consumer scheduler delivered", 0.0),
        "sqlite_transactions_scheduler_core": core("scheduler"),
        "sqlite_transactions_scheduler_orm": checkouts("scheduler"),
        "sqlite_transactions_executor_raw": probe["commits_loop"],
        "sqlite_transactions_executor_raw_thread": round(
            probe["commits_thread"] + probe["lookups"], 3
        ),
        "sqlite_transactions_executor_orm": checkouts("executor"),
        "spawns": sum(
            v for k, v in metrics["executor"].items() if k.startswith("runbox_executor_runs_total")
        ),
    }


# --- the round trip -------------------------------------------------------------------------


async def submit_and_watch(
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, request: pb.SubmitRunRequest
) -> AsyncIterator[pb.WatchRunResponse]:
    """The round trip's client call, as benchmarks/scheduler.py's: SubmitAndWatchRun, the
    submitted run then its states until it ends, on one stream."""
    watch = pb.SubmitAndWatchRunRequest(submit=request)
    async for reply in stub.SubmitAndWatchRun(watch, timeout=60):
        yield reply


class Watcher:
    """SubmitRun -> SUCCEEDED (`submit_and_watch`), counting the streamed messages."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub) -> None:
        self._stub = stub
        self._request = pb.SubmitRunRequest(script=bench.common_pb2.ScriptRef(name=bench.SCRIPT))
        self.messages = 0

    async def one(self) -> float:
        started = time.perf_counter()
        async for reply in submit_and_watch(self._stub, self._request):
            self.messages += 1
            if reply.HasField("run") and bench.sm.is_terminal(reply.run.state):
                if reply.run.state != bench.RS.RUN_STATE_SUCCEEDED:
                    name = bench.RS.Name(reply.run.state)
                    raise RuntimeError(f"run {reply.run.id}: {name}")
                return time.perf_counter() - started
        raise RuntimeError("the run's stream ended before the run did")


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = natsd.start(tmp / "nats", preexec_fn=preexec())
    admin_file, service_token = ensure_tokens(tmp)
    env = bench.Env(tmp, server.url, admin_file.read_text().strip(), service_token, part="counts")
    ports = {name: natsd.free_port() for name in SERVICES}
    probe_file = tmp / "executor-probe.json"
    most = max(args.in_flight, 32)
    try:
        catalogue = await env.spawn(
            "catalogue",
            RUNBOX_BLOB_DIR=str(tmp / "blobs"),
            RUNBOX_METRICS__PORT=str(ports["catalogue"]),
        )
        await bench.publish_noop(catalogue.address, env.admin)
        executor = await env.spawn(
            "executor",
            command=[__file__, "--executor-probe", str(probe_file)],
            RUNBOX_CATALOGUE__ADDRESS=catalogue.address,
            RUNBOX_SANDBOX__BACKEND="local",
            RUNBOX_LOCAL__COMMANDS=json.dumps({"true": "/bin/true"}),
            # As benchmarks/scheduler.py's round trip sizes it (its most in flight, 32).
            RUNBOX_MAX_CONCURRENT_RUNS=str(most),
            RUNBOX_MAX_QUEUED_RUNS=str(most * 4),
            RUNBOX_WORK_DIR=str(tmp / "work"),
            RUNBOX_METRICS__PORT=str(ports["executor"]),
        )
        scheduler = await env.spawn(
            "scheduler",
            RUNBOX_CATALOGUE__ADDRESS=catalogue.address,
            RUNBOX_EXECUTORS=json.dumps([executor.address]),
            RUNBOX_METRICS__PORT=str(ports["scheduler"]),
        )
        services = [catalogue, scheduler, executor]
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        events: Counter[str] = Counter()

        async def tap(msg: Any) -> None:
            kind = events_pb2.RunEvent.FromString(msg.data).type
            events[events_pb2.RunEventType.Name(kind)] += 1

        async with open_channel(scheduler.address, token=env.admin) as channel:
            watcher = Watcher(scheduler_pb2_grpc.SchedulerServiceStub(channel))
            await bench.lanes(bench.warmup(args.runs), args.in_flight, watcher.one)
            await asyncio.sleep(1)  # the warm-up's last events are applied
            log(f"idle {IDLE_S} s")
            idle0 = bench.services_cpu(services)
            await asyncio.sleep(IDLE_S)
            idle1 = bench.services_cpu(services)
            await nc.subscribe(f"{bench.PREFIX}.run.>", cb=tap)
            metrics0 = {name: scrape(port) for name, port in ports.items()}
            js0, probe0 = await jetstream_counts(js), json.loads(probe_file.read_text())
            cpu0, nats0 = bench.services_cpu(services), bench.proc_cpu(server.process.pid)[0]
            watcher.messages = 0
            log(f"{args.runs} runs, {args.in_flight} in flight")
            began, client0 = time.perf_counter(), time.process_time()
            samples = await bench.lanes(args.runs, args.in_flight, watcher.one)
            elapsed, client1 = time.perf_counter() - began, time.process_time()
            cpu1, nats1 = bench.services_cpu(services), bench.proc_cpu(server.process.pid)[0]
            await asyncio.sleep(1)  # acks, marks and the relay's last writes
            metrics1 = {name: scrape(port) for name, port in ports.items()}
            js1, probe1 = await jetstream_counts(js), json.loads(probe_file.read_text())
        await nc.close()
    finally:
        env.stop_all()
        server.stop()
    runs = args.runs
    metrics = {name: per_run(metrics1[name], metrics0[name], runs) for name in SERVICES}
    probe = {k: round((probe1[k] - probe0[k]) / runs, 3) for k in probe1}
    event_counts = {k: round(v / runs, 3) for k, v in sorted(events.items())}
    consumed = per_run(js1, js0, runs)
    return {
        "benchmark": "floor_counts",
        "runs": runs,
        "in_flight": args.in_flight,
        "roundtrip_p50_ms": bench.pct(samples, 1000)[0],
        "runs_per_s": round(runs / elapsed, 1),
        "counts": floor_counts(metrics, probe, event_counts, watcher.messages / runs, consumed),
        "cpu_ms_per_run": {k: round(1000 * (cpu1[k] - cpu0[k]) / runs, 2) for k in cpu0},
        "nats_server_cpu_ms_per_run": round(1000 * (nats1 - nats0) / runs, 2),
        # This process: the client's calls and the events tap (a core subscription).
        "client_cpu_ms_per_run": round(1000 * (client1 - client0) / runs, 2),
        "idle_cpu_ms_per_s": {k: round(1000 * (idle1[k] - idle0[k]) / IDLE_S, 2) for k in idle0},
        "executor_outbox_writer_per_run": {
            k: probe[k] for k in ("commits_loop", "commits_thread", "rows", "lookups")
        },
        "run_link_per_run": {k: v for k, v in probe.items() if k.startswith("link_")},
        "run_events_per_run": event_counts,
        "jetstream_per_run": consumed,
        "metrics_per_run": metrics,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="measured runs; default 100 (--smoke: 20)")
    parser.add_argument("--in-flight", type=int, default=1, help="runs at a time; default 1")
    parser.add_argument("--smoke", action="store_true", help="a small size, for tests")
    parser.add_argument("--executor-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 20 if args.smoke else 100
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if args.in_flight < 1:
        parser.error("--in-flight: at least 1")
    return args


def main() -> None:
    args = parse()
    if args.executor_probe:
        executor_probe(args.executor_probe)
        return
    grpc.aio.init_grpc_aio()
    with tempfile.TemporaryDirectory(prefix="runbox-floor-counts-") as tmp_name:
        line = asyncio.run(measure(args, Path(tmp_name)))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
