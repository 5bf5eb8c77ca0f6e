"""Dispatch through real services: concurrency limits per script and in all, and executors
found through a DNS name."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.executors import ExecutorSet, parse_target
from tests.integration.scheduler.test_runs import submit_request, wait_terminal
from tests.integration.stack import start_run_path

RS = common_pb2
SLOW = "import time\ntime.sleep(0.6)\n"
HELD = (RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING)


async def _held_counts(stub: Any, ids: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run_id, script in ids.items():
        run = await stub.GetRun(scheduler_pb2.GetRunRequest(id=run_id))
        if run.state in HELD:
            counts[script] = counts.get(script, 0) + 1
    return counts


async def test_per_script_limit_holds_back_only_that_script(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """With one run per script at a time, three runs of `busy` go one after another while a
    run of `other` submitted last does not wait behind them."""
    path = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        executor={"max_concurrent_runs": 8},
        scheduler={"max_active_runs_per_script": 1},
    )
    try:
        await path.publish("busy", SLOW)
        await path.publish("other", SLOW)
        stub = path.scheduler_stub()
        ids = {}
        for _ in range(3):
            ids[(await stub.SubmitRun(submit_request("busy"))).id] = "busy"
        other = (await stub.SubmitRun(submit_request("other"))).id
        ids[other] = "other"
        most = 0
        while True:
            counts = await _held_counts(stub, ids)
            most = max(most, counts.get("busy", 0))
            runs = [await stub.GetRun(scheduler_pb2.GetRunRequest(id=i)) for i in ids]
            if all(r.state == RS.RUN_STATE_SUCCEEDED for r in runs):
                break
            await asyncio.sleep(0.05)
        assert most == 1
        busy = sorted((r for r in runs if r.id != other), key=lambda r: r.start_time.ToDatetime())
        for earlier, later in itertools.pairwise(busy):
            assert earlier.finish_time.ToDatetime() <= later.start_time.ToDatetime()
        done_other = next(r for r in runs if r.id == other)
        assert done_other.start_time.ToDatetime() < busy[-1].start_time.ToDatetime()
    finally:
        await path.close()


async def test_submitted_runs_dispatched_without_waiting_for_a_round(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """With the dispatch sweep an hour away, runs submitted one after another and four at
    once reach the executor, each handed over by its SubmitRun (no round), and succeed."""
    path = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        executor={"max_concurrent_runs": 8},
        scheduler={"dispatch_interval_s": 3600},
    )
    try:
        await path.publish("quick", "print('ok')\n")
        stub = path.scheduler_stub()
        first = await stub.SubmitRun(submit_request("quick"))
        assert (await wait_terminal(stub, first.id)).state == RS.RUN_STATE_SUCCEEDED
        together = await asyncio.gather(
            *(stub.SubmitRun(submit_request("quick")) for _ in range(4))
        )
        ended = [await wait_terminal(stub, run.id) for run in together]
        assert [run.state for run in ended] == [RS.RUN_STATE_SUCCEEDED] * 4
        registry = path.scheduler.runtime.registry
        handoffs = "runbox_scheduler_submit_handoffs_total"
        assert registry.get_sample_value(handoffs, {"path": "direct"}) == 5
        assert registry.get_sample_value(handoffs, {"path": "round"}) is None
    finally:
        await path.close()


async def test_global_limit_and_an_override_per_script(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """At most two runs held in all; `solo` at most one even though the default allows two."""
    path = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        executor={"max_concurrent_runs": 8},
        scheduler={
            "max_active_runs": 2,
            "max_active_runs_per_script": 2,
            "script_max_active_runs": {"solo": 1},
        },
    )
    try:
        await path.publish("solo", SLOW)
        await path.publish("pair", SLOW)
        stub = path.scheduler_stub()
        ids = {}
        for name in ("solo", "solo", "pair", "pair", "pair"):
            ids[(await stub.SubmitRun(submit_request(name))).id] = name
        most_total = most_solo = 0
        while True:
            counts = await _held_counts(stub, ids)
            most_total = max(most_total, sum(counts.values()))
            most_solo = max(most_solo, counts.get("solo", 0))
            runs = [await stub.GetRun(scheduler_pb2.GetRunRequest(id=i)) for i in ids]
            if all(r.state == RS.RUN_STATE_SUCCEEDED for r in runs):
                break
            await asyncio.sleep(0.05)
        assert most_total == 2
        assert most_solo == 1
    finally:
        await path.close()


async def test_executors_found_through_a_dns_name(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """With no static list, the scheduler dispatches to what `localhost:<port>` resolves to."""
    path = await start_run_path(tmp_path, nats_server.url, tokens)
    try:
        assert path.executor is not None
        port = path.executor.address.rsplit(":", 1)[1]
        await path.restart_scheduler_with(executors=[], executors_dns=f"localhost:{port}")
        await path.publish("hello", "print('via dns')\n")
        stub = path.scheduler_stub()
        run = await stub.SubmitRun(submit_request("hello"))
        final = await wait_terminal(stub, run.id)
        assert final.state == RS.RUN_STATE_SUCCEEDED
        assert final.output.stdout == b"via dns\n"
    finally:
        await path.close()


async def test_executor_set_follows_dns_and_keeps_vanished_ones_for_cancel() -> None:
    executors = ExecutorSet(["10.0.0.9:1"], dns_target="localhost:50999")
    try:
        await executors.refresh()
        active = [e.address for e in executors.active()]
        assert active[0] == "10.0.0.9:1"
        assert "127.0.0.1:50999" in active
        executors._dns = ("name.invalid", 50999)  # stops resolving: the last set is kept
        await executors.refresh()
        assert "127.0.0.1:50999" in [e.address for e in executors.active()]
        assert "127.0.0.1:50999" in executors and "10.0.0.9:1" in executors
    finally:
        await executors.close()


def test_dns_target_needs_a_port() -> None:
    assert parse_target("executor.svc:50052") == ("executor.svc", 50052)
    assert parse_target("[::1]:7") == ("::1", 7)
    for bad in ("executor.svc", ":50052", "host:0", "host:x"):
        try:
            parse_target(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")
