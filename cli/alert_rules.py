"""`runbox alert rule ...` and `runbox alert channel ...`.

A rule is given with flags: a selector (--script, --tag, --schedule, --type, --label) and
exactly one condition flag (--on-state, --consecutive-failures, --failure-rate,
--duration-above / --p95-factor, --fire-missed, --dead-mans-switch). The alerting service
is the authority on what is valid; its violations are shown with the flag that set the
field. Channel secrets are read from an environment variable or a file (--secret-env,
--secret-file), never from the command line, and are never shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import field_mask_pb2
from rich.markup import escape
from rich.table import Table

from cli import render
from cli.alert_common import (
    Label,
    ScheduleOpt,
    Script,
    Severity,
    Tag,
    TypeOpt,
    WebhookFormat,
    csv,
    enum_name,
    enum_value,
    every,
    flag_for,
    one,
    output,
    proto_duration,
    selector,
    selector_text,
    when,
)
from cli.rpc import call, fail
from cli.runs import MAX_PAGE, JsonFlag, pairs
from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.common.v1 import common_pb2

rule_app = typer.Typer(help="Create and manage alert rules.", no_args_is_help=True)
channel_app = typer.Typer(
    help="Create, test and manage notification channels.", no_args_is_help=True
)


def condition(
    *,
    on_state: list[str] | None,
    on_dead_letter: bool,
    on_quarantine: bool,
    consecutive_failures: int | None,
    failure_rate: float | None,
    window: str | None,
    min_runs: int,
    duration_above: str | None,
    p95_factor: float | None,
    fire_missed: bool,
    include_skipped: bool,
    dead_mans_switch: str | None,
) -> pb.Condition:
    """Exactly one condition from its flags."""
    given: dict[str, pb.Condition] = {}
    if on_state or on_dead_letter or on_quarantine:
        states = [
            enum_value(common_pb2.RunState, "RUN_STATE", s, "--on-state") for s in csv(on_state)
        ]
        given["--on-state"] = pb.Condition(
            on_state=pb.OnStateCondition(
                states=states,
                on_dead_letter=on_dead_letter,
                on_quarantine=on_quarantine,
            )
        )
    if consecutive_failures is not None:
        given["--consecutive-failures"] = pb.Condition(
            consecutive_failures=pb.ConsecutiveFailuresCondition(count=consecutive_failures)
        )
    if failure_rate is not None:
        rate = pb.FailureRateCondition(threshold=failure_rate, min_runs=min_runs)
        if window is not None:
            rate.window.CopyFrom(proto_duration("--window", window))
        given["--failure-rate"] = pb.Condition(failure_rate=rate)
    if duration_above is not None or p95_factor is not None:
        spec = pb.DurationCondition(p95_factor=p95_factor or 0.0)
        if duration_above is not None:
            spec.above.CopyFrom(proto_duration("--duration-above", duration_above))
        given["--duration-above/--p95-factor"] = pb.Condition(duration=spec)
    if fire_missed:
        given["--fire-missed"] = pb.Condition(
            fire_missed=pb.FireMissedCondition(include_skipped=include_skipped)
        )
    if dead_mans_switch is not None:
        switch = pb.DeadMansSwitchCondition(
            expected_within=proto_duration("--dead-mans-switch", dead_mans_switch)
        )
        given["--dead-mans-switch"] = pb.Condition(dead_mans_switch=switch)
    if len(given) != 1:
        raise fail(
            "give exactly one condition: --on-state (or --on-dead-letter/--on-quarantine), "
            "--consecutive-failures, --failure-rate, --duration-above/--p95-factor, "
            "--fire-missed or --dead-mans-switch" + (f" (got {', '.join(given)})" if given else "")
        )
    return next(iter(given.values()))


@rule_app.command("create")
def rule_create_cmd(
    name: Annotated[str, typer.Option(help="Rule name (unique).")],
    script: Script = None,
    tag: Tag = None,
    schedule: ScheduleOpt = None,
    type_: TypeOpt = None,
    label: Label = None,
    on_state: Annotated[
        list[str] | None,
        typer.Option(
            help="Fire on each run reaching this state: failed, timed_out, lost, succeeded..."
        ),
    ] = None,
    on_dead_letter: Annotated[bool, typer.Option(help="Fire when a run is dead-lettered.")] = False,
    on_quarantine: Annotated[bool, typer.Option(help="Fire when a script is quarantined.")] = False,
    consecutive_failures: Annotated[
        int | None, typer.Option(help="Fire after this many failures in a row.")
    ] = None,
    failure_rate: Annotated[
        float | None,
        typer.Option(help="Fire when the failed share in --window reaches this (0..1]."),
    ] = None,
    window: Annotated[str | None, typer.Option(help="Window of --failure-rate (e.g. 1h).")] = None,
    min_runs: Annotated[int, typer.Option(help="Runs needed in the window before judging.")] = 0,
    duration_above: Annotated[
        str | None, typer.Option(help="Fire when a run takes longer than this (e.g. 10m).")
    ] = None,
    p95_factor: Annotated[
        float | None,
        typer.Option(help="Fire when a run takes longer than this x the script's p95."),
    ] = None,
    fire_missed: Annotated[
        bool, typer.Option(help="Fire when a schedule's fire is missed.")
    ] = False,
    include_skipped: Annotated[
        bool, typer.Option(help="With --fire-missed: skipped fires too.")
    ] = False,
    dead_mans_switch: Annotated[
        str | None,
        typer.Option(help="Fire when the schedule has no success within this (e.g. 25h)."),
    ] = None,
    severity: Annotated[Severity, typer.Option(help="Severity of its alerts.")] = Severity.warning,
    channel: Annotated[
        list[str] | None, typer.Option(help="Channel id to notify (repeatable).")
    ] = None,
    template: Annotated[
        str | None, typer.Option(help="Message template (sandboxed Jinja2).")
    ] = None,
    template_file: Annotated[
        Path | None, typer.Option(help="Read the message template from a file.")
    ] = None,
    notify_recovery: Annotated[
        bool, typer.Option(help="Notify when the subject succeeds again.")
    ] = False,
    group_key: Annotated[str, typer.Option(help="Dedup group key template.")] = "",
    dedup_window: Annotated[str | None, typer.Option(help="Dedup window (default 5m).")] = None,
    throttle_limit: Annotated[
        int, typer.Option(help="At most this many notifications per channel...")
    ] = 0,
    throttle_window: Annotated[str | None, typer.Option(help="...per this window.")] = None,
    idempotency_key: Annotated[
        str, typer.Option(help="Creating again with this key returns the first.")
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Create an alert rule: a selector, exactly one condition, channels to notify."""
    if template is not None and template_file is not None:
        raise fail("give --template or --template-file, not both")
    rule = pb.Rule(
        name=name,
        selector=selector(script, tag, schedule, type_, label),
        condition=condition(
            on_state=on_state,
            on_dead_letter=on_dead_letter,
            on_quarantine=on_quarantine,
            consecutive_failures=consecutive_failures,
            failure_rate=failure_rate,
            window=window,
            min_runs=min_runs,
            duration_above=duration_above,
            p95_factor=p95_factor,
            fire_missed=fire_missed,
            include_skipped=include_skipped,
            dead_mans_switch=dead_mans_switch,
        ),
        severity=enum_value(pb.Severity, "SEVERITY", severity.value, "--severity"),
        channel_ids=csv(channel),
        message_template=template_file.read_text() if template_file else (template or ""),
        notify_recovery=notify_recovery,
        group_key=group_key,
        throttle_limit=throttle_limit,
    )
    for field, flag, text in (
        ("dedup_window", "--dedup-window", dedup_window),
        ("throttle_window", "--throttle-window", throttle_window),
    ):
        if text is not None:
            getattr(rule, field).CopyFrom(proto_duration(flag, text))
    request = pb.CreateRuleRequest(rule=rule, idempotency_key=idempotency_key)
    created = call(lambda cfg: one(cfg, "CreateRule", request), field_name=flag_for)
    output(
        created,
        as_json=as_json,
        text=f"created rule [bold]{created.id}[/] ({escape(created.name)})",
    )


