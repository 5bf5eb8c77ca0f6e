"""Rules end to end: RunEvents and ScheduleEvents published to a real JetStream, a real
alerting service on SQLite, webhooks received by a local HTTP server. Each test asserts
exactly which notifications arrive."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2

from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2 as c
from runbox.events.v1 import events_pb2 as ev
from services.alerting.config import AlertingSettings
from services.catalogue.config import CatalogueSettings
from services.catalogue.server import build as build_catalogue
from shared.clients import open_channel
from shared.runtime import build_runtime, launch
from tests.integration.alerting.flow import (
    SECRET,
    Flow,
    Receiver,
    duration,
    flow_settings,
    started_flow,
    until,
    until_async,
)
from tests.integration.helpers import settings_for

pytestmark = pytest.mark.asyncio(loop_scope="module")
FAILED = c.RUN_STATE_FAILED
SUCCEEDED = c.RUN_STATE_SUCCEEDED


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    tmp_path_factory: pytest.TempPathFactory,
    nats_server: Any,
    tokens: Any,
    shared_receiver: Receiver,
) -> AsyncIterator[Flow]:
    """One alerting service for the tests that need no restart (starting one per test
    costs about two seconds); each test is kept apart by Flow.begin / end."""
    tmp = tmp_path_factory.mktemp("alerting-flow")
    async with started_flow(tmp, nats_server.url, tokens, shared_receiver) as service:
        yield service


@pytest_asyncio.fixture(loop_scope="module")
async def flow(shared: Flow) -> AsyncIterator[Flow]:
    shared.begin()
    yield shared
    await shared.end()


def on_failed() -> pb.Condition:
    return pb.Condition(on_state=pb.OnStateCondition(states=[FAILED]))


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


async def test_failures_within_dedup_window_notify_once(flow: Flow) -> None:
    """Three failures of one script: one alert with 3 occurrences, one signed webhook."""
    hook = await flow.webhook("/ops")
    rule = await flow.rule([hook], condition=on_failed(), dedup_window=duration(600))
    for _ in range(3):
        await flow.run_finished(run_id(), FAILED, output=b"api_key=leaked-output-value")
    await flow.processed(3)
    await flow.settle()
    [request] = flow.at("/ops")
    assert "leaked-output-value" not in str(request.body)  # output and results stay out
    assert request.body["kind"] == "firing" and request.body["rule_id"] == rule.id
    assert request.body["context"]["script_name"] == flow.name("backup")
    assert request.body["context"]["state"] == "FAILED"
    assert SECRET not in str(request.body) and SECRET not in str(request.headers)
    assert request.headers["x-runbox-signature"].startswith("t=")
    [alert] = await flow.alerts(rule.id)
    assert alert.state == pb.ALERT_STATE_FIRING and alert.occurrences == 3
    [delivery] = await flow.deliveries()
    assert delivery.state == pb.DELIVERY_STATE_DELIVERED and delivery.attempts == 1
    assert request.delivery_id == delivery.id
    assert flow.metric("runbox_alerting_alerts_fired_total", {"severity": "critical"}) == 1
    assert flow.metric("runbox_alerting_notifications_suppressed_total", {"reason": "dedup"}) == 2
    assert (
        flow.metric(
            "runbox_alerting_deliveries_total", {"channel": "webhook", "outcome": "delivered"}
        )
        == 1
    )
    assert flow.metric("runbox_alerting_delivery_latency_seconds_count", {"channel": "webhook"})


async def test_other_script_and_unselected_states_do_not_notify(flow: Flow) -> None:
    """A failure of another script and a cancelled run of the selected one notify nobody."""
    hook = await flow.webhook("/ops")
    await flow.rule([hook], condition=on_failed())
    await flow.run_finished(run_id(), FAILED, script="other")
    await flow.run_finished(run_id(), c.RUN_STATE_CANCELLED)
    await flow.run_finished(run_id(), FAILED)  # the one that counts, last
    await flow.processed(3)
    await until(lambda: len(flow.at("/ops")) >= 1)
    await flow.settle()
    [request] = flow.at("/ops")
    assert request.body["context"]["script_name"] == flow.name("backup")


async def test_recovery_resolves_alert_and_sends_resolved_notice(flow: Flow) -> None:
    """A success after a failure resolves the alert and sends one 'resolved' notice."""
    hook = await flow.webhook("/ops")
    rule = await flow.rule([hook], condition=on_failed(), notify_recovery=True)
    now = datetime.now(UTC)
    await flow.run_finished(run_id(), FAILED, at=now)
    await flow.run_finished(run_id(), SUCCEEDED, at=now + timedelta(seconds=1))
    await flow.run_finished(run_id(), SUCCEEDED, at=now + timedelta(seconds=2))
    await flow.processed(3)
    await flow.settle()
    kinds = [r.body["kind"] for r in flow.at("/ops")]
    assert sorted(kinds) == ["firing", "resolved"]
    [alert] = await flow.alerts(rule.id)
    assert alert.state == pb.ALERT_STATE_RESOLVED
    assert flow.metric("runbox_alerting_alerts_resolved_total") == 1


async def test_failure_after_recovery_fires_a_new_alert(flow: Flow) -> None:
    """fail, succeed, fail: two alerts (the first resolved), two firing notices, no recovery
    notice when the rule does not ask for one."""
    hook = await flow.webhook("/ops")
    rule = await flow.rule([hook], condition=on_failed(), dedup_window=duration(600))
    now = datetime.now(UTC)
    await flow.run_finished(run_id(), FAILED, at=now)
    await flow.run_finished(run_id(), SUCCEEDED, at=now + timedelta(seconds=1))
    await flow.run_finished(run_id(), FAILED, at=now + timedelta(seconds=2))
    await flow.processed(3)
    await flow.settle()
    assert [r.body["kind"] for r in flow.at("/ops")] == ["firing", "firing"]
    states = sorted(a.state for a in await flow.alerts(rule.id))
    assert states == [pb.ALERT_STATE_FIRING, pb.ALERT_STATE_RESOLVED]


async def test_consecutive_failures_fire_at_the_count(flow: Flow) -> None:
    """Two failures do not fire a 3-in-a-row rule, the third does (once)."""
    hook = await flow.webhook("/ops")
    rule = await flow.rule(
        [hook],
        condition=pb.Condition(consecutive_failures=pb.ConsecutiveFailuresCondition(count=3)),
    )
    now = datetime.now(UTC)
    for i in range(2):
        await flow.run_finished(run_id(), FAILED, at=now + timedelta(seconds=i))
    await flow.processed(2)
    assert await flow.alerts(rule.id) == []
    for i in range(2, 4):
        await flow.run_finished(run_id(), FAILED, at=now + timedelta(seconds=i))
    await flow.processed(4)
    await flow.settle()
    [request] = flow.at("/ops")
    assert "3 times in a row" in request.body["title"]
    [alert] = await flow.alerts(rule.id)
    assert alert.occurrences == 2  # the 4th failure is the same incident


async def test_failure_rate_fires_above_threshold(flow: Flow) -> None:
    """Rate 1/3 is under a 50% threshold; 2/4 is not above it; 3/5 fires."""
    hook = await flow.webhook("/ops")
    condition = pb.FailureRateCondition(window=duration(3600), threshold=0.5, min_runs=3)
    rule = await flow.rule([hook], condition=pb.Condition(failure_rate=condition))
    now = datetime.now(UTC)
    states = [SUCCEEDED, SUCCEEDED, FAILED, FAILED]
    for i, state in enumerate(states):
        await flow.run_finished(run_id(), state, at=now + timedelta(seconds=i))
    await flow.processed(4)
    assert await flow.alerts(rule.id) == []
    await flow.run_finished(run_id(), FAILED, at=now + timedelta(seconds=5))
    await flow.processed(5)
    await flow.settle()
    [request] = flow.at("/ops")
    assert "3 of 5" in request.body["title"]


async def test_duration_over_threshold_fires(flow: Flow) -> None:
    """A success that took longer than `above` notifies; a quick one does not."""
    hook = await flow.webhook("/ops")
    condition = pb.DurationCondition(above=duration(30))
    await flow.rule([hook], condition=pb.Condition(duration=condition))
    await flow.run_finished(run_id(), SUCCEEDED, took_s=5)
    await flow.run_finished(run_id(), SUCCEEDED, took_s=45)
    await flow.processed(2)
    await flow.settle()
    [request] = flow.at("/ops")
    assert request.body["context"]["duration_s"] == 45


async def test_throttle_limits_notifications_per_rule_and_channel(flow: Flow) -> None:
    """Five distinct alerts (grouped per run) with a limit of 2 per window: 2 webhooks."""
    hook = await flow.webhook("/ops")
    await flow.rule(
        [hook],
        condition=on_failed(),
        group_key="{{ run_id }}",
        throttle_limit=2,
        throttle_window=duration(3600),
    )
    for _ in range(5):
        await flow.run_finished(run_id(), FAILED)
    await flow.processed(5)
    await flow.settle()
    assert len(flow.at("/ops")) == 2
    assert len(await flow.deliveries()) == 2
    assert (
        flow.metric("runbox_alerting_notifications_suppressed_total", {"reason": "throttle"}) == 3
    )
    assert flow.metric("runbox_alerting_alerts_fired_total", {"severity": "critical"}) == 5


async def test_silence_suppresses_notifications_but_records_the_alert(flow: Flow) -> None:
    """A failure inside a silence of its script is an alert without a notification; another
    script's failure still notifies."""
    hook = await flow.webhook("/ops")
    selector = pb.Selector(script_names=["backup", "report"])
    rule = await flow.rule([hook], condition=on_failed(), selector=selector)
    silence = pb.Silence(
        selector=pb.Selector(script_names=[flow.name("backup")]), comment="maintenance"
    )
    silence.starts_at.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    silence.ends_at.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    await flow.stub.CreateSilence(pb.CreateSilenceRequest(silence=silence))
    await flow.run_finished(run_id(), FAILED)
    await flow.run_finished(run_id(), FAILED, script="report")
    await flow.processed(2)
    await flow.settle()
    [request] = flow.at("/ops")
    assert request.body["context"]["script_name"] == flow.name("report")
    alerts = await flow.alerts(rule.id)
    assert sorted(a.script_name for a in alerts) == [flow.name("backup"), flow.name("report")]
    assert flow.metric("runbox_alerting_notifications_suppressed_total", {"reason": "silence"}) == 1


