"""The `runbox` command line: a local stack, scripts, runs, schedules, dead letters and alerts."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import alerts, deadletters, publish, render, runs, schedules, scripts, templates

app = typer.Typer(help="Runbox: register scripts, run them in sandboxes.", no_args_is_help=True)
app.add_typer(scripts.app, name="script")
app.add_typer(templates.app, name="template")
app.command("run")(runs.run_cmd)
app.add_typer(runs.app, name="runs")
app.add_typer(schedules.app, name="schedule")
app.command("deadletters")(deadletters.deadletters_cmd)
app.command("quarantines")(deadletters.quarantines_cmd)
app.add_typer(deadletters.quarantine_app, name="quarantine")
app.add_typer(alerts.app, name="alert")


@app.command()
def up(
    var: Annotated[Path, typer.Option(help="State directory (SQLite, blobs, logs).")] = Path("var"),
    base_port: Annotated[int, typer.Option(help="First gRPC port (0 = free ports).")] = 0,
    demo: Annotated[bool, typer.Option(help="Push examples/hello.py and run it once.")] = False,
    settings: Annotated[
        Path | None,
        typer.Option(
            help="YAML settings: a `common` section and one per service, keys as the "
            "RUNBOX_ variables' suffixes (executor: {SANDBOX__EGRESS_NETWORK: host})."
        ),
    ] = None,
    allow_unsandboxed: Annotated[
        bool,
        typer.Option(
            help="Without a Docker engine, run python and shell scripts as plain host "
            "processes (NOT sandboxed) instead of refusing them."
        ),
    ] = False,
) -> None:
    """Start a local stack: nats-server + the four services, until Ctrl-C or SIGTERM."""
    from cli import stack as dev_stack

    per_service = _service_settings(settings, allow_unsandboxed=allow_unsandboxed)
    # Ctrl-C even when started with SIGINT ignored (a background job of a script), and
    # SIGTERM (a supervisor, `kill`) stop the services too instead of orphaning them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    render.console.print(f"[bold]starting Runbox[/] (state in {var})")
    running = dev_stack.up(var, base_port=base_port, say=render.console.print, settings=per_service)
    render.console.print(f"  nats       {running.nats.url}")
    render.console.print(f"  admin token in [bold]{running.admin_token_file}[/]")
    render.console.print(f"  CLI config in [bold]{running.var / 'runbox.json'}[/]")
    _warn_unsandboxed(running.ready.get("executor", {}))
    try:
        if demo:
            _demo(running.var / "runbox.json")
        render.console.print(
            "\nTry, from this directory in another shell:\n"
            + "".join(f"  {command}\n" for command in hint(running.var))
            + "[dim]Ctrl-C stops everything.[/]",
            soft_wrap=True,  # a command cut in two would not work as printed
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


def _service_settings(path: Path | None, *, allow_unsandboxed: bool) -> dict[str, dict[str, str]]:
    """RUNBOX_* variables per service from --settings and the flags; say what is dropped."""
    from cli import stack_settings

    try:
        per_service = stack_settings.load(path) if path is not None else {}
    except stack_settings.SettingsError as exc:
        render.err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if allow_unsandboxed:
        per_service.setdefault("executor", {})["RUNBOX_SANDBOX__ALLOW_UNSANDBOXED"] = "true"
    _, dropped = stack_settings.passed_through(os.environ)
    if dropped:
        render.console.print(
            f"[yellow]ignoring {', '.join(dropped)} from the environment: runbox up sets "
            "these itself (storage paths: per service in --settings)[/]"
        )
    return per_service


def _warn_unsandboxed(executor: dict[str, object]) -> None:
    """Say loudly when python and shell runs have no sandbox (run anyway or refused)."""
    if executor.get("sandboxed", True):
        return
    if executor.get("backend") == "local":
        render.console.print(
            "[bold red]WARNING: NO SANDBOX: python and shell runs are NOT sandboxed[/] "
            "[red](--allow-unsandboxed: they run as plain processes of this user, with this "
            "host's network and files)[/]",
            soft_wrap=True,
        )
    else:
        render.console.print(
            "[bold red]WARNING: NO SANDBOX: python and shell runs will be REFUSED[/] [red](no "
            "Docker engine: start one with `make docker` and `make sandbox-image`, or run "
            "them unsandboxed with `runbox up --allow-unsandboxed`)[/]",
            soft_wrap=True,
        )


def hint(var: Path) -> list[str]:
    """Commands for another shell in this directory; each works as printed."""
    commands = []
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        commands.append(f". {_shown(activate)}")
    if var.resolve() != Path("var").resolve():
        commands.append(f"export RUNBOX_CONFIG={_shown(var.resolve() / 'runbox.json')}")
    hello = _example()
    if hello is not None:
        commands.append(f"runbox script push {_shown(hello)} --version 1.0.1")
        commands.append("runbox run hello --follow -p name=you")
    commands.append("runbox runs list")
    return commands


def _shown(path: Path) -> str:
    """PATH relative to this directory when under it, else absolute; quoted for a shell."""
    path = path.resolve()
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.quote(str(path))


def _example() -> Path | None:
    """examples/hello.py here, or in the checkout this CLI runs from."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "examples" / "hello.py").is_file():
            return base / "examples" / "hello.py"
    return None


def _demo(config: Path) -> None:
    """Push examples/hello.py and run it once on the stack just started (CONFIG)."""
    from cli import stack_settings

    # The CLI calls below talk to this stack, whatever the caller's shell points at.
    for key in stack_settings.CLI_OWNED:
        os.environ.pop(stack_settings.PREFIX + key, None)
    os.environ["RUNBOX_CONFIG"] = str(config)
    hello = _example()
    if hello is None:
        render.err_console.print("[red]demo: examples/hello.py not found[/]")
        return
    render.console.print("\n[bold]demo:[/] pushing examples/hello.py as hello@1.0.0 and running it")
    # Name, parameters and limits come from its manifest, examples/hello.runbox.yaml.
    plan = publish.plan_push(hello, version="1.0.0")
    publish.push_version(plan, exist_ok=True)
    code = runs.run_and_follow(f"{plan.name}@1.0.0", ["name=Runbox"], as_json=False)
    render.console.print(f"[bold]demo run exit status {code}[/]")


def main() -> Any:  # pragma: no cover - console entry
    return app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
