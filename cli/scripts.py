"""`runbox script ...`: push a script with its manifest, search, inspect and retire versions."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import semver
import typer
from google.protobuf import json_format
from rich.markup import escape
from rich.table import Table

from cli import config as cli_config
from cli import publish, render
from cli.rpc import call, every_page, fail
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from shared.clients import open_channel

app = typer.Typer(help="Manage scripts and their versions.", no_args_is_help=True)
Stub = catalogue_pb2_grpc.CatalogueServiceStub
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
# Largest page the catalogue serves; the CLI pages until it has what it was asked for.
MAX_PAGE = 500


class Kind(enum.StrEnum):
    python = "python"
    shell = "shell"
    container = "container"
    http = "http"
    serverless = "serverless"
    local = "local"


class Order(enum.StrEnum):
    name = "name"
    created = "created"
    updated = "updated"


ORDERS = {
    Order.name: catalogue_pb2.SCRIPT_ORDER_NAME,
    Order.created: catalogue_pb2.SCRIPT_ORDER_CREATE_TIME_DESC,
    Order.updated: catalogue_pb2.SCRIPT_ORDER_UPDATE_TIME_DESC,
}


@app.command("push")
def push_cmd(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="Semantic version (else the manifest's).")
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(help="Manifest (default: FILE's stem + .runbox.yaml next to it)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Script name (else manifest, else stem).")
    ] = None,
    params: Annotated[
        Path | None,
        typer.Option(
            "--params", help="JSON list of parameter definitions (no manifest).", exists=True
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Publish FILE as a new version, creating or updating the script from its manifest."""
    plan = publish.plan_push(
        file, name=name, version=version, manifest_path=manifest, params_file=params
    )
    published, updated = publish.push_version(plan)
    if as_json:
        render.print_json(render.to_dict(published))
        return
    if updated:
        render.console.print(f"updated {published.script_name}: {', '.join(updated)}")
    render.console.print(
        f"published {published.script_name}@{published.version} sha256 {published.sha256}",
        highlight=False,
        soft_wrap=True,
    )


def render_kind(kind: int) -> str:
    return common_pb2.ExecutionType.Name(kind).removeprefix("EXECUTION_TYPE_").lower()  # type: ignore[arg-type]


def version_state(state: int) -> str:
    return catalogue_pb2.VersionState.Name(state).removeprefix("VERSION_STATE_")  # type: ignore[arg-type]


def split_ref(ref: str, *, need_version: bool) -> tuple[str, str]:
    """NAME[@VERSION]; yank and deprecate need the exact version."""
    name, _, version = ref.partition("@")
    if not name or (need_version and not version):
        raise fail(f"{ref!r}: expected NAME@VERSION" if need_version else f"{ref!r}: no name")
    return name, version


def _timestamp(message: catalogue_pb2.Script | catalogue_pb2.ScriptVersion, field: str) -> str:
    if not message.HasField(field):  # type: ignore[arg-type]
        return "-"
    return getattr(message, field).ToDatetime().strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[no-any-return]


def scripts_table(scripts: list[catalogue_pb2.Script]) -> Table:
    table = Table(box=None)
    for column in ("NAME", "LATEST", "TYPE", "TAGS", "OWNER", "UPDATED", "DESCRIPTION"):
        table.add_column(column)
    for s in scripts:
        kind = render_kind(s.execution_type) + (" (template)" if s.is_template else "")
        table.add_row(
            escape(s.name),
            s.latest_version or "-",
            kind,
            escape(",".join(s.tags)),
            escape(s.owner),
            _timestamp(s, "update_time"),
            escape(s.description.splitlines()[0] if s.description else ""),
        )
    return table


def versions_table(versions: list[catalogue_pb2.ScriptVersion]) -> Table:
    table = Table(box=None)
    for column in ("VERSION", "STATE", "SHA256", "SIZE", "CREATED", "BY"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            v.version,
            version_state(v.state),
            v.sha256[:12],
            str(v.size_bytes),
            _timestamp(v, "create_time"),
            escape(v.created_by),
        )
    return table