async def test_fire_missed_notifies_and_skipped_only_when_asked(flow: Flow) -> None:
    """FIRE_MISSED notifies a fire-missed rule; FIRE_SKIPPED does not without include_skipped."""
    hook = await flow.webhook("/ops")
    await flow.rule(
        [hook],
        condition=pb.Condition(fire_missed=pb.FireMissedCondition()),
        selector=pb.Selector(schedule_ids=["sched-1"]),
    )
    await flow.schedule_event(ev.SCHEDULE_EVENT_TYPE_FIRE_SKIPPED, "sched-1")
    await flow.schedule_event(ev.SCHEDULE_EVENT_TYPE_FIRE_MISSED, "sched-2")
    await flow.schedule_event(ev.SCHEDULE_EVENT_TYPE_FIRE_MISSED, "sched-1")
    await flow.processed(3)
    await flow.settle()
    [request] = flow.at("/ops")
    assert request.body["context"]["schedule_id"] == flow.name("sched-1")
    assert "missed a fire" in request.body["title"]


async def test_dead_mans_switch_fires_once_per_silence_and_resolves_on_success(
    flow: Flow,
) -> None:
    """No success of the schedule within 1 s: one alert (not one per check); a success
    resolves it with a recovery notice; the next silence fires a new one."""
    hook = await flow.webhook("/ops")
    condition = pb.DeadMansSwitchCondition(expected_within=duration(1))
    rule = await flow.rule(
        [hook],
        condition=pb.Condition(dead_mans_switch=condition),
        selector=pb.Selector(schedule_ids=["nightly"]),
        notify_recovery=True,
    )
    await until(lambda: len(flow.at("/ops")) >= 1)
    # More checks (every 0.1 s) while the silence goes on, and a failure: still one alert.
    await flow.run_finished(run_id(), FAILED, schedule="nightly")
    await flow.processed(1)
    await asyncio.sleep(0.5)
    assert flow.metric("runbox_alerting_alerts_fired_total", {"severity": "critical"}) == 1
    assert len(flow.at("/ops")) == 1
    await flow.run_finished(run_id(), SUCCEEDED, schedule="nightly")
    await until(lambda: len(flow.at("/ops")) >= 2)
    first, second = flow.at("/ops")[:2]
    assert first.body["kind"] == "firing" and "nightly" in first.body["title"]
    assert second.body["kind"] == "resolved"
    await until(lambda: len(flow.at("/ops")) >= 3)  # silent again past 1 s
    assert flow.at("/ops")[2].body["kind"] == "firing"
    states = sorted(a.state for a in await flow.alerts(rule.id))
    assert states[-1] == pb.ALERT_STATE_RESOLVED and states.count(pb.ALERT_STATE_RESOLVED) == 1


