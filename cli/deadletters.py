"""`runbox deadletters`, `runbox quarantines` and `runbox quarantine release`.

Dead letters are runs whose retries are spent (replay them with `runbox runs replay`);
a quarantined script gets no new dispatch until released.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli import config as cli_config
from cli import render
from cli.rpc import call, every_page
from cli.runs import MAX_PAGE, JsonFlag
from runbox.scheduler.v1 import scheduler_pb2 as pb
from runbox.scheduler.v1 import scheduler_pb2_grpc
from shared.clients import open_channel

quarantine_app = typer.Typer(help="Release quarantined scripts.", no_args_is_help=True)
Stub = scheduler_pb2_grpc.SchedulerServiceStub


def _time(message: object, field: str) -> str:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return "-"
    return getattr(message, field).ToDatetime().strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[no-any-return]


def deadletters_cmd(
    script: Annotated[str, typer.Option(help="Only runs of this script.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """List dead-lettered runs (retries spent), newest first; replay with `runs replay`."""
    request = pb.ListDeadLettersRequest(script_name=script, page_size=MAX_PAGE)

    async def go(cfg: cli_config.ClientConfig) -> list[pb.DeadLetter]:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await every_page(Stub(channel).ListDeadLetters, request, "dead_letters")

    letters = call(go)
    if as_json:
        render.print_json([render.to_dict(d) for d in letters])
        return
    table = Table(box=None)
    for column in ("RUN", "SCRIPT", "VERSION", "STATE", "ATTEMPT", "SINCE", "REASON", "REPLAY"):
        table.add_column(column)
    for letter in letters:
        run = letter.run
        table.add_row(
            run.id,
            escape(run.script.name),
            run.script_version,
            render.state_name(run.state),
            str(run.attempt),
            _time(letter, "dead_lettered_at"),
            escape(letter.reason) or "-",
            letter.replay_run_id or "-",
        )
    if letters:
        render.print_table(table)
    else:
        render.console.print("no dead letters")


def quarantines_cmd(as_json: JsonFlag = False) -> None:
    """List quarantined scripts: their runs wait until `runbox quarantine release`."""
    request = pb.ListQuarantinesRequest(page_size=MAX_PAGE)

    async def go(cfg: cli_config.ClientConfig) -> list[pb.Quarantine]:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            return await every_page(Stub(channel).ListQuarantines, request, "quarantines")

    quarantines = call(go)
    if as_json:
        render.print_json([render.to_dict(q) for q in quarantines])
        return
    table = Table(box=None)
    for column in ("SCRIPT", "SINCE", "FAILURES", "REASON"):
        table.add_column(column)
    for q in quarantines:
        table.add_row(
            escape(q.script_name),
            _time(q, "since"),
            str(q.consecutive_failures),
            escape(q.reason) or "-",
        )
    if quarantines:
        render.print_table(table)
    else:
        render.console.print("no quarantined scripts")


@quarantine_app.command("release")
def release_cmd(
    script: Annotated[str, typer.Argument(help="Script name.")], as_json: JsonFlag = False
) -> None:
    """Release a quarantined script: its waiting runs are dispatched again."""

    async def go(cfg: cli_config.ClientConfig) -> pb.ReleaseQuarantineResponse:
        async with open_channel(cfg.scheduler, token=cfg.token) as channel:
            request = pb.ReleaseQuarantineRequest(script_name=script)
            return await Stub(channel).ReleaseQuarantine(request)

    reply = call(go)
    if as_json:
        render.print_json(render.to_dict(reply))
    else:
        render.console.print(f"released {reply.released.script_name or script}")
