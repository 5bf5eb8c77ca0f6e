"""The AlertingService API on a real gRPC server (loopback, real SQLite, real
nats-server): rules, channels, silences, alerts and deliveries, with every bad
input answered by a precise status and field, secrets never returned, and
permissions by scope."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.alerting.v1 import alerting_pb2_grpc
from runbox.common.v1 import common_pb2
from services.alerting.channels import verify_signature
from services.alerting.config import AlertingSettings
from services.alerting.models import AlertRow, ChannelRow, DeliveryRow, open_key
from services.alerting.server import build
from shared import db
from shared.auth import hash_token, new_token
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from shared.status import from_rpc_error
from tests.integration.helpers import settings_for

pytestmark = pytest.mark.asyncio(loop_scope="module")
SECRET = "whsec-do-not-leak-7f3a"
PASSWORD = "smtp-pass-do-not-leak-91c2"


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Receiver:
    """A local HTTP server that records each POST (headers, body) and answers `status`."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Api:
    """The running service, a stub per principal, and direct database access."""

    running: Running
    stubs: dict[str, Any]
    sessions: async_sessionmaker[AsyncSession]
    receiver: Receiver
    tokens: dict[str, str]

    @property
    def admin(self) -> Any:
        return self.stubs["admin"]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _principals(directory: Path) -> tuple[dict[str, str], Path]:
    """Tokens for admin (*), reader (alert:read), writer (+write), editor (+delete)."""
    tokens = {name: new_token() for name in ("admin", "reader", "writer", "editor")}
    scopes = {
        "admin": ["*"],
        "reader": ["alert:read"],
        "writer": ["alert:read", "alert:write"],
        "editor": ["alert:read", "alert:write", "alert:delete"],
    }
    principals = directory / "principals.json"
    principals.write_text(
        json.dumps(
            {
                "principals": [
                    {"name": n, "token_sha256": hash_token(t), "permissions": scopes[n]}
                    for n, t in tokens.items()
                ]
            }
        )
    )
    return tokens, principals


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(
    tmp_path_factory: pytest.TempPathFactory, nats_server: Any, receiver: Receiver
) -> AsyncIterator[Api]:
    tmp = tmp_path_factory.mktemp("alerting-api")
    tokens, principals = _principals(tmp_path_factory.mktemp("alerting-auth"))
    tag = uuid.uuid4().hex[:10]
    base = settings_for(
        AlertingSettings,
        tmp,
        "alerting",
        nats_url=nats_server.url,
        principals_file=principals,
        channels={"webhook_allow": ["127.0.0.1/32"], "allow_http": True},
        test_channel_timeout_s=10,
    )
    nats_settings = {
        "url": nats_server.url,
        "stream": f"A_{tag}",
        "subjects_prefix": f"a{tag}.events",
    }
    settings = AlertingSettings.model_validate(base.model_dump() | {"nats": nats_settings})
    running = await launch(build_runtime("alerting", settings), build)
    channels = {n: open_channel(running.address, token=t) for n, t in tokens.items()}
    engine = db.create_engine(settings.database)
    yield Api(
        running,
        {n: alerting_pb2_grpc.AlertingServiceStub(c) for n, c in channels.items()},
        db.sessionmaker(engine),
        receiver,
        tokens,
    )
    for channel in channels.values():
        await channel.close()
    await engine.dispose()
    await running.stop()
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().delete_stream(nats_settings["stream"])
    await nc.drain()


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


