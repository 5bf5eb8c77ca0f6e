"""The delivery worker end to end: retries with backoff until dead-lettered (and replay),
channel isolation, and at-least-once delivery across a stop mid-send."""

from __future__ import annotations

import threading
import uuid

from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.common.v1 import common_pb2 as c
from services.alerting.delivery import backoff_s
from tests.integration.alerting.flow import Flow, until, until_async


def on_failed() -> pb.Condition:
    return pb.Condition(on_state=pb.OnStateCondition(states=[c.RUN_STATE_FAILED]))


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:12]}"


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    """Attempt n waits initial * 2^(n-1) plus up to `initial` of jitter, at most max."""
    for attempt, low in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)):
        delay = backoff_s(attempt, 1.0, 100.0)
        assert low <= delay <= low + 1.0
    assert backoff_s(30, 1.0, 60.0) == 60.0


async def test_failing_webhook_is_retried_then_dead_lettered_other_channel_delivers(
    flow: Flow,
) -> None:
    """A webhook answering 500 is tried max_attempts times (same delivery id) and dead-
    lettered; the rule's other channel gets its notification; RetryDelivery replays it."""
    flow.receiver.status["/broken"] = 500
    broken = await flow.webhook("/broken", max_attempts=3)
    ok = await flow.webhook("/ok")
    await flow.rule([broken, ok], condition=on_failed())
    await flow.run_finished(run_id(), c.RUN_STATE_FAILED)
    await until(lambda: len(flow.receiver.at("/ok")) == 1)

    async def dead() -> bool:
        return bool(await flow.deliveries(pb.DELIVERY_STATE_DEAD_LETTERED))

    await until_async(dead)
    [dead_letter] = await flow.deliveries(pb.DELIVERY_STATE_DEAD_LETTERED)
    assert dead_letter.channel_id == broken and dead_letter.attempts == 3
    assert "500" in dead_letter.last_error
    attempts = flow.receiver.at("/broken")
    assert len(attempts) == 3 and {r.delivery_id for r in attempts} == {dead_letter.id}
    assert (
        flow.metric(
            "runbox_alerting_deliveries_total", {"channel": "webhook", "outcome": "dead_lettered"}
        )
        == 1
    )
    assert (
        flow.metric(
            "runbox_alerting_deliveries_total", {"channel": "webhook", "outcome": "retrying"}
        )
        == 2
    )
    flow.receiver.status["/broken"] = 200
    await flow.stub.RetryDelivery(pb.RetryDeliveryRequest(id=dead_letter.id))
    await until(lambda: len(flow.receiver.at("/broken")) == 4)
    await flow.settle()
    assert len(await flow.deliveries(pb.DELIVERY_STATE_DELIVERED)) == 2
    assert len(flow.receiver.at("/ok")) == 1


async def test_slow_channel_does_not_block_other_channels(flow: Flow) -> None:
    """While one receiver holds every request open, the other channel's notifications of
    later events still arrive."""
    held = threading.Event()
    flow.receiver.hold["/slow"] = held
    slow = await flow.webhook("/slow", timeout_s=20)
    fast = await flow.webhook("/fast")
    await flow.rule([slow, fast], condition=on_failed(), group_key="{{ run_id }}")
    for _ in range(6):  # more than the per-channel limit of sends in flight
        await flow.run_finished(run_id(), c.RUN_STATE_FAILED)
    # Every /fast notification arrives while /slow fills its per-channel limit (4 in flight)
    # with requests it never answers; none ends, so a fifth could only start past the limit.
    await until(lambda: len(flow.receiver.at("/fast")) == 6 and len(flow.receiver.at("/slow")) >= 4)
    assert not held.is_set()
    assert len(flow.receiver.at("/slow")) == 4
    held.set()
    await until(lambda: len(flow.receiver.at("/slow")) == 6)
    await flow.settle()
    assert len(await flow.deliveries(pb.DELIVERY_STATE_DELIVERED)) == 12


async def test_stopped_mid_delivery_is_delivered_after_restart(flow: Flow) -> None:
    """Alerting stops while a webhook request is in flight; restarted on the same database
    it sends the delivery again (same id, at most twice) and it ends DELIVERED."""
    held = threading.Event()
    flow.receiver.hold["/hook"] = held
    hook = await flow.webhook("/hook", timeout_s=20)
    await flow.rule([hook], condition=on_failed())
    await flow.run_finished(run_id(), c.RUN_STATE_FAILED)
    await until(lambda: len(flow.receiver.at("/hook")) == 1)
    await flow.stop()  # cuts the send off after drain_s; the row stays claimed
    del flow.receiver.hold["/hook"]
    held.set()
    await flow.start()
    await until(lambda: len(flow.receiver.at("/hook")) == 2)
    await flow.settle()
    [delivery] = await flow.deliveries()
    assert delivery.state == pb.DELIVERY_STATE_DELIVERED
    assert {r.delivery_id for r in flow.receiver.at("/hook")} == {delivery.id}
    assert len(flow.receiver.at("/hook")) == 2
