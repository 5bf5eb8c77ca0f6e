"""Terminal and JSON rendering of runs and scripts for the CLI."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2

console = Console()
err_console = Console(stderr=True)
TABLE_MAX_WIDTH = 200


def print_table(table: Table, out: Console | None = None) -> None:
    """Print a table at its natural width (up to TABLE_MAX_WIDTH, where long text columns
    wrap): a narrow terminal (or a pipe, 80 columns) wraps its lines rather than the table
    cutting IDs and names to "…", which a user could then not copy into the next command."""
    out = out or console
    natural = Measurement.get(out, out.options.update(max_width=10_000), table)
    width = out.width
    out.width = max(width, min(natural.maximum, max(natural.minimum, TABLE_MAX_WIDTH)))
    try:
        out.print(table)
    finally:
        out.width = width


def state_name(state: int) -> str:
    return common_pb2.RunState.Name(state).removeprefix("RUN_STATE_")


def reason_name(reason: int) -> str:
    return common_pb2.FailureReason.Name(reason).removeprefix("FAILURE_REASON_")


STATE_STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "TIMED_OUT": "red",
    "LOST": "red",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
}


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def duration_text(run: scheduler_pb2.Run) -> str:
    if not run.HasField("duration"):
        return "-"
    return f"{run.duration.ToTimedelta().total_seconds():.3f}s"


def runs_table(runs: list[scheduler_pb2.Run]) -> Table:
    table = Table(box=None)
    for column in ("ID", "SCRIPT", "VERSION", "STATE", "EXIT", "DURATION", "CREATED"):
        table.add_column(column)
    for run in runs:
        state = state_name(run.state)
        table.add_row(
            run.id,
            run.script.name,
            run.script_version,
            f"[{STATE_STYLE.get(state, 'white')}]{state}[/]",
            str(run.exit.exit_code) if state in ("SUCCEEDED", "FAILED") else "-",
            duration_text(run),
            run.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        )
    return table


def print_run(run: scheduler_pb2.Run) -> None:
    state = state_name(run.state)
    console.print(f"[bold]run[/] {run.id}")
    console.print(f"  script    {run.script.name}@{run.script_version} (sha256 {run.sha256[:12]})")
    console.print(f"  state     [{STATE_STYLE.get(state, 'white')}]{state}[/]")
    if run.exit.reason:
        console.print(f"  reason    {reason_name(run.exit.reason)} {run.exit.message}")
    if state in ("SUCCEEDED", "FAILED"):
        console.print(f"  exit code {run.exit.exit_code}")
    console.print(f"  duration  {duration_text(run)}")
    if run.executor_id:
        console.print(f"  executor  {run.executor_id}")
    if run.usage.sandbox:
        console.print(f"  sandbox   {sandbox_text(run.usage.sandbox)}")
    print_output(run)


def sandbox_text(sandbox: str) -> str:
    """What isolated a run, with "none" shouted: such a run had the host's network and files."""
    if sandbox == "none":
        return "[bold red]none: NOT sandboxed[/] (a plain process on the executor's host)"
    return sandbox


def print_output(run: scheduler_pb2.Run) -> None:
    out = run.output
    if out.stdout:
        console.print("[dim]--- stdout ---[/]")
        console.out(out.stdout.decode(errors="replace"), end="", highlight=False)
    if out.stderr:
        console.print("[dim]--- stderr ---[/]")
        console.out(out.stderr.decode(errors="replace"), end="", highlight=False)
    if out.truncated:
        console.print("[yellow](output truncated: head and tail kept)[/]")
