"""The `runbox` command line: a local stack, scripts, runs, schedules, dead letters and alerts."""

from __future__ import annotations

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
) -> None:
    """Start a local stack: nats-server + the four services, until Ctrl-C or SIGTERM."""
    from cli import stack as dev_stack

    # Ctrl-C even when started with SIGINT ignored (a background job of a script), and
    # SIGTERM (a supervisor, `kill`) stop the services too instead of orphaning them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

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
    code = runs.run_and_follow("hello@1.0.0", ["name=Runbox"], as_json=False)
    render.console.print(f"[bold]demo run exit status {code}[/]")


def main() -> Any:  # pragma: no cover - console entry
    return app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
