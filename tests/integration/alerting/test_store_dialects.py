"""The alerting store on SQLite, PostgreSQL and MariaDB: names compared byte for
byte, keyset pages over microsecond timestamps, the engine's loader with secrets,
silences in force, alert and delivery operations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting.channels import ChannelPolicy
from services.alerting.models import AlertRow, DeliveryRow, open_key
from services.alerting.server import MIGRATIONS
from services.alerting.store import AlertingStore, channel_to_proto
from shared import db
from shared.errors import FailedPrecondition
from shared.settings import DatabaseSettings


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AlertingStore]:
    await db.upgrade(MIGRATIONS, database_url)
    engine = db.create_engine(DatabaseSettings(url=database_url))
    policy = ChannelPolicy(webhook_allow=["127.0.0.1/32"], allow_http=True)
    yield AlertingStore.build(db.sessionmaker(engine), policy)
    await engine.dispose()


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def _hook(name: str, secret: str = "") -> pb.CreateChannelRequest:
    return pb.CreateChannelRequest(
        channel=pb.Channel(
            name=name,
            webhook=pb.WebhookChannel(url="http://127.0.0.1:9/h", signing_secret=secret),
        )
    )


async def test_rules_channels_and_loader_on_every_dialect(store: AlertingStore) -> None:
    """Names differing in case coexist; pages walk rules newest first; the loader sees
    enabled rules with their channels' secrets; a channel in use is not deleted."""
    channel = await store.channels.create(_hook("Hook", secret="s3cret"), actor="a")
    await store.channels.create(_hook("hook"), actor="a")
    ids = []
    for i in range(5):
        rule = pb.Rule(
            name=f"r{i}",
            condition=pb.Condition(consecutive_failures=pb.ConsecutiveFailuresCondition(count=3)),
            channel_ids=[channel.id],
        )
        ids.append((await store.rules.create(pb.CreateRuleRequest(rule=rule), actor="a")).id)
    seen: list[str] = []
    token = ""
    while True:
        rows, token = await store.rules.list(2, token)
        seen += [r.id for r in rows]
        if not token:
            break
    assert seen == list(reversed(ids))
    await store.rules.set_enabled(ids[0], False)
    loaded = await store.cache.rules()
    assert [r.id for r in loaded] == ids[1:]
    assert loaded[0].channels[0].channel.webhook.signing_secret == "s3cret"
    renamed = await store.channels.update(
        pb.UpdateChannelRequest(
            channel=pb.Channel(id=channel.id, name="Hook2"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        )
    )
    assert channel_to_proto(renamed, secrets=True).webhook.signing_secret == "s3cret"
    assert channel_to_proto(renamed).webhook.signing_secret == ""
    with pytest.raises(FailedPrecondition):
        await store.channels.delete(channel.id)


async def test_silences_alerts_and_deliveries_on_every_dialect(store: AlertingStore) -> None:
    """A silence is in force until expired; alerts page by first_seen to the microsecond;
    resolve frees the open key; retry re-queues a dead letter."""
    now = datetime.now(UTC)
    silence = pb.Silence(
        selector=pb.Selector(script_names=["x"]), ends_at=_stamp(now + timedelta(hours=1))
    )
    created = await store.silences.create(pb.CreateSilenceRequest(silence=silence), actor="a")
    assert [i for i, _ in await store.silences.active()] == [created.id]
    await store.silences.expire(created.id)
    assert await store.silences.active() == []
    assert (await store.silences.list(10, "", include_expired=False))[0] == []
    async with store.sessions() as session, session.begin():
        for i in range(3):
            session.add(
                AlertRow(
                    id=f"a{i}",
                    rule_id="r",
                    group_key=f"g{i}",
                    open_key=open_key("r", f"g{i}"),
                    state=pb.ALERT_STATE_FIRING,
                    severity=pb.SEVERITY_CRITICAL,
                    script_name="x",
                    context={},
                    first_seen=now + timedelta(microseconds=i),
                    last_seen=now,
                )
            )
        session.add(
            DeliveryRow(
                id="d1",
                alert_id="a0",
                channel_id="c",
                kind="firing",
                state=pb.DELIVERY_STATE_DEAD_LETTERED,
                attempts=5,
                payload={},
                created_at=now,
                updated_at=now,
                dead_lettered_at=now,
            )
        )
    request = pb.ListAlertsRequest(page_size=2, states=[pb.ALERT_STATE_FIRING], script_name="x")
    rows, token = await store.alerts.list(request)
    assert [r.id for r in rows] == ["a2", "a1"] and token
    rows, token = await store.alerts.list(pb.ListAlertsRequest(page_size=2, page_token=token))
    assert [r.id for r in rows] == ["a0"] and not token
    resolved = await store.alerts.resolve("a0", "done", actor="me")
    assert resolved.open_key is None and resolved.resolved_by == "me"
    retried = await store.deliveries.retry("d1")
    assert (retried.state, retried.attempts) == (pb.DELIVERY_STATE_PENDING, 0)
