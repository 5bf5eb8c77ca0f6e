"""`runbox run` and `runbox runs list|show|cancel|watch` against a real run path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.servicer import SchedulerServicer
from tests.integration.cli.scheduler_stack import Stack, eventually, scheduler_stack

SLOW_LINES = (
    "import time\nfor i in (1, 2):\n    time.sleep(0.5)\n    print(f'line-{i}', flush=True)\n"
)


@pytest.fixture
async def stack(tmp_path: Path, nats_server, tokens, monkeypatch) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    async with scheduler_stack(tmp_path, nats_server, tokens, monkeypatch) as running:
        yield running


async def _submit(stack: Stack, name: str, **labels: str) -> str:
    request = scheduler_pb2.SubmitRunRequest(script=common_pb2.ScriptRef(name=name), labels=labels)
    return (await stack.path.scheduler_stub().SubmitRun(request)).id


async def _terminal(stack: Stack, run_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        run: dict[str, Any] = await stack.cli.json("runs", "show", run_id)
        done = run["state"] in ("RUN_STATE_SUCCEEDED", "RUN_STATE_FAILED", "RUN_STATE_CANCELLED")
        return run if done else None

    return await eventually(probe, f"run {run_id} terminal")


async def test_run_follow_prints_states_and_output_and_exits_with_status(stack: Stack) -> None:
    """`run --follow` streams states to SUCCEEDED with the output; a failing script exits 3."""
    await stack.path.publish("hello", "import sys\nprint('hi', sys.argv[1:])\n")
    await stack.path.publish("fail", "import sys\nprint('oops')\nsys.exit(3)\n")
    result = await stack.cli.ok("run", "hello", "--follow")
    assert "-> SUCCEEDED" in result.stdout and "hi" in result.stdout
    failed = await stack.cli("run", "fail@1.0.0", "--follow")
    assert failed.exit_code == 3, failed.stdout + failed.stderr
    assert "FAILED" in failed.stdout and "oops" in failed.stdout


async def test_run_follow_against_a_scheduler_without_submit_and_watch(
    tmp_path: Path, nats_server: Any, tokens: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler older than SubmitAndWatchRun answers UNIMPLEMENTED: `run --follow` submits
    with SubmitRun and watches with WatchRun instead, and the run is submitted once."""

    async def unimplemented(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        yield  # an async generator, as the real handler is

    monkeypatch.setattr(SchedulerServicer, "SubmitAndWatchRun", unimplemented)
    async with scheduler_stack(tmp_path, nats_server, tokens, monkeypatch) as stack:
        await stack.path.publish("hello", "print('hi')\n")
        result = await stack.cli.ok("run", "hello", "--follow")
        assert "-> SUCCEEDED" in result.stdout and "hi" in result.stdout
        runs = await stack.cli.json("runs", "list", "--script", "hello")
        assert len(runs) == 1 and runs[0]["state"] == "RUN_STATE_SUCCEEDED"


async def test_run_without_follow_prints_pending_run_json(stack: Stack) -> None:
    """`run --json` without --follow prints the submitted run and exits 0 at once."""
    await stack.path.publish("hello", "print('hi')\n")
    submitted = await stack.cli.json("run", "hello")
    assert submitted["script"]["name"] == "hello" and submitted["script_version"] == "1.0.0"


async def test_runs_list_filters_and_pages(stack: Stack) -> None:
    """--script, --label, --state, --since/--until and --limit narrow the list; small pages
    are followed to the end, newest first."""
    await stack.path.publish("many", "print(1)\n")
    await stack.path.publish("other", "print(2)\n")
    ids = [await _submit(stack, "many", batch="odd" if i % 2 else "even") for i in range(3)]
    other = await _submit(stack, "other")
    for run_id in [*ids, other]:
        await _terminal(stack, run_id)

    listed = await stack.cli.json(
        "runs", "list", "--script", "many", "--page-size", "1", "--limit", "0"
    )
    assert [r["id"] for r in listed] == list(reversed(ids))
    limited = await stack.cli.json(
        "runs", "list", "--script", "many", "--page-size", "1", "--limit", "2"
    )
    assert [r["id"] for r in limited] == [ids[2], ids[1]]
    odd = await stack.cli.json("runs", "list", "--label", "batch=odd")
    assert [r["id"] for r in odd] == [ids[1]]
    succeeded = await stack.cli.json("runs", "list", "--state", "succeeded", "--state", "failed")
    assert {r["id"] for r in succeeded} == {*ids, other}
    assert await stack.cli.json("runs", "list", "--state", "pending") == []
    recent = await stack.cli.json("runs", "list", "--since", "1h", "--script", "other")
    assert [r["id"] for r in recent] == [other]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await stack.cli.json("runs", "list", "--since", future) == []
    assert await stack.cli.json("runs", "list", "--until", "2000-01-01T00:00") == []
    table = (await stack.cli.ok("runs", "list", "--script", "other")).stdout
    assert "other" in table and "SUCCEEDED" in table


async def test_runs_show_prints_details(stack: Stack) -> None:
    """`runs show` prints state, exit code and output; --json the run message."""
    await stack.path.publish("hello", "print('shown output')\n")
    run_id = await _submit(stack, "hello")
    run = await _terminal(stack, run_id)
    assert run["state"] == "RUN_STATE_SUCCEEDED" and "duration" in run
    shown = (await stack.cli.ok("runs", "show", run_id)).stdout
    assert run_id in shown and "SUCCEEDED" in shown and "shown output" in shown


async def test_runs_list_prints_whole_ids_in_80_columns(stack: Stack, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A pipe (80 columns, no COLUMNS) gets whole IDs, states and names: the table's lines
    wrap instead, so an ID copied from `runs list` works in `runs show`."""
    monkeypatch.delenv("COLUMNS", raising=False)
    await stack.path.publish("a-rather-long-script-name", "print('x')\n")
    run_id = await _submit(stack, "a-rather-long-script-name")
    await _terminal(stack, run_id)
    table = (await stack.cli.ok("runs", "list")).stdout
    assert "…" not in table, table
    assert run_id in table and "a-rather-long-script-name" in table and "SUCCEEDED" in table
    copied = next(word for word in table.split() if word.startswith(run_id[:8]))
    assert run_id in (await stack.cli.ok("runs", "show", copied)).stdout


async def test_runs_cancel_then_watch_exits_130(stack: Stack) -> None:
    """Cancelling a running run ends it CANCELLED; watching it exits 130 like `run --follow`;
    cancelling it again is FAILED_PRECONDITION, exit 2."""
    await stack.path.publish("long", "import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    run_id = await _submit(stack, "long")

    async def running() -> bool | None:
        return (await stack.cli.json("runs", "show", run_id))[
            "state"
        ] == "RUN_STATE_RUNNING" or None

    await eventually(running, "run RUNNING")
    cancelled = await stack.cli.ok("runs", "cancel", run_id, "--reason", "not needed")
    assert run_id in cancelled.stdout
    watched = await stack.cli("runs", "watch", run_id)
    assert watched.exit_code == 130, watched.stdout + watched.stderr
    assert "CANCELLED" in watched.stdout
    again = await stack.cli("runs", "cancel", run_id)
    assert again.exit_code == 2
    assert "FAILED_PRECONDITION" in again.stderr


async def test_runs_watch_logs_streams_output_and_exits_with_status(stack: Stack) -> None:
    """`runs watch --logs` shows the run's output (live, or its tail if it ended first) and
    its states, and exits with its exit code."""
    await stack.path.publish("slow", SLOW_LINES)
    await stack.path.publish("slowfail", SLOW_LINES + "raise SystemExit(4)\n")
    ok = await stack.cli("runs", "watch", await _submit(stack, "slow"), "--logs")
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert "line-1" in ok.stdout and "line-2" in ok.stdout and "SUCCEEDED" in ok.stdout
    assert ok.stdout.count("line-2") == 1, "live output and the tail were both printed"
    failed = await stack.cli("runs", "watch", await _submit(stack, "slowfail"), "--logs")
    assert failed.exit_code == 4, failed.stdout + failed.stderr
    assert "line-2" in failed.stdout
    as_json = await stack.cli("runs", "watch", await _submit(stack, "slow"), "--json")
    assert as_json.exit_code == 0
    assert '"state": "RUN_STATE_SUCCEEDED"' in as_json.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("runs", "show", "no-such-run"), "NOT_FOUND"),
        (("runs", "watch", "no-such-run"), "NOT_FOUND"),
        (("runs", "cancel", "no-such-run"), "NOT_FOUND"),
        (("run", "no-such-script", "--follow"), "NOT_FOUND"),
        (("runs", "list", "--label", "batch"), "--label 'batch' must be key=value"),
        (("runs", "list", "--since", "yesterday"), "--since 'yesterday'"),
        (("run", "hello", "-p", "name"), "--param 'name' must be key=value"),
    ],
)
async def test_bad_input_exits_2_with_the_reason(
    stack: Stack, args: tuple[str, ...], expected: str
) -> None:
    """Unknown ids and malformed flags exit 2 and say why on stderr."""
    result = await stack.cli(*args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert expected in result.stderr


async def test_run_with_invalid_parameter_prints_the_field(stack: Stack) -> None:
    """A parameter failing its rules is INVALID_ARGUMENT with the parameter's field, exit 2,
    and no run is stored."""
    count = catalogue_pb2.ParameterDefinition(
        name="times",
        type=catalogue_pb2.PARAMETER_TYPE_INTEGER,
        rules=catalogue_pb2.ParameterRules(min_value=1, max_value=3),
    )
    await stack.path.publish("counted", "print(1)\n", params=[count])
    result = await stack.cli("run", "counted", "-p", "times=many")
    assert result.exit_code == 2
    assert "INVALID_ARGUMENT" in result.stderr and "parameters.times" in result.stderr
    assert await stack.cli.json("runs", "list") == []
