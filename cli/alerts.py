"""`runbox alert ...`: rules and channels (cli/alert_rules.py), alerts (list, ack,
resolve), silences and deliveries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli import config as cli_config
from cli import render
from cli.alert_common import (
    AlertState,
    DeliveryState,
    Label,
    ScheduleOpt,
    Script,
    Stub,
    Tag,
    TypeOpt,
    enum_name,
    enum_value,
    every,
    flag_for,
    one,
    output,
    selector,
    selector_text,
    when,
)
from cli.alert_rules import channel_app, rule_app
from cli.rpc import call, fail, up_to
from cli.runs import MAX_PAGE, JsonFlag, duration, timestamp
from runbox.alerting.v1 import alerting_pb2 as pb
from shared.clients import open_channel

app = typer.Typer(
    help="Alert rules, channels, alerts, silences and deliveries.", no_args_is_help=True
)
silence_app = typer.Typer(
    help="Silence alerts for a while (maintenance windows).", no_args_is_help=True
)
delivery_app = typer.Typer(
    help="Notification deliveries, dead-lettered ones included.", no_args_is_help=True
)
app.add_typer(rule_app, name="rule")
app.add_typer(channel_app, name="channel")
app.add_typer(silence_app, name="silence")
app.add_typer(delivery_app, name="deliveries")


def alerts_table(alerts: list[pb.Alert]) -> Table:
    table = Table(box=None)
    table.add_column("ID", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    for column in ("SEVERITY", "SCRIPT", "COUNT", "LAST SEEN (UTC)", "SUMMARY"):
        table.add_column(column)
    for a in alerts:
        table.add_row(
            a.id,
            enum_name(pb.AlertState, a.state, "ALERT_STATE_").upper(),
            enum_name(pb.Severity, a.severity, "SEVERITY_"),
            escape(a.script_name) or "-",
            str(a.occurrences),
            a.last_seen.ToDatetime(UTC).strftime("%m-%d %H:%M"),
            escape(a.summary),
        )
    return table


@app.command("list")
def alert_list_cmd(
    state: Annotated[
        list[AlertState] | None, typer.Option(help="Alert state (repeatable).")
    ] = None,
    rule: Annotated[str, typer.Option(help="Only alerts of this rule id.")] = "",
    script: Annotated[str, typer.Option(help="Only alerts of this script.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many (0: all).", min=0)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List alerts, newest first."""
    request = pb.ListAlertsRequest(
        states=[enum_value(pb.AlertState, "ALERT_STATE", s.value, "--state") for s in state or []],
        rule_id=rule,
        script_name=script,
    )

    async def go(cfg: cli_config.ClientConfig) -> list[pb.Alert]:
        if not cfg.alerting:
            raise fail("no alerting address: set RUNBOX_ALERTING_ADDRESS (or `runbox up`)")
        async with open_channel(cfg.alerting, token=cfg.token) as channel:
            return await up_to(Stub(channel).ListAlerts, request, "alerts", limit, MAX_PAGE)

    alerts = call(go)
    if as_json:
        render.print_json([render.to_dict(a) for a in alerts])
    else:
        if alerts:
            render.print_table(alerts_table(alerts))
        else:
            render.console.print("no alerts found")


AlertId = Annotated[str, typer.Argument(help="Alert id.")]
Comment = Annotated[str, typer.Option(help="Why (kept with the alert).")]


@app.command("ack")
def alert_ack_cmd(alert_id: AlertId, comment: Comment = "", as_json: JsonFlag = False) -> None:
    """Acknowledge a firing alert."""
    request = pb.AcknowledgeAlertRequest(id=alert_id, comment=comment)
    a = call(lambda cfg: one(cfg, "AcknowledgeAlert", request))
    output(a, as_json=as_json, text=f"alert {a.id} is ACKNOWLEDGED by {escape(a.acknowledged_by)}")


@app.command("resolve")
def alert_resolve_cmd(alert_id: AlertId, comment: Comment = "", as_json: JsonFlag = False) -> None:
    """Resolve an alert (a new occurrence opens a new one)."""
    request = pb.ResolveAlertRequest(id=alert_id, comment=comment)
    a = call(lambda cfg: one(cfg, "ResolveAlert", request))
    output(a, as_json=as_json, text=f"alert {a.id} is RESOLVED")