def _fields(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return {v.field: v.description for v in getattr(from_rpc_error(error), "violations", [])}


def webhook(api: Api, name: str | None = None, **fields: Any) -> pb.Channel:
    return pb.Channel(
        name=name or _name("hook"),
        webhook=pb.WebhookChannel(url=api.receiver.url, signing_secret=SECRET, **fields),
    )


def email(name: str | None = None) -> pb.Channel:
    return pb.Channel(
        name=name or _name("mail"),
        email=pb.EmailChannel(
            smtp_host="127.0.0.1",
            smtp_port=2525,
            starttls=True,
            username="alerts",
            password=PASSWORD,
            from_address="runbox@example.com",
            to_addresses=["ops@example.com"],
        ),
    )


def failing_rule(name: str | None = None, channel_ids: list[str] | None = None) -> pb.Rule:
    return pb.Rule(
        name=name or _name("rule"),
        selector=pb.Selector(script_names=["backup"], labels={"team": "ops"}),
        condition=pb.Condition(on_state=pb.OnStateCondition(states=[common_pb2.RUN_STATE_FAILED])),
        severity=pb.SEVERITY_CRITICAL,
        channel_ids=channel_ids or [],
        message_template="{{ script_name }} failed ({{ state }})",
    )


async def test_rule_crud_round_trips(api: Api) -> None:
    """Create, get, list, update by mask, disable, enable and delete a rule."""
    channel = await api.admin.CreateChannel(pb.CreateChannelRequest(channel=webhook(api)))
    created = await api.admin.CreateRule(
        pb.CreateRuleRequest(rule=failing_rule(channel_ids=[channel.id]))
    )
    assert created.id and created.enabled
    assert created.HasField("create_time") and created.HasField("update_time")
    assert created.dedup_window.ToTimedelta() == timedelta(minutes=5)  # the default
    assert list(created.channel_ids) == [channel.id]
    fetched = await api.admin.GetRule(pb.GetRuleRequest(id=created.id))
    assert fetched == created
    update = pb.UpdateRuleRequest(
        rule=pb.Rule(id=created.id, severity=pb.SEVERITY_INFO, notify_recovery=True),
        update_mask=field_mask_pb2.FieldMask(paths=["severity", "notify_recovery"]),
    )
    updated = await api.admin.UpdateRule(update)
    assert updated.severity == pb.SEVERITY_INFO and updated.notify_recovery
    assert updated.name == created.name and list(updated.selector.script_names) == ["backup"]
    disabled = await api.admin.UpdateRule(
        pb.UpdateRuleRequest(
            rule=pb.Rule(id=created.id, enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    assert not disabled.enabled and disabled.severity == pb.SEVERITY_INFO
    deleted = await api.admin.DeleteRule(pb.DeleteRuleRequest(id=created.id))
    assert deleted.id == created.id
    err = await _error(api.admin.GetRule(pb.GetRuleRequest(id=created.id)))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_list_rules_pages_newest_first_without_repeats(api: Api) -> None:
    """Small pages walk every rule once, newest first."""
    mine = []
    for _ in range(5):
        rule = await api.admin.CreateRule(pb.CreateRuleRequest(rule=failing_rule()))
        mine.append(rule.id)
    seen: list[str] = []
    request = pb.ListRulesRequest(page_size=2)
    while True:
        reply = await api.admin.ListRules(request)
        assert len(reply.rules) <= 2
        seen.extend(r.id for r in reply.rules)
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in mine] == list(reversed(mine))


async def test_malformed_page_token_is_invalid_argument(api: Api) -> None:
    """A page token that is not ours names page_token."""
    err = await _error(api.admin.ListRules(pb.ListRulesRequest(page_token="%%%")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in _fields(err)


async def test_same_idempotency_key_returns_first_rule(api: Api) -> None:
    """A retried create returns the first rule; the key with another rule is refused."""
    key = uuid.uuid4().hex
    rule = failing_rule()
    first = await api.admin.CreateRule(pb.CreateRuleRequest(rule=rule, idempotency_key=key))
    again = await api.admin.CreateRule(pb.CreateRuleRequest(rule=rule, idempotency_key=key))
    assert again.id == first.id
    other = failing_rule()
    err = await _error(api.admin.CreateRule(pb.CreateRuleRequest(rule=other, idempotency_key=key)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "idempotency_key" in _fields(err)


async def test_duplicate_rule_name_already_exists(api: Api) -> None:
    """Rule names are unique."""
    rule = failing_rule()
    await api.admin.CreateRule(pb.CreateRuleRequest(rule=rule))
    err = await _error(api.admin.CreateRule(pb.CreateRuleRequest(rule=rule)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def _with(change: Any) -> pb.Rule:
    rule = failing_rule()
    change(rule)
    return rule


def _condition(**kind: Any) -> Any:
    def change(rule: pb.Rule) -> None:
        rule.condition.CopyFrom(pb.Condition(**kind))

    return change


BAD_RULES = {
    "empty name": (lambda r: setattr(r, "name", "  "), "rule.name"),
    "unknown execution type": (
        lambda r: r.selector.execution_types.append(99),
        "rule.selector.execution_types[0]",
    ),
    "empty label key": (lambda r: r.selector.labels.update({"": "x"}), "rule.selector.labels"),
    "bad script name": (
        lambda r: r.selector.script_names.append("Not A Name!"),
        "rule.selector.script_names[1]",
    ),
    "no condition": (lambda r: r.ClearField("condition"), "rule.condition"),
    "count 0": (
        _condition(consecutive_failures=pb.ConsecutiveFailuresCondition(count=0)),
        "rule.condition.consecutive_failures.count",
    ),
    "count 1001": (
        _condition(consecutive_failures=pb.ConsecutiveFailuresCondition(count=1001)),
        "rule.condition.consecutive_failures.count",
    ),
    "threshold above 1": (
        _condition(failure_rate=pb.FailureRateCondition(window=_duration(3600), threshold=1.5)),
        "rule.condition.failure_rate.threshold",
    ),
    "window over 30 days": (
        _condition(
            failure_rate=pb.FailureRateCondition(window=_duration(31 * 86400), threshold=0.5)
        ),
        "rule.condition.failure_rate.window",
    ),
    "window missing": (
        _condition(failure_rate=pb.FailureRateCondition(threshold=0.5)),
        "rule.condition.failure_rate.window",
    ),
    "p95 factor 1": (
        _condition(duration=pb.DurationCondition(p95_factor=1.0)),
        "rule.condition.duration.p95_factor",
    ),
    "negative duration": (
        _condition(duration=pb.DurationCondition(above=duration_pb2.Duration(seconds=-5))),
        "rule.condition.duration.above",
    ),
    "empty on_state": (_condition(on_state=pb.OnStateCondition()), "rule.condition.on_state"),
    "dead man's switch of 0": (
        _condition(dead_mans_switch=pb.DeadMansSwitchCondition(expected_within=_duration(0))),
        "rule.condition.dead_mans_switch.expected_within",
    ),
    "template syntax error": (
        lambda r: setattr(r, "message_template", "{{ oops"),
        "rule.message_template",
    ),
    "template reaching python internals": (
        lambda r: setattr(r, "message_template", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
        "rule.message_template",
    ),
    "template reaching globals": (
        lambda r: setattr(r, "message_template", "{{ cycler.__init__.__globals__.os }}"),
        "rule.message_template",
    ),
    "group key unknown filter": (
        lambda r: setattr(r, "group_key", "{{ rule_id | no_such_filter }}"),
        "rule.group_key",
    ),
    "template too long": (
        lambda r: setattr(r, "message_template", "x" * 100_000),
        "rule.message_template",
    ),
    "throttle limit without window": (
        lambda r: setattr(r, "throttle_limit", 5),
        "rule.throttle_window",
    ),
    "negative throttle": (lambda r: setattr(r, "throttle_limit", -1), "rule.throttle_limit"),
    "duplicate channel id": (
        lambda r: r.channel_ids.extend(["c1", "c1"]),
        "rule.channel_ids[1]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
async def test_bad_rule_is_invalid_argument_naming_the_field(api: Api, case: str) -> None:
    """Each bad rule field comes back as INVALID_ARGUMENT with that field."""
    change, field = BAD_RULES[case]
    err = await _error(api.admin.CreateRule(pb.CreateRuleRequest(rule=_with(change))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in _fields(err), _fields(err)


async def test_dead_mans_switch_needs_a_schedule(api: Api) -> None:
    """A dead-man's switch with no schedule or script to watch names selector.schedule_ids."""
    rule = pb.Rule(
        name=_name("deadman"),
        condition=pb.Condition(
            dead_mans_switch=pb.DeadMansSwitchCondition(expected_within=_duration(3600))
        ),
    )
    err = await _error(api.admin.CreateRule(pb.CreateRuleRequest(rule=rule)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rule.selector.schedule_ids" in _fields(err)
    rule.selector.schedule_ids.append("sched-1")
    created = await api.admin.CreateRule(pb.CreateRuleRequest(rule=rule))
    assert created.condition.dead_mans_switch.expected_within.seconds == 3600


async def test_update_that_breaks_a_rule_is_refused_and_keeps_it(api: Api) -> None:
    """An update is validated as a whole; a refused one changes nothing."""
    created = await api.admin.CreateRule(pb.CreateRuleRequest(rule=failing_rule()))
    err = await _error(
        api.admin.UpdateRule(
            pb.UpdateRuleRequest(
                rule=pb.Rule(id=created.id, message_template="{{ self.__init__ }}"),
                update_mask=field_mask_pb2.FieldMask(paths=["message_template"]),
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rule.message_template" in _fields(err)
    err = await _error(
        api.admin.UpdateRule(
            pb.UpdateRuleRequest(
                rule=pb.Rule(id=created.id),
                update_mask=field_mask_pb2.FieldMask(paths=["id", "nonsense"]),
            )
        )
    )
    assert set(_fields(err)) == {"update_mask.paths[0]", "update_mask.paths[1]"}
    assert await api.admin.GetRule(pb.GetRuleRequest(id=created.id)) == created


async def test_rule_with_unknown_channel_is_failed_precondition(api: Api) -> None:
    """Channel ids must name existing channels; the missing one is the field."""
    channel = await api.admin.CreateChannel(pb.CreateChannelRequest(channel=webhook(api)))
    rule = failing_rule(channel_ids=[channel.id, "no-such-channel"])
    err = await _error(api.admin.CreateRule(pb.CreateRuleRequest(rule=rule)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert list(_fields(err)) == ["rule.channel_ids[1]"]


async def test_channel_secrets_are_never_returned(api: Api) -> None:
    """Create, get, list and update replies carry no password or signing secret."""
    hook = await api.admin.CreateChannel(pb.CreateChannelRequest(channel=webhook(api)))
    mail = await api.admin.CreateChannel(pb.CreateChannelRequest(channel=email()))
    assert hook.webhook.url == api.receiver.url and hook.webhook.signing_secret == ""
    assert mail.email.username == "alerts" and mail.email.password == ""
    replies: list[Any] = [
        await api.admin.GetChannel(pb.GetChannelRequest(id=hook.id)),
        await api.admin.GetChannel(pb.GetChannelRequest(id=mail.id)),
        await api.admin.ListChannels(pb.ListChannelsRequest(page_size=500)),
        await api.admin.UpdateChannel(
            pb.UpdateChannelRequest(
                channel=pb.Channel(id=hook.id, name=_name("renamed")),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            )
        ),
    ]
    for reply in replies:
        wire = reply.SerializeToString()
        assert SECRET.encode() not in wire and PASSWORD.encode() not in wire
    stored = await _stored_definition(api, hook.id)
    assert stored["webhook"]["signing_secret"] == SECRET


async def _stored_definition(api: Api, channel_id: str) -> dict[str, Any]:
    async with api.sessions() as session:
        row = await session.get(ChannelRow, channel_id)
        assert row is not None
        return row.definition


async def test_channel_update_keeps_secret_unless_named(api: Api) -> None:
    """Replacing the webhook without a secret keeps the stored one; naming the secret clears it."""
    hook = await api.admin.CreateChannel(pb.CreateChannelRequest(channel=webhook(api)))
    replaced = pb.Channel(id=hook.id, webhook=pb.WebhookChannel(url=api.receiver.url + "2"))
    await api.admin.UpdateChannel(
        pb.UpdateChannelRequest(
            channel=replaced, update_mask=field_mask_pb2.FieldMask(paths=["webhook"])
        )
    )
    stored = await _stored_definition(api, hook.id)
    assert stored["webhook"]["url"].endswith("/hook2")
    assert stored["webhook"]["signing_secret"] == SECRET
    await api.admin.UpdateChannel(
        pb.UpdateChannelRequest(
            channel=pb.Channel(id=hook.id),
            update_mask=field_mask_pb2.FieldMask(paths=["webhook.signing_secret"]),
        )
    )
    stored = await _stored_definition(api, hook.id)
    assert "signing_secret" not in stored["webhook"]


BAD_CHANNELS = {
    "private address outside the allow-list": (
        lambda api: pb.Channel(name=_name("c"), webhook=pb.WebhookChannel(url="http://10.9.8.7/h")),
        "channel.webhook.url",
    ),
    "cloud metadata address": (
        lambda api: pb.Channel(
            name=_name("c"),
            webhook=pb.WebhookChannel(url="http://169.254.169.254/latest/meta-data"),
        ),
        "channel.webhook.url",
    ),
    "not http": (
        lambda api: pb.Channel(
            name=_name("c"), webhook=pb.WebhookChannel(url="file:///etc/passwd")
        ),
        "channel.webhook.url",
    ),
    "no kind": (lambda api: pb.Channel(name=_name("c")), "channel.kind"),
    "no name": (
        lambda api: pb.Channel(webhook=pb.WebhookChannel(url=api.receiver.url)),
        "channel.name",
    ),
    "email without recipients": (
        lambda api: pb.Channel(
            name=_name("c"),
            email=pb.EmailChannel(smtp_host="127.0.0.1", from_address="a@example.com"),
        ),
        "channel.email.to_addresses",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHANNELS))
async def test_bad_channel_is_invalid_argument_naming_the_field(api: Api, case: str) -> None:
    """Webhook URLs outside the allow-list, bad schemes and missing fields are named."""
    make, field = BAD_CHANNELS[case]
    err = await _error(api.admin.CreateChannel(pb.CreateChannelRequest(channel=make(api))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    fields = _fields(err)
    assert any(f == field or f.startswith(field + "[") for f in fields), fields


async def test_delete_channel_in_use_names_its_rules(api: Api) -> None:
    """A channel a rule notifies cannot be deleted; the rule is named; after it goes, it can."""
    channel = await api.admin.CreateChannel(pb.CreateChannelRequest(channel=webhook(api)))
    rule = await api.admin.CreateRule(
        pb.CreateRuleRequest(rule=failing_rule(channel_ids=[channel.id]))
    )
    err = await _error(api.admin.DeleteChannel(pb.DeleteChannelRequest(id=channel.id)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rule.name in err.details()
    assert f"rules[{rule.id}]" in _fields(err)
    await api.admin.DeleteRule(pb.DeleteRuleRequest(id=rule.id))
    reply = await api.admin.DeleteChannel(pb.DeleteChannelRequest(id=channel.id))
    assert reply.id == channel.id


async def test_test_channel_delivers_a_signed_message(api: Api) -> None:
    """TestChannel posts one signed test notification to the webhook and reports it."""
    channel = await api.admin.CreateChannel(pb.CreateChannelRequest(channel=webhook(api)))
    before = len(api.receiver.requests)
    reply = await api.admin.TestChannel(pb.TestChannelRequest(id=channel.id))
    assert reply.delivered, reply.error
    assert len(api.receiver.requests) == before + 1
    headers, body = api.receiver.requests[-1]
    assert verify_signature(SECRET, headers["x-runbox-signature"], body)
    assert SECRET.encode() not in body
    assert json.loads(body)["kind"] == "test"


async def test_test_channel_reports_an_unreachable_webhook(api: Api) -> None:
    """A refused connection is reported in the reply (retryable), not as INTERNAL."""
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    channel = await api.admin.CreateChannel(
        pb.CreateChannelRequest(
            channel=pb.Channel(
                name=_name("dead"),
                webhook=pb.WebhookChannel(url=f"http://127.0.0.1:{port}/hook"),
            )
        )
    )
    reply = await api.admin.TestChannel(pb.TestChannelRequest(id=channel.id))
    assert not reply.delivered and reply.error and reply.retryable


async def test_test_channel_of_unknown_id_is_not_found(api: Api) -> None:
    err = await _error(api.admin.TestChannel(pb.TestChannelRequest(id="nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_silence_create_list_expire(api: Api) -> None:
    """An active silence is listed; expired, it leaves the default list but stays in the full one."""
    now = datetime.now(UTC)
    silence = pb.Silence(
        selector=pb.Selector(script_names=["backup"]),
        ends_at=_stamp(now + timedelta(hours=2)),
        comment="maintenance",
    )
    created = await api.admin.CreateSilence(pb.CreateSilenceRequest(silence=silence))
    assert created.id and created.created_by == "admin" and created.HasField("starts_at")
    active = await api.admin.ListSilences(pb.ListSilencesRequest(page_size=500))
    assert created.id in [s.id for s in active.silences]
    expired = await api.admin.ExpireSilence(pb.ExpireSilenceRequest(id=created.id))
    assert expired.HasField("expire_time")
    assert expired.ends_at.ToDatetime(UTC) <= datetime.now(UTC)
    active = await api.admin.ListSilences(pb.ListSilencesRequest(page_size=500))
    assert created.id not in [s.id for s in active.silences]
    everything = await api.admin.ListSilences(
        pb.ListSilencesRequest(page_size=500, include_expired=True)
    )
    assert created.id in [s.id for s in everything.silences]
    again = await api.admin.ExpireSilence(pb.ExpireSilenceRequest(id=created.id))
    assert again.ends_at == expired.ends_at


def _silence(starts: timedelta | None, ends: timedelta | None, **selector: Any) -> pb.Silence:
    now = datetime.now(UTC)
    silence = pb.Silence(selector=pb.Selector(**selector))
    if starts is not None:
        silence.starts_at.CopyFrom(_stamp(now + starts))
    if ends is not None:
        silence.ends_at.CopyFrom(_stamp(now + ends))
    return silence


BAD_SILENCES = {
    "ends in the past": (
        _silence(timedelta(hours=-2), timedelta(hours=-1), script_names=["a"]),
        "silence.ends_at",
    ),
    "ends before it starts": (
        _silence(timedelta(hours=2), timedelta(hours=1), script_names=["a"]),
        "silence.ends_at",
    ),
    "no end": (_silence(None, None, script_names=["a"]), "silence.ends_at"),
    "too long": (_silence(None, timedelta(days=91), script_names=["a"]), "silence.ends_at"),
    "empty selector": (_silence(None, timedelta(hours=1)), "silence.selector"),
    "empty label key": (
        _silence(None, timedelta(hours=1), labels={"": "x"}),
        "silence.selector.labels",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SILENCES))
async def test_bad_silence_is_invalid_argument_naming_the_field(api: Api, case: str) -> None:
    silence, field = BAD_SILENCES[case]
    err = await _error(api.admin.CreateSilence(pb.CreateSilenceRequest(silence=silence)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in _fields(err), _fields(err)


async def _alert(api: Api, rule_id: str, script: str, state: int = pb.ALERT_STATE_FIRING) -> str:
    now = datetime.now(UTC)
    alert_id = uuid.uuid4().hex
    async with api.sessions() as session, session.begin():
        session.add(
            AlertRow(
                id=alert_id,
                rule_id=rule_id,
                group_key=f"{rule_id}:{script}",
                open_key=None
                if state == pb.ALERT_STATE_RESOLVED
                else open_key(rule_id, f"{rule_id}:{script}:{alert_id}"),
                state=state,
                severity=pb.SEVERITY_CRITICAL,
                summary=f"{script} failed",
                script_name=script,
                schedule_id="",
                run_id="run-1",
                occurrences=1,
                context={},
                first_seen=now,
                last_seen=now,
            )
        )
    return alert_id


async def test_alerts_list_filters_ack_and_resolve(api: Api) -> None:
    """Alerts filter by state, rule and script; ack then resolve; a resolved alert cannot be acked."""
    rule_id = uuid.uuid4().hex
    script = _name("s")
    first = await _alert(api, rule_id, script)
    second = await _alert(api, rule_id, "other")
    await _alert(api, uuid.uuid4().hex, script)
    by_rule = await api.admin.ListAlerts(pb.ListAlertsRequest(rule_id=rule_id))
    assert [a.id for a in by_rule.alerts] == [second, first]
    both = await api.admin.ListAlerts(pb.ListAlertsRequest(rule_id=rule_id, script_name=script))
    assert [a.id for a in both.alerts] == [first]
    acked = await api.stubs["writer"].AcknowledgeAlert(
        pb.AcknowledgeAlertRequest(id=first, comment="looking")
    )
    assert acked.state == pb.ALERT_STATE_ACKNOWLEDGED and acked.acknowledged_by == "writer"
    firing = await api.admin.ListAlerts(
        pb.ListAlertsRequest(rule_id=rule_id, states=[pb.ALERT_STATE_FIRING])
    )
    assert [a.id for a in firing.alerts] == [second]
    resolved = await api.admin.ResolveAlert(pb.ResolveAlertRequest(id=first, comment="fixed"))
    assert resolved.state == pb.ALERT_STATE_RESOLVED and resolved.HasField("resolve_time")
    assert resolved.comment == "fixed" and resolved.resolved_by == "admin"
    async with api.sessions() as session:
        row = await session.get(AlertRow, first)
        assert row is not None and row.open_key is None
    err = await _error(api.admin.AcknowledgeAlert(pb.AcknowledgeAlertRequest(id=first)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = await _error(api.admin.GetAlert(pb.GetAlertRequest(id="missing")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await _error(api.admin.ListAlerts(pb.ListAlertsRequest(states=[42])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "states[0]" in _fields(err)


async def _delivery(api: Api, alert_id: str, channel_id: str, state: int) -> str:
    now = datetime.now(UTC)
    delivery_id = uuid.uuid4().hex
    async with api.sessions() as session, session.begin():
        session.add(
            DeliveryRow(
                id=delivery_id,
                alert_id=alert_id,
                rule_id="r",
                channel_id=channel_id,
                kind="firing",
                state=state,
                attempts=5,
                max_attempts=5,
                next_attempt_at=None,
                last_error="connection refused",
                payload={"text": "x"},
                created_at=now,
                updated_at=now,
                dead_lettered_at=now if state == pb.DELIVERY_STATE_DEAD_LETTERED else None,
            )
        )
    return delivery_id


async def test_deliveries_list_filters_and_retry(api: Api) -> None:
    """Dead letters are listed by state/channel/alert; retry re-queues them with attempts reset."""
    alert_id, channel_id = uuid.uuid4().hex, uuid.uuid4().hex
    dead = await _delivery(api, alert_id, channel_id, pb.DELIVERY_STATE_DEAD_LETTERED)
    done = await _delivery(api, alert_id, channel_id, pb.DELIVERY_STATE_DELIVERED)
    await _delivery(api, uuid.uuid4().hex, channel_id, pb.DELIVERY_STATE_DEAD_LETTERED)
    listed = await api.admin.ListDeliveries(
        pb.ListDeliveriesRequest(states=[pb.DELIVERY_STATE_DEAD_LETTERED], alert_id=alert_id)
    )
    assert [d.id for d in listed.deliveries] == [dead]
    assert listed.deliveries[0].last_error == "connection refused"
    assert listed.deliveries[0].HasField("dead_letter_time")
    by_channel = await api.admin.ListDeliveries(pb.ListDeliveriesRequest(channel_id=channel_id))
    assert len(by_channel.deliveries) == 3
    retried = await api.admin.RetryDelivery(pb.RetryDeliveryRequest(id=dead))
    assert retried.state == pb.DELIVERY_STATE_PENDING and retried.attempts == 0
    assert not retried.HasField("dead_letter_time") and retried.HasField("next_attempt_time")
    # (The running delivery worker may pick it up at once: its later states are its own.)
    err = await _error(api.admin.RetryDelivery(pb.RetryDeliveryRequest(id=done)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = await _error(api.admin.RetryDelivery(pb.RetryDeliveryRequest(id="missing")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("principal", "method", "request_"),
    [
        ("reader", "CreateRule", pb.CreateRuleRequest()),
        ("reader", "CreateChannel", pb.CreateChannelRequest()),
        ("reader", "AcknowledgeAlert", pb.AcknowledgeAlertRequest(id="x")),
        ("reader", "CreateSilence", pb.CreateSilenceRequest()),
        ("reader", "TestChannel", pb.TestChannelRequest(id="x")),
        ("writer", "DeleteRule", pb.DeleteRuleRequest(id="x")),
        ("writer", "DeleteChannel", pb.DeleteChannelRequest(id="x")),
        ("editor", "RetryDelivery", pb.RetryDeliveryRequest(id="x")),
    ],
)
async def test_rpc_without_its_scope_is_permission_denied(
    api: Api, principal: str, method: str, request_: Any
) -> None:
    """alert:write to change, alert:delete to delete, alert:manage to retry deliveries."""
    err = await _error(getattr(api.stubs[principal], method)(request_))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_reader_can_list_everything(api: Api) -> None:
    """alert:read is enough for every Get/List."""
    reader = api.stubs["reader"]
    await reader.ListRules(pb.ListRulesRequest())
    await reader.ListChannels(pb.ListChannelsRequest())
    await reader.ListAlerts(pb.ListAlertsRequest())
    await reader.ListSilences(pb.ListSilencesRequest())
    await reader.ListDeliveries(pb.ListDeliveriesRequest())


async def test_ten_megabyte_request_is_resource_exhausted(api: Api) -> None:
    """A 10 MB request is refused by the server's message size limit before any work."""
    rule = failing_rule()
    rule.message_template = "x" * (10 * 1024 * 1024)
    # A client that would send it: the refusal must come from the server.
    big = 32 * 1024 * 1024
    async with open_channel(
        api.running.address, token=api.tokens["admin"], max_message_bytes=big
    ) as channel:
        stub: Any = alerting_pb2_grpc.AlertingServiceStub(channel)
        err = await _error(stub.CreateRule(pb.CreateRuleRequest(rule=rule)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The service still answers.
    await api.admin.ListRules(pb.ListRulesRequest(page_size=1))