def condition_text(c: pb.Condition) -> str:
    """A rule's condition the way the create flags spell it."""
    kind = c.WhichOneof("kind")
    if kind == "on_state":
        parts = [enum_name(common_pb2.RunState, s, "RUN_STATE_") for s in c.on_state.states]
        parts += ["dead_letter"] * c.on_state.on_dead_letter + [
            "quarantine"
        ] * c.on_state.on_quarantine
        return "on " + ",".join(parts)
    if kind == "consecutive_failures":
        return f"{c.consecutive_failures.count} consecutive failures"
    if kind == "failure_rate":
        r = c.failure_rate
        return f"failure rate >= {r.threshold:g} over {r.window.ToJsonString()}"
    if kind == "duration":
        if c.duration.HasField("above"):
            return f"duration > {c.duration.above.ToJsonString()}"
        return f"duration > {c.duration.p95_factor:g} x p95"
    if kind == "fire_missed":
        return "fire missed" + (" or skipped" if c.fire_missed.include_skipped else "")
    if kind == "dead_mans_switch":
        return f"no success within {c.dead_mans_switch.expected_within.ToJsonString()}"
    return "-"


@rule_app.command("list")
def rule_list_cmd(as_json: JsonFlag = False) -> None:
    """List rules, newest first."""
    request = pb.ListRulesRequest(page_size=MAX_PAGE)
    rules: list[pb.Rule] = call(lambda cfg: every(cfg, "ListRules", request, "rules"))
    if as_json:
        render.print_json([render.to_dict(r) for r in rules])
        return
    table = Table(box=None)
    table.add_column("ID", no_wrap=True)
    for column in ("NAME", "ENABLED", "SEVERITY", "SELECTOR", "CONDITION", "CHANNELS"):
        table.add_column(column)
    for r in rules:
        table.add_row(
            r.id,
            escape(r.name),
            "yes" if r.enabled else "no",
            enum_name(pb.Severity, r.severity, "SEVERITY_"),
            escape(selector_text(r.selector)),
            escape(condition_text(r.condition)),
            str(len(r.channel_ids)),
        )
    if rules:
        render.print_table(table)
    else:
        render.console.print("no rules found")


