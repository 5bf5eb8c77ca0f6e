"""Shared pieces of `runbox alert ...`: the alerting stub calls, enum choices and
names, selector flags, and the map from a violation's field to the flag that sets it."""

from __future__ import annotations

import enum
from datetime import UTC
from typing import Annotated, Any

import typer
from google.protobuf import duration_pb2, timestamp_pb2

from cli import config as cli_config
from cli import render
from cli.rpc import every_page, fail
from cli.runs import duration, pairs
from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.alerting.v1 import alerting_pb2_grpc
from runbox.common.v1 import common_pb2
from shared.clients import open_channel

Stub = alerting_pb2_grpc.AlertingServiceStub


class Severity(enum.StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


class AlertState(enum.StrEnum):
    firing = "firing"
    acknowledged = "acknowledged"
    resolved = "resolved"


class DeliveryState(enum.StrEnum):
    pending = "pending"
    delivered = "delivered"
    retrying = "retrying"
    dead_lettered = "dead_lettered"


class WebhookFormat(enum.StrEnum):
    json = "json"
    slack = "slack"


# Field of a violation (after "rule." / "channel." / "silence.") -> its flag; longest first.
FLAGS = {
    "name": "--name",
    "selector.script_names": "--script",
    "selector.script_tags": "--tag",
    "selector.schedule_ids": "--schedule",
    "selector.execution_types": "--type",
    "selector.labels": "--label",
    "selector": "--script/--tag/--schedule/--type/--label",
    "condition.on_state": "--on-state",
    "condition.consecutive_failures": "--consecutive-failures",
    "condition.failure_rate.window": "--window",
    "condition.failure_rate.min_runs": "--min-runs",
    "condition.failure_rate": "--failure-rate",
    "condition.duration.above": "--duration-above",
    "condition.duration.p95_factor": "--p95-factor",
    "condition.duration": "--duration-above/--p95-factor",
    "condition.fire_missed": "--fire-missed",
    "condition.dead_mans_switch": "--dead-mans-switch",
    "condition": "a condition flag",
    "severity": "--severity",
    "channel_ids": "--channel",
    "message_template": "--template",
    "group_key": "--group-key",
    "dedup_window": "--dedup-window",
    "throttle_limit": "--throttle-limit",
    "throttle_window": "--throttle-window",
    "webhook.url": "--webhook-url",
    "webhook.headers": "--header",
    "webhook.signing_secret": "--secret-env/--secret-file",
    "webhook.timeout": "--timeout",
    "webhook.max_attempts": "--max-attempts",
    "webhook.format": "--format",
    "email.smtp_host": "--smtp-host",
    "email.smtp_port": "--smtp-port",
    "email.username": "--username",
    "email.password": "--secret-env/--secret-file",
    "email.from_address": "--from",
    "email.to_addresses": "--to",
    "kind": "--webhook-url/--smtp-host",
    "starts_at": "--starts",
    "ends_at": "--duration/--until",
    "comment": "--comment",
    "idempotency_key": "--idempotency-key",
}


def flag_for(field: str) -> str:
    """`rule.selector.labels` -> `rule.selector.labels (--label)`."""
    inner = field.split(".", 1)[1] if field.startswith(("rule.", "channel.", "silence.")) else field
    for prefix in sorted(FLAGS, key=len, reverse=True):
        if inner == prefix or inner.startswith((prefix + ".", prefix + "[")):
            return f"{field} ({FLAGS[prefix]})"
    return field


def proto_duration(flag: str, text: str) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(duration(flag, text))
    return value


def enum_value(enum_type: Any, prefix: str, name: str, flag: str) -> Any:
    """The proto enum value named `name` (case-insensitive, without its prefix)."""
    try:
        return enum_type.Value(f"{prefix}_{name.strip().upper()}")
    except ValueError:
        known = ", ".join(
            n.removeprefix(prefix + "_").lower()
            for n in enum_type.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
            if not n.endswith("UNSPECIFIED")
        )
        raise fail(f"{flag} {name!r}: expected one of {known}") from None


def enum_name(enum_type: Any, value: int, prefix: str) -> str:
    try:
        return enum_type.Name(value).removeprefix(prefix).lower()  # type: ignore[no-any-return]
    except ValueError:
        return str(value)


def csv(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def when(stamp: timestamp_pb2.Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def one(cfg: cli_config.ClientConfig, method: str, request: Any) -> Any:
    if not cfg.alerting:
        raise fail("no alerting address: set RUNBOX_ALERTING_ADDRESS (or `runbox up`)")
    async with open_channel(cfg.alerting, token=cfg.token) as channel:
        return await getattr(Stub(channel), method)(request)


async def every(cfg: cli_config.ClientConfig, method: str, request: Any, items: str) -> list[Any]:
    if not cfg.alerting:
        raise fail("no alerting address: set RUNBOX_ALERTING_ADDRESS (or `runbox up`)")
    async with open_channel(cfg.alerting, token=cfg.token) as channel:
        return await every_page(getattr(Stub(channel), method), request, items)


def output(message: Any, *, as_json: bool, text: str) -> None:
    if as_json:
        render.print_json(render.to_dict(message))
    else:
        render.console.print(text, highlight=False)


def selector(
    script: list[str] | None,
    tag: list[str] | None,
    schedule: list[str] | None,
    kind: list[str] | None,
    label: list[str] | None,
) -> pb.Selector:
    """Selector flags (each repeatable or comma-separated) as a Selector."""
    return pb.Selector(
        script_names=csv(script),
        script_tags=csv(tag),
        schedule_ids=csv(schedule),
        execution_types=[
            enum_value(common_pb2.ExecutionType, "EXECUTION_TYPE", k, "--type") for k in csv(kind)
        ],
        labels=pairs("--label", label),
    )


Script = Annotated[list[str] | None, typer.Option("--script", help="Script name (repeatable).")]
Tag = Annotated[list[str] | None, typer.Option("--tag", help="Script tag (repeatable).")]
ScheduleOpt = Annotated[
    list[str] | None, typer.Option("--schedule", help="Schedule id (repeatable).")
]
TypeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type", help="Execution type: python, shell, container, http, serverless, local."
    ),
]
Label = Annotated[
    list[str] | None, typer.Option("--label", help="Run label key=value (repeatable).")
]


def selector_text(s: pb.Selector) -> str:
    parts = [f"script={n}" for n in s.script_names] + [f"tag={t}" for t in s.script_tags]
    parts += [f"schedule={i}" for i in s.schedule_ids]
    parts += [
        f"type={enum_name(common_pb2.ExecutionType, t, 'EXECUTION_TYPE_')}"
        for t in s.execution_types
    ]
    parts += [f"{k}={v}" for k, v in sorted(s.labels.items())]
    return " ".join(parts) or "everything"
