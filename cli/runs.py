"""`runbox run` and `runbox runs ...`: submit, list, inspect, cancel, watch and replay runs.

`run --follow` submits and watches in one call (SubmitAndWatchRun; SubmitRun then WatchRun
against a scheduler older than that call), `runs watch` watches with WatchRun; both print the
stream through one loop, so they show the same state changes and exit with the same code for
the same run.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import grpc
import typer
from google.protobuf import struct_pb2, timestamp_pb2
from pydantic import TypeAdapter, ValidationError

from cli import config as cli_config
from cli import manifest as mf
from cli import render
from cli.rpc import call, fail, up_to
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from shared.clients import open_channel

app = typer.Typer(help="Inspect, cancel, watch and replay runs.", no_args_is_help=True)
Stub = scheduler_pb2_grpc.SchedulerServiceStub
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Params = Annotated[
    list[str] | None, typer.Option("--param", "-p", help="Parameter key=value (repeatable).")
]
TERMINAL = {
    common_pb2.RUN_STATE_SUCCEEDED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_TIMED_OUT,
    common_pb2.RUN_STATE_CANCELLED,
    common_pb2.RUN_STATE_LOST,
}
# Largest page the scheduler serves.
MAX_PAGE = 500
State = enum.StrEnum(  # type: ignore[misc]
    "State",
    {
        value.name.removeprefix("RUN_STATE_").lower(): value.name.removeprefix("RUN_STATE_").lower()
        for value in common_pb2.RunState.DESCRIPTOR.values
        if value.number
    },
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SHORT_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION = TypeAdapter(mf.Duration)


def pairs(flag: str, given: list[str] | None) -> dict[str, str]:
    """`key=value` options; the value may itself contain '='."""
    values: dict[str, str] = {}
    for pair in given or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"{flag} {pair!r} must be key=value")
        values[key] = value
    return values


def parameters(given: list[str] | None) -> struct_pb2.Struct:
    """`--param` values as strings; the catalogue coerces them to the parameters' types."""
    values = struct_pb2.Struct()
    values.update(pairs("--param", given))
    return values


def duration(flag: str, text: str) -> timedelta:
    """15m, 2h, 1d, 1w, or what a manifest takes (30s, 1.5s, PT2M, a number of seconds)."""
    short = _SHORT_DURATION.fullmatch(text.strip())
    try:
        if short:
            return timedelta(seconds=float(short[1]) * _UNIT_SECONDS[short[2]])
        return _DURATION.validate_python(text)
    except OverflowError:
        raise fail(f"{flag} {text!r}: too long") from None
    except ValidationError:
        raise fail(f"{flag} {text!r}: not a duration (e.g. 30s, 15m, 2h, 1d, PT2M)") from None