RuleId = Annotated[str, typer.Argument(help="Rule id.")]


@rule_app.command("show")
def rule_show_cmd(rule_id: RuleId, as_json: JsonFlag = False) -> None:
    """Show a rule."""
    r: pb.Rule = call(lambda cfg: one(cfg, "GetRule", pb.GetRuleRequest(id=rule_id)))
    if as_json:
        render.print_json(render.to_dict(r))
        return
    rows = [
        ("name", escape(r.name)),
        ("enabled", "yes" if r.enabled else "no"),
        ("severity", enum_name(pb.Severity, r.severity, "SEVERITY_")),
        ("selector", escape(selector_text(r.selector))),
        ("condition", escape(condition_text(r.condition))),
        ("channels", ", ".join(r.channel_ids) or "-"),
        ("recovery", "yes" if r.notify_recovery else "no"),
        ("group key", escape(r.group_key) or "(default)"),
        ("dedup", r.dedup_window.ToJsonString() if r.HasField("dedup_window") else "-"),
        (
            "throttle",
            f"{r.throttle_limit} per {r.throttle_window.ToJsonString()}"
            if r.throttle_limit
            else "-",
        ),
        ("template", escape(r.message_template) or "(default)"),
        ("created", when(r.create_time)),
        ("updated", when(r.update_time)),
    ]
    render.console.print(f"[bold]rule[/] {r.id}")
    for label, value in rows:
        render.console.print(f"  {label:<10}{value}", highlight=False)