async def test_events_published_while_down_notify_exactly_once_after_restart(
    tmp_path: Path, nats_server: Any, tokens: Any, receiver: Receiver
) -> None:
    """Alerting stopped, 20 failures of two scripts published, alerting started: exactly one
    notification per script (dedup), each received once, every event processed once."""
    async with started_flow(tmp_path, nats_server.url, tokens, receiver) as flow:
        hook = await flow.webhook("/ops")
        selector = pb.Selector(script_names=["backup", "report"])
        rule = await flow.rule(
            [hook], condition=on_failed(), selector=selector, dedup_window=duration(3600)
        )
        await flow.stop()
        now = datetime.now(UTC)
        for i in range(20):
            script = "backup" if i % 2 else "report"
            await flow.run_finished(run_id(), FAILED, script=script, at=now + timedelta(seconds=i))
        await flow.start()
        await flow.processed(20)
        await flow.settle()
        requests = flow.at("/ops")
        assert sorted(r.body["context"]["script_name"] for r in requests) == ["backup", "report"]
        assert len({r.delivery_id for r in requests}) == 2
        alerts = await flow.alerts(rule.id)
        assert sorted(a.occurrences for a in alerts) == [10, 10]
        assert (
            flow.metric(
                "runbox_alerting_events_consumed_total", {"kind": "run", "result": "duplicate"}
            )
            == 0
        )