def instant(flag: str, text: str) -> datetime:
    """An ISO 8601 time (no offset: this machine's zone) or a duration meaning that long ago."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if not _SHORT_DURATION.fullmatch(text.strip()):
            raise fail(
                f"{flag} {text!r}: expected an ISO 8601 time (2026-01-31T08:00) or an age (2h)"
            ) from None
        return datetime.now(UTC) - duration(flag, text)
    return moment if moment.tzinfo else moment.astimezone()


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp (UTC)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def script_ref(ref: str) -> common_pb2.ScriptRef:
    name, _, version = ref.partition("@")
    return common_pb2.ScriptRef(name=name, version=version)


def exit_status(run: scheduler_pb2.Run) -> int:
    """The CLI's exit code for a finished run: 0, the script's own code, 124 timed out,
    130 cancelled, 1 otherwise."""
    if run.state == common_pb2.RUN_STATE_SUCCEEDED:
        return 0
    if run.state == common_pb2.RUN_STATE_FAILED and 0 < run.exit.exit_code < 256:
        return run.exit.exit_code
    return {common_pb2.RUN_STATE_TIMED_OUT: 124, common_pb2.RUN_STATE_CANCELLED: 130}.get(
        run.state, 1
    )


async def follow(
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
    run_id: str,
    *,
    as_json: bool,
    logs: bool = False,
) -> scheduler_pb2.Run:
    """Watch a run until it is terminal (`show_stream`); the final run."""
    request = scheduler_pb2.WatchRunRequest(id=run_id, include_logs=logs)
    return await show_stream(stub, stub.WatchRun(request), as_json=as_json, logs=logs)


async def show_stream(
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
    updates: AsyncIterable[scheduler_pb2.WatchRunResponse],
    *,
    as_json: bool,
    logs: bool = False,
    on_first: Callable[[scheduler_pb2.Run], None] | None = None,
) -> scheduler_pb2.Run:
    """Show a run's stream until it is terminal: state changes on stdout and, with logs, its
    output on stdout/stderr as it comes (`on_first`: given the first run, before anything is
    shown); then return the final run (read back if the stream ended before the run)."""
    last: scheduler_pb2.Run | None = None
    streamed: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    async for update in updates:
        if update.HasField("log"):
            stream = "stderr" if update.log.stream == "stderr" else "stdout"
            streamed[stream] += update.log.data
            if not as_json:
                _write(stream, update.log.data)
            continue
        if last is None and on_first is not None:
            on_first(update.run)
        if (last is None or update.run.state != last.state) and not as_json:
            render.console.print(f"  -> {render.state_name(update.run.state)}")
        last = update.run
        if last.state in TERMINAL:
            break
    if last is None:
        raise fail("the run's stream ended before its first message")
    if last.state not in TERMINAL:
        last = await stub.GetRun(scheduler_pb2.GetRunRequest(id=last.id))
    if logs and not as_json:
        _rest_of_output(last, streamed)
    return last


async def submit_and_watch(
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, request: scheduler_pb2.SubmitRunRequest
) -> AsyncIterator[scheduler_pb2.WatchRunResponse]:
    """The run's stream from SubmitAndWatchRun; from a scheduler older than that call (0.2.0
    answers UNIMPLEMENTED before any message, so nothing was submitted), SubmitRun then
    WatchRun, the same messages in two calls."""
    started = False
    try:
        async for update in stub.SubmitAndWatchRun(
            scheduler_pb2.SubmitAndWatchRunRequest(submit=request)
        ):
            started = True
            yield update
        return
    except grpc.aio.AioRpcError as exc:
        if started or exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    run = await stub.SubmitRun(request)
    async for update in stub.WatchRun(scheduler_pb2.WatchRunRequest(id=run.id)):
        yield update


def _write(stream: str, data: bytes) -> None:
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write(data.decode(errors="replace"))
    out.flush()


def _rest_of_output(run: scheduler_pb2.Run, streamed: dict[str, bytes]) -> None:
    """Live output is best effort (the last lines may come only with the run's end, a slow
    watcher drops some): complete it from the run's kept output, or show that instead."""
    kept = {"stdout": run.output.stdout, "stderr": run.output.stderr}
    if run.output.truncated or any(not kept[s].startswith(streamed[s]) for s in kept):
        render.console.print("[yellow](live output incomplete; the run's kept output:)[/]")
        render.print_output(run)
        return
    for stream, data in kept.items():
        _write(stream, data[len(streamed[stream]) :])


def show_final(run: scheduler_pb2.Run, *, as_json: bool, output: bool = True) -> None:
    if as_json:
        render.print_json(render.to_dict(run))
    elif output:
        render.print_run(run)
    else:
        render.console.print(
            f"run {run.id} {render.state_name(run.state)}"
            + (f" exit code {run.exit.exit_code}" if run.state in TERMINAL else "")
        )


def run_and_follow(ref: str, params: list[str], *, as_json: bool, follow_run: bool = True) -> int:
    """Submit a run; when following, wait for it and return its exit status."""
    request = scheduler_pb2.SubmitRunRequest(script=script_ref(ref), parameters=parameters(params))

    def submitted(run: scheduler_pb2.Run) -> None:
        if not as_json:
            render.console.print(
                f"submitted run [bold]{run.id}[/] ({run.script.name}@{run.script_version})"
            )

    async def go(cfg: cli_config.ClientConfig) -> int:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            stub = Stub(channel)
            if not follow_run:
                run = await stub.SubmitRun(request)
                submitted(run)
                if as_json:
                    render.print_json(render.to_dict(run))
                return 0
            updates = submit_and_watch(stub, request)
            run = await show_stream(stub, updates, as_json=as_json, on_first=submitted)
            show_final(run, as_json=as_json)
            return exit_status(run)

    return call(go)