def _set_enabled(rule_id: str, enabled: bool, as_json: bool) -> None:
    request = pb.UpdateRuleRequest(
        rule=pb.Rule(id=rule_id, enabled=enabled),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
    )
    r = call(lambda cfg: one(cfg, "UpdateRule", request))
    output(r, as_json=as_json, text=f"rule {r.id} is {'enabled' if r.enabled else 'disabled'}")


@rule_app.command("enable")
def rule_enable_cmd(rule_id: RuleId, as_json: JsonFlag = False) -> None:
    """Enable a rule."""
    _set_enabled(rule_id, True, as_json)


@rule_app.command("disable")
def rule_disable_cmd(rule_id: RuleId, as_json: JsonFlag = False) -> None:
    """Disable a rule: it fires no alerts until enabled."""
    _set_enabled(rule_id, False, as_json)


@rule_app.command("delete")
def rule_delete_cmd(rule_id: RuleId, as_json: JsonFlag = False) -> None:
    """Delete a rule; its alerts stay."""
    reply = call(lambda cfg: one(cfg, "DeleteRule", pb.DeleteRuleRequest(id=rule_id)))
    output(reply, as_json=as_json, text=f"deleted rule {reply.id}")


def _secret(env: str | None, file: Path | None) -> str:
    if env is not None and file is not None:
        raise fail("give --secret-env or --secret-file, not both")
    if env is not None:
        if env not in os.environ:
            raise fail(f"--secret-env {env}: no such environment variable")
        return os.environ[env]
    return file.read_text().strip() if file is not None else ""


