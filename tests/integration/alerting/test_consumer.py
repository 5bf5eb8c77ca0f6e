"""The alerting service on a real nats-server: every lifecycle event once,
catch-up after a restart, poison messages acknowledged, auth on its RPCs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from runbox.alerting.v1 import alerting_pb2, alerting_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.alerting.config import AlertingSettings
from services.alerting.consumer import LagMonitor
from services.alerting.metrics import AlertingMetrics
from services.alerting.models import ProcessedEvent
from services.alerting.server import DURABLE, build
from shared import db
from shared.clients import open_channel
from shared.run_subjects import run_subject
from shared.runtime import Running, build_runtime, launch
from tests.integration.helpers import settings_for

IGNORED_LOG = events_pb2.RUN_EVENT_TYPE_LOG
IGNORED_HEARTBEAT = events_pb2.RUN_EVENT_TYPE_HEARTBEAT


class Captured(logging.Handler):
    """Keeps the consumer's log records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def received(self) -> list[str]:
        return [r.event_id for r in self.records if r.getMessage() == "event received"]  # type: ignore[attr-defined]


@dataclass
class Alerting:
    """One alerting service on its own stream and subjects, plus a publisher."""

    tmp: Path
    settings: AlertingSettings
    js: JetStreamContext
    logs: Captured
    running: Running | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.settings.nats.subjects_prefix

    async def start(self) -> Running:
        self.running = await launch(build_runtime("alerting", self.settings), build)
        return self.running

    async def stop(self) -> None:
        if self.running is not None:
            await self.running.stop()
            self.running = None

    def count(self, kind: str, result: str) -> float:
        assert self.running is not None
        value = self.running.runtime.registry.get_sample_value(
            "runbox_alerting_events_consumed_total", {"kind": kind, "result": result}
        )
        return value or 0.0

    async def wait_count(self, kind: str, result: str, expected: float) -> None:
        async def poll() -> None:
            while True:
                if self.count(kind, result) >= expected:
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(poll(), 20)
        assert self.count(kind, result) == expected

    async def publish_run(self, event: events_pb2.RunEvent, msg_id: str | None = None) -> None:
        await self.js.publish(
            f"{self.prefix}.run.{event.run_id}",
            event.SerializeToString(),
            headers={"Nats-Msg-Id": msg_id or event.event_id},
        )

    async def stored_ids(self) -> list[str]:
        engine = db.create_engine(self.settings.database)
        try:
            async with db.sessionmaker(engine)() as session:
                rows = await session.scalars(select(ProcessedEvent.event_id))
                return sorted(rows)
        finally:
            await engine.dispose()


def run_event(run_id: str, seq: int, kind: int, state: int) -> events_pb2.RunEvent:
    return events_pb2.RunEvent(
        event_id=f"{run_id}:executor:1:{seq}",
        run_id=run_id,
        attempt=1,
        sequence=seq,
        type=kind,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        script_name="hello",
        script_version="1.0.0",
    )


def lifecycle(run_id: str) -> list[events_pb2.RunEvent]:
    return [
        run_event(run_id, 1, events_pb2.RUN_EVENT_TYPE_QUEUED, common_pb2.RUN_STATE_QUEUED),
        run_event(run_id, 2, events_pb2.RUN_EVENT_TYPE_STARTED, common_pb2.RUN_STATE_RUNNING),
        run_event(run_id, 3, events_pb2.RUN_EVENT_TYPE_FINISHED, common_pb2.RUN_STATE_FAILED),
    ]


