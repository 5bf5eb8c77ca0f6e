"""The `runbox` command line: a local stack, scripts and runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf import struct_pb2

from cli import config as cli_config
from cli import publish, render, rpc, scripts, templates
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from shared.clients import open_channel

app = typer.Typer(help="Runbox: register scripts, run them in sandboxes.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect runs.", no_args_is_help=True)
app.add_typer(scripts.app, name="script")
app.add_typer(templates.app, name="template")
app.add_typer(runs_app, name="runs")

T = TypeVar("T")
TERMINAL = {
    common_pb2.RUN_STATE_SUCCEEDED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_TIMED_OUT,
    common_pb2.RUN_STATE_CANCELLED,
    common_pb2.RUN_STATE_LOST,
}


def _call(fn: Callable[[cli_config.ClientConfig], Coroutine[Any, Any, T]]) -> T:
    """Run one async client action with config loading and error reporting."""
    return rpc.call(fn)


def _parse_ref(ref: str) -> common_pb2.ScriptRef:
    name, _, version = ref.partition("@")
    return common_pb2.ScriptRef(name=name, version=version)


def _parse_params(pairs: list[str]) -> struct_pb2.Struct:
    values = struct_pb2.Struct()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            render.err_console.print(f"[red]error:[/] parameter {pair!r} must be key=value")
            raise typer.Exit(2)
        values[key] = value
    return values


@app.command()
def up(
    var: Annotated[Path, typer.Option(help="State directory (SQLite, blobs, logs).")] = Path("var"),
    base_port: Annotated[int, typer.Option(help="First gRPC port (0 = free ports).")] = 0,
    demo: Annotated[bool, typer.Option(help="Push examples/hello.py and run it once.")] = False,
) -> None:
    """Start a local stack: nats-server + the four services, until Ctrl-C."""
    from cli import stack as dev_stack

    render.console.print(f"[bold]starting Runbox[/] (state in {var})")
    running = dev_stack.up(var, base_port=base_port, say=render.console.print)
    render.console.print(f"  nats       {running.nats.url}")
    render.console.print(f"  admin token in [bold]{running.admin_token_file}[/]")
    render.console.print(f"  CLI config in [bold]{running.var / 'runbox.json'}[/]")
    try:
        if demo:
            _demo()
        render.console.print(
            "\nTry, from this directory in another shell:\n"
            "  runbox script push examples/hello.py --name hello --version 1.0.1 --params examples/hello.params.json\n"
            "  runbox run hello --follow -p name=you\n"
            "  runbox runs list\n"
            "[dim]Ctrl-C stops everything.[/]"
        )
        while all(p.poll() is None for p in running.processes.values()):
            time.sleep(0.5)
        render.err_console.print("[red]a service exited; stopping (see var/logs)[/]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        render.console.print("\nstopping...")
    finally:
        running.stop()
        render.console.print("stopped.")


def _demo() -> None:
    hello = Path("examples/hello.py")
    render.console.print("\n[bold]demo:[/] pushing examples/hello.py as hello@1.0.0 and running it")
    plan = publish.plan_push(
        hello, name="hello", version="1.0.0", params_file=hello.with_suffix(".params.json")
    )
    publish.push_version(plan, exist_ok=True)
    code = _run_and_follow("hello@1.0.0", ["name=Runbox"], as_json=False)
    render.console.print(f"[bold]demo run exit status {code}[/]")


def _exit_status(run: scheduler_pb2.Run) -> int:
    """The CLI's exit code for a finished run."""
    if run.state == common_pb2.RUN_STATE_SUCCEEDED:
        return 0
    if run.state == common_pb2.RUN_STATE_FAILED and 0 < run.exit.exit_code < 256:
        return run.exit.exit_code
    return {common_pb2.RUN_STATE_TIMED_OUT: 124, common_pb2.RUN_STATE_CANCELLED: 130}.get(
        run.state, 1
    )


def _run_and_follow(ref: str, params: list[str], *, as_json: bool, follow: bool = True) -> int:
    async def go(cfg: cli_config.ClientConfig) -> int:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            run = await stub.SubmitRun(
                scheduler_pb2.SubmitRunRequest(
                    script=_parse_ref(ref), parameters=_parse_params(params)
                )
            )
            if not as_json:
                render.console.print(
                    f"submitted run [bold]{run.id}[/] ({run.script.name}@{run.script_version})"
                )
            if not follow:
                if as_json:
                    render.print_json(render.to_dict(run))
                return 0
            last = run.state
            async for update in stub.WatchRun(scheduler_pb2.WatchRunRequest(id=run.id)):
                if update.HasField("run"):
                    run = update.run
                    if run.state != last and not as_json:
                        render.console.print(f"  -> {render.state_name(run.state)}")
                    last = run.state
                    if run.state in TERMINAL:
                        break
            run = await stub.GetRun(scheduler_pb2.GetRunRequest(id=run.id))
            if as_json:
                render.print_json(render.to_dict(run))
            else:
                render.print_run(run)
            return _exit_status(run)

    return _call(go)


@app.command("run")
def run_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (exact, latest or range).")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait and show output.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Submit a run; with --follow, stream its state and exit with its status."""
    code = _run_and_follow(ref, param or [], as_json=as_json, follow=follow)
    raise typer.Exit(code)


@runs_app.command("list")
def runs_list(
    script: Annotated[str, typer.Option(help="Only runs of this script.")] = "",
    limit: Annotated[int, typer.Option(help="Page size.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List recent runs, newest first."""

    async def go(cfg: cli_config.ClientConfig) -> list[scheduler_pb2.Run]:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            reply = await stub.ListRuns(
                scheduler_pb2.ListRunsRequest(script_name=script, page_size=limit)
            )
            return list(reply.runs)

    runs = _call(go)
    if as_json:
        render.print_json([render.to_dict(r) for r in runs])
    else:
        render.console.print(render.runs_table(runs))


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one run: state, exit code, duration, output tail."""

    async def go(cfg: cli_config.ClientConfig) -> scheduler_pb2.Run:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            return await stub.GetRun(scheduler_pb2.GetRunRequest(id=run_id))

    run = _call(go)
    if as_json:
        render.print_json(render.to_dict(run))
    else:
        render.print_run(run)


def main() -> Any:  # pragma: no cover - console entry
    return app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