@channel_app.command("create")
def channel_create_cmd(
    name: Annotated[str, typer.Option(help="Channel name (unique).")],
    webhook_url: Annotated[str | None, typer.Option(help="Webhook: the URL to POST to.")] = None,
    header: Annotated[
        list[str] | None, typer.Option(help="Webhook header key=value (repeatable).")
    ] = None,
    format_: Annotated[
        WebhookFormat, typer.Option("--format", help="Webhook body format.")
    ] = WebhookFormat.json,
    timeout: Annotated[str | None, typer.Option(help="Webhook timeout (e.g. 5s).")] = None,
    max_attempts: Annotated[int, typer.Option(help="Webhook delivery attempts (0: default).")] = 0,
    smtp_host: Annotated[str | None, typer.Option(help="Email: SMTP server host.")] = None,
    smtp_port: Annotated[int, typer.Option(help="Email: SMTP port (0: default).")] = 0,
    starttls: Annotated[bool, typer.Option(help="Email: STARTTLS.")] = False,
    tls: Annotated[bool, typer.Option(help="Email: implicit TLS (port 465).")] = False,
    username: Annotated[str, typer.Option(help="Email: SMTP user.")] = "",
    from_: Annotated[str, typer.Option("--from", help="Email: sender address.")] = "",
    to: Annotated[list[str] | None, typer.Option(help="Email: recipient (repeatable).")] = None,
    secret_env: Annotated[
        str | None, typer.Option(help="Env var holding the webhook signing secret / SMTP password.")
    ] = None,
    secret_file: Annotated[
        Path | None, typer.Option(help="File holding the webhook signing secret / SMTP password.")
    ] = None,
    idempotency_key: Annotated[
        str, typer.Option(help="Creating again with this key returns the first.")
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Create a webhook (--webhook-url) or email (--smtp-host) channel."""
    if (webhook_url is None) == (smtp_host is None):
        raise fail("give --webhook-url (a webhook) or --smtp-host (email), one of them")
    secret = _secret(secret_env, secret_file)
    channel = pb.Channel(name=name)
    if webhook_url is not None:
        channel.webhook.CopyFrom(
            pb.WebhookChannel(
                url=webhook_url,
                headers=pairs("--header", header),
                signing_secret=secret,
                max_attempts=max_attempts,
                format=format_.value,
            )
        )
        if timeout is not None:
            channel.webhook.timeout.CopyFrom(proto_duration("--timeout", timeout))
    else:
        channel.email.CopyFrom(
            pb.EmailChannel(
                smtp_host=smtp_host or "",
                smtp_port=smtp_port,
                starttls=starttls,
                use_tls=tls,
                username=username,
                password=secret,
                from_address=from_,
                to_addresses=csv(to),
            )
        )
    request = pb.CreateChannelRequest(channel=channel, idempotency_key=idempotency_key)
    created = call(lambda cfg: one(cfg, "CreateChannel", request), field_name=flag_for)
    output(
        created,
        as_json=as_json,
        text=f"created channel [bold]{created.id}[/] ({escape(created.name)})",
    )


def channel_target(c: pb.Channel) -> str:
    if c.HasField("webhook"):
        return f"webhook {c.webhook.url} ({c.webhook.format or 'json'})"
    if c.HasField("email"):
        return f"email via {c.email.smtp_host} to {', '.join(c.email.to_addresses)}"
    return "-"


@channel_app.command("list")
def channel_list_cmd(as_json: JsonFlag = False) -> None:
    """List channels (secrets are never shown)."""
    request = pb.ListChannelsRequest(page_size=MAX_PAGE)
    channels: list[pb.Channel] = call(lambda cfg: every(cfg, "ListChannels", request, "channels"))
    if as_json:
        render.print_json([render.to_dict(c) for c in channels])
        return
    table = Table(box=None)
    table.add_column("ID", no_wrap=True)
    for column in ("NAME", "ENABLED", "TARGET"):
        table.add_column(column)
    for c in channels:
        table.add_row(c.id, escape(c.name), "yes" if c.enabled else "no", escape(channel_target(c)))
    if channels:
        render.print_table(table)
    else:
        render.console.print("no channels found")


ChannelId = Annotated[str, typer.Argument(help="Channel id.")]


@channel_app.command("show")
def channel_show_cmd(channel_id: ChannelId, as_json: JsonFlag = False) -> None:
    """Show a channel (secrets are never shown)."""
    c: pb.Channel = call(lambda cfg: one(cfg, "GetChannel", pb.GetChannelRequest(id=channel_id)))
    if as_json:
        render.print_json(render.to_dict(c))
        return
    render.console.print(f"[bold]channel[/] {c.id} ({escape(c.name)})")
    render.console.print(f"  target    {escape(channel_target(c))}", highlight=False)
    render.console.print(f"  enabled   {'yes' if c.enabled else 'no'}", highlight=False)
    render.console.print(f"  created   {when(c.create_time)}", highlight=False)


@channel_app.command("test")
def channel_test_cmd(channel_id: ChannelId, as_json: JsonFlag = False) -> None:
    """Send a test message through a channel; exit status 1 if it was not delivered."""
    reply: pb.TestChannelResponse = call(
        lambda cfg: one(cfg, "TestChannel", pb.TestChannelRequest(id=channel_id))
    )
    latency = reply.latency.ToTimedelta().total_seconds()
    if as_json:
        render.print_json(render.to_dict(reply))
    elif reply.delivered:
        render.console.print(f"delivered in {latency:.3f}s")
    else:
        again = " (transient: may work later)" if reply.retryable else ""
        render.console.print(
            f"[red]not delivered[/]{again}: {escape(reply.error)}", highlight=False
        )
    if not reply.delivered:
        raise typer.Exit(1)


@channel_app.command("delete")
def channel_delete_cmd(channel_id: ChannelId, as_json: JsonFlag = False) -> None:
    """Delete a channel no rule uses."""
    reply = call(lambda cfg: one(cfg, "DeleteChannel", pb.DeleteChannelRequest(id=channel_id)))
    output(reply, as_json=as_json, text=f"deleted channel {reply.id}")