def _shown_value(value: object) -> str:
    """A default as JSON; Struct numbers are doubles, so 2.0 reads as 2."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value)


def parameters_table(parameters: list[catalogue_pb2.ParameterDefinition]) -> Table:
    table = Table(box=None)
    for column in ("PARAMETER", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"):
        table.add_column(column)
    for p in parameters:
        default = (
            _shown_value(json_format.MessageToDict(p.default_value))
            if p.HasField("default_value")
            else (
                "(secret)" if p.secret or p.type == catalogue_pb2.PARAMETER_TYPE_PASSWORD else "-"
            )
        )
        table.add_row(
            escape(p.name),
            catalogue_pb2.ParameterType.Name(p.type).removeprefix("PARAMETER_TYPE_").lower(),
            "yes" if p.required else "no",
            escape(default),
            escape(p.description),
        )
    return table


def print_script(script: catalogue_pb2.Script) -> None:
    out = render.console
    out.print(
        f"[bold]{escape(script.name)}[/]"
        + (" [yellow](deleted)[/]" if script.HasField("delete_time") else "")
    )
    out.print(
        f"  type      {render_kind(script.execution_type)}"
        + (" (template)" if script.is_template else "")
    )
    out.print(f"  latest    {script.latest_version or '-'}")
    out.print(f"  tags      {escape(', '.join(script.tags)) or '-'}")
    out.print(f"  owner     {escape(script.owner)}")
    out.print(
        f"  created   {_timestamp(script, 'create_time')}   updated {_timestamp(script, 'update_time')}"
    )
    if script.description:
        out.print(f"  {escape(script.description)}")


def print_version(version: catalogue_pb2.ScriptVersion) -> None:
    out = render.console
    out.print(
        f"[bold]{escape(version.script_name)}@{version.version}[/]  {version_state(version.state)}"
    )
    out.print(
        f"  sha256    {version.sha256}  ({version.size_bytes} bytes)",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"  created   {_timestamp(version, 'create_time')} by {escape(version.created_by)}")
    if version.changelog:
        out.print(f"  changelog {escape(version.changelog)}")
    if version.parameters:
        render.print_table(parameters_table(list(version.parameters)), out)


def _list_request(
    prefix: str,
    tags: list[str],
    any_tag: bool,
    kind: Kind | None,
    owner: str,
    text: str,
    templates: bool,
    order: Order,
) -> catalogue_pb2.ListScriptsRequest:
    return catalogue_pb2.ListScriptsRequest(
        name_prefix=prefix,
        tags_any=tags if any_tag else [],
        tags_all=[] if any_tag else tags,
        execution_type=publish.execution_type(kind.value) if kind else 0,  # type: ignore[arg-type]
        owner=owner,
        text=text,
        templates_only=templates,
        order_by=ORDERS[order],
    )


@app.command("list")
def list_cmd(
    prefix: Annotated[str, typer.Option(help="Names starting with this.")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="Tag filter (repeatable).")] = None,
    any_tag: Annotated[
        bool, typer.Option("--any/--all", help="Match any of the tags, or all of them.")
    ] = False,
    kind: Annotated[Kind | None, typer.Option("--type", help="Execution type.")] = None,
    owner: Annotated[str, typer.Option(help="Owning principal or team.")] = "",
    text: Annotated[str, typer.Option(help="Free text in name or description.")] = "",
    templates: Annotated[bool, typer.Option("--templates", help="Templates only.")] = False,
    order: Annotated[Order, typer.Option(help="Sort order.")] = Order.name,
    limit: Annotated[int, typer.Option(help="At most this many scripts (0: all).", min=0)] = 50,
    page_size: Annotated[int, typer.Option(hidden=True, min=1, max=MAX_PAGE)] = MAX_PAGE,
    as_json: JsonFlag = False,
) -> None:
    """Search scripts, following page tokens until LIMIT scripts or the end."""
    request = _list_request(prefix, tag or [], any_tag, kind, owner, text, templates, order)

    async def go(cfg: cli_config.ClientConfig) -> list[catalogue_pb2.Script]:
        found: list[catalogue_pb2.Script] = []
        async with open_channel(cfg.catalogue, token=cfg.token) as channel:
            stub = Stub(channel)
            while True:
                request.page_size = min(page_size, limit - len(found)) if limit else page_size
                reply = await stub.ListScripts(request)
                found.extend(reply.scripts)
                request.page_token = reply.next_page_token
                if not request.page_token or (limit and len(found) >= limit):
                    return found

    scripts = call(go)
    if as_json:
        render.print_json([render.to_dict(s) for s in scripts])
    else:
        if scripts:
            render.print_table(scripts_table(scripts))
        else:
            render.console.print("no scripts found")


def _is_exact(version: str) -> bool:
    return semver.Version.is_valid(version)


@app.command("show")
def show_cmd(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (exact, latest or a range).")],
    as_json: JsonFlag = False,
) -> None:
    """Show a script and one version (default: the latest) with its parameters."""
    name, selector = split_ref(ref, need_version=False)

    async def go(
        cfg: cli_config.ClientConfig,
    ) -> tuple[catalogue_pb2.Script, catalogue_pb2.ScriptVersion | None]:
        async with open_channel(cfg.catalogue, token=cfg.token) as channel:
            stub = Stub(channel)
            script = await stub.GetScript(catalogue_pb2.GetScriptRequest(name=name))
            if _is_exact(selector):  # exact: yanked versions still answer
                request = catalogue_pb2.GetVersionRequest(script_name=name, version=selector)
                return script, await stub.GetVersion(request)
            if not selector and not script.latest_version:
                return script, None
            ref_ = common_pb2.ScriptRef(name=name, version=selector)
            return script, await stub.ResolveVersion(catalogue_pb2.ResolveVersionRequest(ref=ref_))

    script, version = call(go)
    if as_json:
        render.print_json(
            {
                "script": render.to_dict(script),
                "version": render.to_dict(version) if version else None,
            }
        )
        return
    print_script(script)
    if version is not None:
        print_version(version)


@app.command("versions")
def versions_cmd(
    name: Annotated[str, typer.Argument(help="Script name.")],
    as_json: JsonFlag = False,
) -> None:
    """List every version of a script, newest first, yanked ones included."""

    async def go(cfg: cli_config.ClientConfig) -> list[catalogue_pb2.ScriptVersion]:
        request = catalogue_pb2.ListVersionsRequest(
            script_name=name, page_size=MAX_PAGE, include_yanked=True
        )
        async with open_channel(cfg.catalogue, token=cfg.token) as channel:
            return await every_page(Stub(channel).ListVersions, request, "versions")

    versions = call(go)
    if as_json:
        render.print_json([render.to_dict(v) for v in versions])
    else:
        render.print_table(versions_table(versions))


def _set_state(ref: str, reason: str, *, yank: bool, as_json: bool) -> None:
    name, version = split_ref(ref, need_version=True)

    async def go(cfg: cli_config.ClientConfig) -> catalogue_pb2.ScriptVersion:
        async with open_channel(cfg.catalogue, token=cfg.token) as channel:
            stub = Stub(channel)
            if yank:
                return await stub.YankVersion(
                    catalogue_pb2.YankVersionRequest(
                        script_name=name, version=version, reason=reason
                    )
                )
            return await stub.DeprecateVersion(
                catalogue_pb2.DeprecateVersionRequest(
                    script_name=name, version=version, reason=reason
                )
            )

    changed = call(go)
    if as_json:
        render.print_json(render.to_dict(changed))
    else:
        render.console.print(
            f"{changed.script_name}@{changed.version} is {version_state(changed.state)}"
        )


Reason = Annotated[str, typer.Option(help="Why (kept in the audit log).")]


@app.command("yank")
def yank_cmd(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION")],
    reason: Reason,
    as_json: JsonFlag = False,
) -> None:
    """Yank a version: never resolved again; runs that pinned it keep working."""
    _set_state(ref, reason, yank=True, as_json=as_json)


@app.command("deprecate")
def deprecate_cmd(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION")],
    reason: Reason,
    as_json: JsonFlag = False,
) -> None:
    """Deprecate a version: still resolved, flagged to users."""
    _set_state(ref, reason, yank=False, as_json=as_json)


def _script_call(name: str, *, delete: bool, force: bool = False) -> catalogue_pb2.Script:
    async def go(cfg: cli_config.ClientConfig) -> catalogue_pb2.Script:
        async with open_channel(cfg.catalogue, token=cfg.token) as channel:
            stub = Stub(channel)
            if delete:
                return await stub.DeleteScript(
                    catalogue_pb2.DeleteScriptRequest(name=name, force=force)
                )
            return await stub.RestoreScript(catalogue_pb2.RestoreScriptRequest(name=name))

    return call(go)


@app.command("delete")
def delete_cmd(
    name: Annotated[str, typer.Argument(help="Script name.")],
    force: Annotated[
        bool, typer.Option(help="Even if schedules reference it (needs script:manage).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Soft-delete a script: hidden from listing and runs, name kept, restorable."""
    script = _script_call(name, delete=True, force=force)
    if as_json:
        render.print_json(render.to_dict(script))
    else:
        render.console.print(f"deleted {script.name} (restore with `runbox script restore`)")


@app.command("restore")
def restore_cmd(
    name: Annotated[str, typer.Argument(help="Script name.")], as_json: JsonFlag = False
) -> None:
    """Restore a soft-deleted script (needs script:manage)."""
    script = _script_call(name, delete=False)
    if as_json:
        render.print_json(render.to_dict(script))
    else:
        render.console.print(f"restored {script.name}")