async def test_redelivered_event_id_changes_nothing(flow: Flow) -> None:
    """The same FINISHED event under two message ids counts once and notifies once."""
    hook = await flow.webhook("/ops")
    rule = await flow.rule([hook], condition=on_failed(), group_key="{{ run_id }}")
    event = await flow.run_finished(run_id(), FAILED)
    await flow.js.publish(
        f"{flow.prefix}.run.{event.run_id}",
        event.SerializeToString(),
        headers={"Nats-Msg-Id": f"other-{event.event_id}"},
    )

    async def counted() -> bool:
        return (
            flow.metric(
                "runbox_alerting_events_consumed_total", {"kind": "run", "result": "duplicate"}
            )
            == 1
        )

    await until_async(counted)
    await flow.settle()
    assert len(flow.at("/ops")) == 1
    [alert] = await flow.alerts(rule.id)
    assert alert.occurrences == 1


async def test_script_tag_selector_uses_catalogue_tags_and_follows_changes(
    tmp_path: Path, nats_server: Any, tokens: Any, receiver: Receiver
) -> None:
    """A rule on tag "ops" notifies for a script the real catalogue tags "ops", not for an
    untagged one; once that one is tagged (its ScriptEvent drops the cached tags), it does."""
    settings = flow_settings(tmp_path, nats_server.url, tokens.principals_file)
    nats_settings = settings.nats.model_dump()
    catalogue_settings = settings_for(
        CatalogueSettings,
        tmp_path,
        "catalogue",
        nats_url=nats_server.url,
        principals_file=tokens.principals_file,
        blob_dir=str(tmp_path / "blobs"),
    )
    catalogue_settings = CatalogueSettings.model_validate(
        catalogue_settings.model_dump() | {"nats": nats_settings}
    )
    catalogue = await launch(build_runtime("catalogue", catalogue_settings), build_catalogue)
    auth = {"principals_file": str(tokens.principals_file), "service_token": tokens.service}
    settings = AlertingSettings.model_validate(
        settings.model_dump()
        | {"auth": auth, "catalogue": {"address": catalogue.address, "timeout_s": 5}}
    )
    nc = await nats.connect(nats_server.url)
    flow = Flow(settings, nc.jetstream(), receiver, tokens.admin)
    scripts = open_channel(catalogue.address, token=tokens.admin)
    try:
        await flow.start()
        stub = catalogue_pb2_grpc.CatalogueServiceStub(scripts)
        for name, tags in (("tagged", ["ops"]), ("plain", [])):
            script = catalogue_pb2.Script(
                name=name, execution_type=c.EXECUTION_TYPE_PYTHON, tags=tags
            )
            await stub.CreateScript(catalogue_pb2.CreateScriptRequest(script=script))
        hook = await flow.webhook("/ops")
        selector = pb.Selector(script_tags=["ops"])
        await flow.rule([hook], condition=on_failed(), selector=selector, group_key="{{ run_id }}")
        await until(lambda: script_events(flow) >= 2)  # the two CREATED events
        await flow.run_finished(run_id(), FAILED, script="plain")
        await flow.run_finished(run_id(), FAILED, script="tagged")
        await until(lambda: len(receiver.at("/ops")) >= 1)
        await flow.settle()
        assert [r.body["context"]["script_name"] for r in receiver.at("/ops")] == ["tagged"]
        assert receiver.at("/ops")[0].body["context"]["script_tags"] == ["ops"]
        seen = script_events(flow)
        await stub.UpdateScript(
            catalogue_pb2.UpdateScriptRequest(
                script=catalogue_pb2.Script(name="plain", tags=["ops"]),
                update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
            )
        )
        await until(lambda: script_events(flow) > seen)  # the catalogue's UPDATED event
        await flow.run_finished(run_id(), FAILED, script="plain")
        await until(lambda: len(receiver.at("/ops")) == 2)
        assert receiver.at("/ops")[1].body["context"]["script_name"] == "plain"
    finally:
        await scripts.close(None)
        await flow.stop()
        await catalogue.stop()
        await nc.jetstream().delete_stream(settings.nats.stream)
        await nc.drain()