@pytest.fixture
async def alerting(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[Alerting]:
    # Each test gets its own stream and subjects: the durable "alerting" and
    # the session's nats-server are shared with other tests.
    tag = uuid.uuid4().hex[:10]
    base = settings_for(
        AlertingSettings,
        tmp_path,
        "alerting",
        nats_url=nats_server.url,
        principals_file=tokens.principals_file,
        lag_poll_s=0.1,
    )
    nats_settings = {
        "url": nats_server.url,
        "stream": f"T_{tag}",
        "subjects_prefix": f"t{tag}.events",
    }
    settings = AlertingSettings.model_validate(base.model_dump() | {"nats": nats_settings})
    nc = await nats.connect(nats_server.url)
    logs = Captured()
    logger = logging.getLogger("services.alerting.consumer")
    logger.addHandler(logs)
    service = Alerting(tmp_path, settings, nc.jetstream(), logs)
    await service.start()
    yield service
    await service.stop()
    logger.removeHandler(logs)
    await nc.jetstream().delete_stream(settings.nats.stream)
    await nc.drain()


async def test_run_events_are_recorded_and_logged_once_each(alerting: Alerting) -> None:
    """Each published run event is stored and logged exactly once."""
    events = lifecycle("run-a")
    for event in events:
        await alerting.publish_run(event)
    await alerting.wait_count("run", "processed", 3)
    ids = sorted(e.event_id for e in events)
    assert await alerting.stored_ids() == ids
    assert sorted(alerting.logs.received()) == ids
    finished = next(
        r for r in alerting.logs.records if getattr(r, "event", "") == "RUN_EVENT_TYPE_FINISHED"
    )
    assert finished.run_id == "run-a"  # type: ignore[attr-defined]
    assert finished.state == "RUN_STATE_FAILED"  # type: ignore[attr-defined]
    assert finished.script == "hello"  # type: ignore[attr-defined]


async def test_every_run_event_type_reaches_alerting_on_either_subject(
    alerting: Alerting,
) -> None:
    """Each RunEvent type on its typed subject (`<prefix>.run.<id>.<type>`, what services
    publish) reaches alerting, and so does one on the subject of 0.2.0 producers
    (`<prefix>.run.<id>`): the scheduler's filters do not narrow what others get."""
    kinds = [k for k in events_pb2.RunEventType.values() if k]
    typed = [
        run_event("run-t", seq, kind, common_pb2.RUN_STATE_QUEUED)
        for seq, kind in enumerate(kinds, start=1)
    ]
    for event in typed:
        await alerting.js.publish(
            run_subject(alerting.prefix, event.run_id, event.type),
            event.SerializeToString(),
            headers={"Nats-Msg-Id": event.event_id},
        )
    old = run_event("run-o", 1, events_pb2.RUN_EVENT_TYPE_FINISHED, common_pb2.RUN_STATE_FAILED)
    await alerting.publish_run(old)  # the old subject
    # LOG and HEARTBEAT reach it too, counted "ignored" (no rule looks at them).
    await alerting.wait_count("run", "processed", len(kinds) - 2 + 1)
    await alerting.wait_count("run", "ignored", 2)
    assert alerting.count("run", "invalid") == 0
    wanted = [e for e in typed if e.type not in (IGNORED_LOG, IGNORED_HEARTBEAT)]
    assert await alerting.stored_ids() == sorted([*(e.event_id for e in wanted), old.event_id])


async def test_same_event_id_twice_is_processed_once(alerting: Alerting) -> None:
    """A republished event id (JetStream did not dedup it) is a duplicate, not a second event."""
    event = lifecycle("run-b")[0]
    await alerting.publish_run(event, msg_id="first")
    await alerting.publish_run(event, msg_id="second")
    await alerting.wait_count("run", "duplicate", 1)
    assert alerting.count("run", "processed") == 1
    assert await alerting.stored_ids() == [event.event_id]
    assert alerting.logs.received() == [event.event_id]


async def test_consumer_catches_up_after_restart(alerting: Alerting) -> None:
    """Events published while alerting is down are processed when it comes back."""
    before, *missed = lifecycle("run-c")
    await alerting.publish_run(before)
    await alerting.wait_count("run", "processed", 1)
    await alerting.stop()
    for event in missed:
        await alerting.publish_run(event)
    await alerting.start()
    await alerting.wait_count("run", "processed", 2)
    # The durable consumer resumed after its last ack: nothing was redelivered.
    assert alerting.count("run", "duplicate") == 0
    assert await alerting.stored_ids() == sorted(e.event_id for e in [before, *missed])
    assert sorted(alerting.logs.received()) == sorted(e.event_id for e in [before, *missed])


async def test_garbage_is_counted_invalid_and_consumer_keeps_going(alerting: Alerting) -> None:
    """Undecodable and meaningless messages are acked and counted; later events still flow."""
    await alerting.js.publish(f"{alerting.prefix}.run.bad", b"\xff\xff\xff garbage")
    await alerting.js.publish(f"{alerting.prefix}.run.bad", b"")
    await alerting.js.publish(f"{alerting.prefix}.nonsense.x", b"hello")
    good = lifecycle("run-d")[0]
    await alerting.publish_run(good)
    await alerting.wait_count("run", "processed", 1)
    assert alerting.count("run", "invalid") == 2
    assert alerting.count("unknown", "invalid") == 1
    assert await alerting.stored_ids() == [good.event_id]
    # Nothing waits for redelivery: the poison messages were acknowledged.
    info = await alerting.js.consumer_info(alerting.settings.nats.stream, DURABLE)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_lag_gauge_reports_undelivered_messages(alerting: Alerting) -> None:
    """With alerting stopped, the consumer's num_pending shows up in the lag gauge."""
    await alerting.stop()
    for event in lifecycle("run-e"):
        await alerting.publish_run(event)
    registry = CollectorRegistry()
    monitor = LagMonitor(
        alerting.js,
        stream=alerting.settings.nats.stream,
        durable=DURABLE,
        metrics=AlertingMetrics(registry),
        interval_s=1.0,
    )
    assert await monitor.poll_once() == 3
    assert registry.get_sample_value("runbox_alerting_consumer_lag_messages") == 3


async def test_rpc_without_token_is_unauthenticated(alerting: Alerting) -> None:
    """An alerting RPC with no bearer token is refused before anything else."""
    assert alerting.running is not None
    async with grpc.aio.insecure_channel(alerting.running.address) as channel:
        stub = alerting_pb2_grpc.AlertingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListRules(alerting_pb2.ListRulesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_rpc_without_alert_permission_is_denied(alerting: Alerting, tokens: Any) -> None:
    """A principal without alert:read cannot list rules."""
    assert alerting.running is not None
    async with open_channel(alerting.running.address, token=tokens.reader) as channel:
        stub = alerting_pb2_grpc.AlertingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListRules(alerting_pb2.ListRulesRequest())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