def _future(flag: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{flag} {text!r}: expected an ISO 8601 time (2026-01-31T08:00)") from None
    return moment if moment.tzinfo else moment.astimezone()


@silence_app.command("create")
def silence_create_cmd(
    script: Script = None,
    tag: Tag = None,
    schedule: ScheduleOpt = None,
    type_: TypeOpt = None,
    label: Label = None,
    duration_: Annotated[
        str | None,
        typer.Option("--duration", help="How long, from --starts (default now), e.g. 2h."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Until this ISO 8601 time.")] = None,
    starts: Annotated[
        str | None, typer.Option(help="From this ISO 8601 time (default now).")
    ] = None,
    comment: Annotated[str, typer.Option(help="Why (e.g. the maintenance ticket).")] = "",
    idempotency_key: Annotated[
        str, typer.Option(help="Creating again with this key returns the first.")
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Silence alerts matching a selector for a while."""
    if (duration_ is None) == (until is None):
        raise fail("give --duration or --until, one of them")
    begin = _future("--starts", starts) if starts else datetime.now(UTC)
    end = _future("--until", until) if until else begin + duration("--duration", duration_ or "")
    silence = pb.Silence(
        selector=selector(script, tag, schedule, type_, label),
        ends_at=timestamp(end),
        comment=comment,
    )
    if starts:
        silence.starts_at.CopyFrom(timestamp(begin))
    request = pb.CreateSilenceRequest(silence=silence, idempotency_key=idempotency_key)
    created = call(lambda cfg: one(cfg, "CreateSilence", request), field_name=flag_for)
    output(
        created,
        as_json=as_json,
        text=f"created silence [bold]{created.id}[/] until {when(created.ends_at)}",
    )


@silence_app.command("list")
def silence_list_cmd(
    all_: Annotated[
        bool, typer.Option("--all", help="Include expired and ended silences.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """List silences in force or to come (--all: every one)."""
    request = pb.ListSilencesRequest(page_size=MAX_PAGE, include_expired=all_)
    silences: list[pb.Silence] = call(lambda cfg: every(cfg, "ListSilences", request, "silences"))
    if as_json:
        render.print_json([render.to_dict(s) for s in silences])
        return
    table = Table(box=None)
    table.add_column("ID", no_wrap=True)
    for column in ("SELECTOR", "STARTS", "ENDS", "BY", "COMMENT"):
        table.add_column(column)
    for s in silences:
        ends = when(s.ends_at) + (" (expired)" if s.HasField("expire_time") else "")
        table.add_row(
            s.id,
            escape(selector_text(s.selector)),
            when(s.starts_at),
            ends,
            escape(s.created_by),
            escape(s.comment) or "-",
        )
    if silences:
        render.print_table(table)
    else:
        render.console.print("no silences found")


@silence_app.command("expire")
def silence_expire_cmd(
    silence_id: Annotated[str, typer.Argument(help="Silence id.")], as_json: JsonFlag = False
) -> None:
    """End a silence now."""
    s = call(lambda cfg: one(cfg, "ExpireSilence", pb.ExpireSilenceRequest(id=silence_id)))
    output(s, as_json=as_json, text=f"silence {s.id} ended at {when(s.ends_at)}")


@delivery_app.command("list")
def deliveries_list_cmd(
    state: Annotated[
        list[DeliveryState] | None, typer.Option(help="Delivery state (repeatable).")
    ] = None,
    channel: Annotated[str, typer.Option(help="Only deliveries to this channel id.")] = "",
    alert: Annotated[str, typer.Option(help="Only deliveries of this alert id.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many (0: all).", min=0)] = 100,
    as_json: JsonFlag = False,
) -> None:
    """List deliveries, newest first (--state dead_lettered: the ones that gave up)."""
    request = pb.ListDeliveriesRequest(
        states=[
            enum_value(pb.DeliveryState, "DELIVERY_STATE", s.value, "--state") for s in state or []
        ],
        channel_id=channel,
        alert_id=alert,
    )

    async def go(cfg: cli_config.ClientConfig) -> list[pb.Delivery]:
        if not cfg.alerting:
            raise fail("no alerting address: set RUNBOX_ALERTING_ADDRESS (or `runbox up`)")
        async with open_channel(cfg.alerting, token=cfg.token) as ch:
            return await up_to(Stub(ch).ListDeliveries, request, "deliveries", limit, MAX_PAGE)

    deliveries = call(go)
    if as_json:
        render.print_json([render.to_dict(d) for d in deliveries])
        return
    table = Table(box=None)
    table.add_column("ID", no_wrap=True)
    for column in ("STATE", "KIND", "ALERT", "CHANNEL", "ATTEMPTS", "CREATED", "LAST ERROR"):
        table.add_column(column)
    for d in deliveries:
        table.add_row(
            d.id,
            enum_name(pb.DeliveryState, d.state, "DELIVERY_STATE_").upper(),
            d.kind or "-",
            d.alert_id,
            d.channel_id,
            f"{d.attempts}/{d.max_attempts}" if d.max_attempts else str(d.attempts),
            when(d.create_time),
            escape(d.last_error) or "-",
        )
    if deliveries:
        render.print_table(table)
    else:
        render.console.print("no deliveries found")


@delivery_app.command("retry")
def deliveries_retry_cmd(
    delivery_id: Annotated[str, typer.Argument(help="Delivery id.")], as_json: JsonFlag = False
) -> None:
    """Queue a dead-lettered (or retrying) delivery again now, attempts reset."""
    d = call(lambda cfg: one(cfg, "RetryDelivery", pb.RetryDeliveryRequest(id=delivery_id)))
    state = enum_name(pb.DeliveryState, d.state, "DELIVERY_STATE_").upper()
    output(d, as_json=as_json, text=f"delivery {d.id} is {state}")