def script_events(flow: Flow) -> float:
    return flow.metric(
        "runbox_alerting_events_consumed_total", {"kind": "script", "result": "processed"}
    )


async def test_an_oversized_event_is_refused_and_a_large_one_never_blocks_the_others(
    flow: Flow,
) -> None:
    """A 10 MB event body never reaches the stream: NATS refuses it at publish (its payload
    limit, 1 MB by default), so no consumer can be held up by one. An event near the limit
    (800 KB of run output) is processed like any other: its notification stays small (the
    context carries no run output) and the event after it notifies too."""
    hook = await flow.webhook("/big")
    await flow.rule([hook], condition=on_failed(), group_key="{{ run_id }}")
    with pytest.raises(nats.errors.MaxPayloadError):
        await flow.run_finished(run_id(), FAILED, output=b"x" * 10_000_000)
    large = await flow.run_finished(run_id(), FAILED, output=b"y" * 400_000)
    after = await flow.run_finished(run_id(), FAILED)
    await until(lambda: len(flow.at("/big")) >= 2)
    requests = flow.at("/big")
    assert sorted(r.body["context"]["run_id"] for r in requests) == sorted(
        [large.run_id, after.run_id]
    )
    for request in requests:
        assert "yyyy" not in str(request.body)
        assert len(str(request.body)) < 16_384