def run_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (exact, latest or range).")],
    param: Params = None,
    follow_run: Annotated[
        bool, typer.Option("--follow", "-f", help="Wait and show output.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a run; with --follow, stream its state and exit with its status."""
    raise typer.Exit(run_and_follow(ref, param or [], as_json=as_json, follow_run=follow_run))


@app.command("list")
def list_cmd(
    script: Annotated[str, typer.Option(help="Only runs of this script.")] = "",
    schedule: Annotated[str, typer.Option(help="Only runs fired by this schedule id.")] = "",
    state: Annotated[list[State] | None, typer.Option(help="Run state (repeatable).")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Label key=value; runs having all (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Created at or after: ISO 8601 time or an age (2h).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Created before: ISO 8601 time or an age (30m).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs (0: all).", min=0)] = 20,
    page_size: Annotated[int, typer.Option(hidden=True, min=1, max=MAX_PAGE)] = MAX_PAGE,
    as_json: JsonFlag = False,
) -> None:
    """List runs, newest first, following page tokens until LIMIT runs or the end."""
    request = scheduler_pb2.ListRunsRequest(
        script_name=script,
        schedule_id=schedule,
        states=[f"RUN_STATE_{s.value.upper()}" for s in state or []],
        labels=pairs("--label", label),
    )
    if since is not None:
        request.created_after.CopyFrom(timestamp(instant("--since", since)))
    if until is not None:
        request.created_before.CopyFrom(timestamp(instant("--until", until)))

    async def go(cfg: cli_config.ClientConfig) -> list[scheduler_pb2.Run]:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await up_to(Stub(channel).ListRuns, request, "runs", limit, page_size)

    runs = call(go)
    if as_json:
        render.print_json([render.to_dict(r) for r in runs])
    else:
        if runs:
            render.print_table(render.runs_table(runs))
        else:
            render.console.print("no runs found")


@app.command("show")
def show_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id.")], as_json: JsonFlag = False
) -> None:
    """Show one run: state, exit code, duration, output tail."""

    async def go(cfg: cli_config.ClientConfig) -> scheduler_pb2.Run:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await Stub(channel).GetRun(scheduler_pb2.GetRunRequest(id=run_id))

    show_final(call(go), as_json=as_json)


@app.command("cancel")
def cancel_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the run).")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Cancel a run: a PENDING one at once, a running one through its executor."""

    async def go(cfg: cli_config.ClientConfig) -> scheduler_pb2.Run:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            request = scheduler_pb2.CancelRunRequest(id=run_id, reason=reason)
            return await Stub(channel).CancelRun(request)

    run = call(go)
    if as_json:
        render.print_json(render.to_dict(run))
    else:
        render.console.print(f"run {run.id} is {render.state_name(run.state)}")


@app.command("watch")
def watch_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    logs: Annotated[bool, typer.Option("--logs", help="Also stream live output.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Follow a run's state changes until it ends; exit with its status like `run --follow`."""

    async def go(cfg: cli_config.ClientConfig) -> scheduler_pb2.Run:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await follow(Stub(channel), run_id, as_json=as_json, logs=logs)

    run = call(go)
    # With --logs the output is shown already; the tail would repeat it.
    show_final(run, as_json=as_json, output=not logs)
    raise typer.Exit(exit_status(run))


@app.command("replay")
def replay_cmd(
    run_id: Annotated[str, typer.Argument(help="Id of the dead-lettered run.")],
    version: Annotated[
        str, typer.Option(help="Version selector instead of the pinned version.")
    ] = "",
    param: Params = None,
    idempotency_key: Annotated[
        str, typer.Option(help="Replaying again with this key returns the first replay.")
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Re-submit a dead-lettered run; --param replaces all of its parameters."""
    request = scheduler_pb2.ReplayDeadLetterRequest(
        run_id=run_id, version=version, idempotency_key=idempotency_key
    )
    if param:
        request.parameters.CopyFrom(parameters(param))

    async def go(cfg: cli_config.ClientConfig) -> scheduler_pb2.Run:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await Stub(channel).ReplayDeadLetter(request)

    run = call(go)
    if as_json:
        render.print_json(render.to_dict(run))
    else:
        render.console.print(
            f"replayed {run_id} as run [bold]{run.id}[/] ({run.script.name}@{run.script_version})"
        )
