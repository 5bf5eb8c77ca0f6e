"""`runbox template ...`: list reusable templates and create scripts from them."""

from __future__ import annotations

from typing import Annotated

import typer
from google.protobuf import field_mask_pb2
from rich.markup import escape
from rich.table import Table

from cli import config as cli_config
from cli import render
from cli.rpc import call, every_page, fail
from cli.scripts import MAX_PAGE, JsonFlag, render_kind
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from shared.clients import open_channel

app = typer.Typer(help="Reusable script templates.", no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: JsonFlag = False) -> None:
    """List every template, following page tokens."""

    async def go(cfg: cli_config.ClientConfig) -> list[catalogue_pb2.Script]:
        request = catalogue_pb2.ListTemplatesRequest(page_size=MAX_PAGE)
        async with open_channel(cfg.catalogue, token=cfg.token) as channel:
            stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
            return await every_page(stub.ListTemplates, request, "templates")

    templates = call(go)
    if as_json:
        render.print_json([render.to_dict(t) for t in templates])
    else:
        render.print_table(templates_table(templates))


def templates_table(templates: list[catalogue_pb2.Script]) -> Table:
    table = Table(box=None)
    for column in ("TEMPLATE", "LATEST", "TYPE", "PLACEHOLDERS", "DESCRIPTION"):
        table.add_column(column)
    for t in templates:
        table.add_row(
            escape(t.name),
            t.latest_version or "-",
            render_kind(t.execution_type),
            escape(", ".join(t.placeholders)) or "-",
            escape(t.description.splitlines()[0] if t.description else ""),
        )
    return table


def placeholders(pairs: list[str]) -> dict[str, str]:
    """`--set key=value` pairs; the value may itself contain '='."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--set {pair!r} must be key=value")
        values[key] = value
    return values


def overrides(
    description: str | None, tags: list[str] | None, owner: str | None
) -> tuple[catalogue_pb2.Script, list[str]]:
    """Metadata overrides and the mask naming exactly the ones given."""
    script = catalogue_pb2.Script(description=description or "", tags=tags or [], owner=owner or "")
    given = {"description": description, "tags": tags, "owner": owner}
    return script, [field for field, value in given.items() if value is not None]


@app.command("use")
def use_cmd(
    template: Annotated[str, typer.Argument(help="Template name.")],
    name: Annotated[str, typer.Argument(help="Name of the new script.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Placeholder value key=value (repeatable).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Description of the new script.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tags of the new script.")] = None,
    owner: Annotated[str | None, typer.Option(help="Owner of the new script.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create script NAME from TEMPLATE, filling its placeholders."""
    script, mask = overrides(description, tag, owner)
    request = catalogue_pb2.InstantiateTemplateRequest(
        template_name=template,
        name=name,
        placeholders=placeholders(set_ or []),
        overrides=script,
        override_mask=field_mask_pb2.FieldMask(paths=mask),
    )

    async def go(cfg: cli_config.ClientConfig) -> catalogue_pb2.Script:
        async with open_channel(cfg.catalogue, token=cfg.token) as channel:
            stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
            return await stub.InstantiateTemplate(request)

    created = call(go)
    if as_json:
        render.print_json(render.to_dict(created))
    else:
        latest = f"@{created.latest_version}" if created.latest_version else ""
        render.console.print(f"created {created.name}{latest} from template {template}")
