"""Harness of the alerting flow tests: one alerting service on its own stream, a local
webhook receiver, and helpers to publish events and wait for what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
from google.protobuf import duration_pb2
from nats.js import JetStreamContext

from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.alerting.v1 import alerting_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.alerting.config import AlertingSettings
from services.alerting.server import build
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.integration.helpers import settings_for

SECRET = "whsec-flow-do-not-leak-5e1d"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def delivery_id(self) -> str:
        return self.headers.get("x-runbox-delivery", "")


class Receiver:
    """A local HTTP server recording every POST by path. `status[path]` sets the answer
    (default 200); a path in `hold` waits for its event before answering."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.status: dict[str, int] = {}
        self.hold: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    body = json.loads(self.rfile.read(length) or b"{}")
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    with receiver.lock:
                        receiver.requests.append(Request(self.path, headers, body))
                    held = receiver.hold.get(self.path)
                    if held is not None:
                        held.wait(30)
                    self.send_response(receiver.status.get(self.path, 200))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    return  # the sender went away (a cut-off delivery)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        for event in self.hold.values():
            event.set()
        self.server.shutdown()
        self.server.server_close()


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


@dataclass
class Flow:
    """An alerting service (restartable on its database), its API, and a receiver."""

    settings: AlertingSettings
    js: JetStreamContext
    receiver: Receiver
    admin_token: str
    running: Running | None = None
    stub: Any = None
    closers: list[Any] = field(default_factory=list)
    # A service shared by several tests keeps them apart: names, schedule ids and receiver
    # paths get the test's scope appended, metrics count from the test's start, and the
    # rules a test made are deleted after it (begin / end).
    scope: str = ""
    baseline: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    channel_ids: list[str] = field(default_factory=list)
    rule_ids: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.settings.nats.subjects_prefix

    async def start(self) -> None:
        self.running = await launch(build_runtime("alerting", self.settings), build)
        channel = open_channel(self.running.address, token=self.admin_token)
        self.closers.append(channel)
        self.stub = alerting_pb2_grpc.AlertingServiceStub(channel)

    async def stop(self) -> None:
        if self.running is not None:
            await self.running.stop()
            self.running = None
        for channel in self.closers:
            await channel.close()
        self.closers.clear()

    def begin(self) -> None:
        """Start a test on a shared service."""
        self.scope = uuid.uuid4().hex[:8]
        self.channel_ids, self.rule_ids = [], []
        self.baseline = self._samples()

    async def end(self) -> None:
        """Delete the rules the test made, so later tests' events meet none of them."""
        for rule_id in self.rule_ids:
            await self.stub.DeleteRule(pb.DeleteRuleRequest(id=rule_id))
        self.rule_ids = []

    def name(self, base: str) -> str:
        return f"{base}-{self.scope}" if self.scope and base else base

    def path(self, base: str) -> str:
        return f"/{self.scope}{base}" if self.scope else base

    def at(self, path: str) -> list[Request]:
        """Requests the receiver got on this test's `path`."""
        return self.receiver.at(self.path(path))

    def _samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        assert self.running is not None
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in self.running.runtime.registry.collect()
            for sample in metric.samples
        }

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's value since begin() (since the start when not shared)."""
        assert self.running is not None
        value = self.running.runtime.registry.get_sample_value(name, labels or {}) or 0.0
        return value - self.baseline.get((name, tuple(sorted((labels or {}).items()))), 0.0)

    async def webhook(self, path: str, *, max_attempts: int = 0, timeout_s: float = 0) -> str:
        hook = pb.WebhookChannel(
            url=self.receiver.url(self.path(path)), signing_secret=SECRET, max_attempts=max_attempts
        )
        if timeout_s:
            hook.timeout.CopyFrom(duration(timeout_s))
        channel = await self.stub.CreateChannel(
            pb.CreateChannelRequest(
                channel=pb.Channel(name=f"hook-{uuid.uuid4().hex[:8]}", webhook=hook)
            )
        )
        self.channel_ids.append(channel.id)
        return str(channel.id)

    async def rule(self, channels: list[str], **fields: Any) -> pb.Rule:
        selector = fields.pop("selector", pb.Selector(script_names=["backup"]))
        scoped = pb.Selector()
        scoped.CopyFrom(selector)
        scoped.script_names[:] = [self.name(n) for n in selector.script_names]
        scoped.schedule_ids[:] = [self.name(n) for n in selector.schedule_ids]
        fields.setdefault("severity", pb.SEVERITY_CRITICAL)
        rule = pb.Rule(
            name=f"rule-{uuid.uuid4().hex[:8]}", channel_ids=channels, selector=scoped, **fields
        )
        created: pb.Rule = await self.stub.CreateRule(pb.CreateRuleRequest(rule=rule))
        self.rule_ids.append(created.id)
        return created

    async def run_finished(
        self,
        run_id: str,
        state: int,
        *,
        script: str = "backup",
        schedule: str = "",
        at: datetime | None = None,
        took_s: float = 1.0,
        labels: dict[str, str] | None = None,
        output: bytes = b"",
    ) -> events_pb2.RunEvent:
        at = at or datetime.now(UTC)
        event = events_pb2.RunEvent(
            event_id=f"{run_id}:executor:1:9",
            run_id=run_id,
            attempt=1,
            sequence=9,
            type=events_pb2.RUN_EVENT_TYPE_FINISHED,
            state=state,  # type: ignore[arg-type]
            script_name=self.name(script),
            script_version="1.0.0",
            schedule_id=self.name(schedule),
            execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
            labels=labels or {},
        )
        event.occurred_at.FromDatetime(at)
        event.finished_at.FromDatetime(at)
        event.started_at.FromDatetime(at - timedelta(seconds=took_s))
        if output:
            event.output.stdout = output
            event.result.update({"output": output.decode()})
        if state != common_pb2.RUN_STATE_SUCCEEDED:
            event.exit.exit_code = 1
            event.exit.reason = common_pb2.FAILURE_REASON_EXIT_CODE
        await self.js.publish(
            f"{self.prefix}.run.{run_id}",
            event.SerializeToString(),
            headers={"Nats-Msg-Id": event.event_id},
        )
        return event

    async def schedule_event(self, kind: int, schedule_id: str, script: str = "backup") -> None:
        event = events_pb2.ScheduleEvent(
            event_id=f"sched-{uuid.uuid4().hex}",
            type=kind,  # type: ignore[arg-type]
            schedule_id=self.name(schedule_id),
            script_name=self.name(script),
            reason="scheduler was down past the catch-up deadline",
        )
        event.occurred_at.FromDatetime(datetime.now(UTC))
        await self.js.publish(
            f"{self.prefix}.schedule.{self.name(schedule_id)}",
            event.SerializeToString(),
            headers={"Nats-Msg-Id": event.event_id},
        )

    async def processed(self, count: int) -> None:
        """Wait until `count` events were processed (all kinds)."""
        await until(lambda: self._processed() >= count)

    def _processed(self) -> float:
        assert self.running is not None
        total = 0.0
        for metric in self.running.runtime.registry.collect():
            for sample in metric.samples:
                if (
                    sample.name == "runbox_alerting_events_consumed_total"
                    and sample.labels.get("result") == "processed"
                ):
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    total += sample.value - self.baseline.get(key, 0.0)
        return total

    async def deliveries(self, *states: pb.DeliveryState) -> list[pb.Delivery]:
        answer = await self.stub.ListDeliveries(
            pb.ListDeliveriesRequest(page_size=500, states=list(states))
        )
        if not self.scope:
            return list(answer.deliveries)
        return [d for d in answer.deliveries if d.channel_id in self.channel_ids]

    async def alerts(self, rule_id: str) -> list[pb.Alert]:
        answer = await self.stub.ListAlerts(pb.ListAlertsRequest(page_size=500, rule_id=rule_id))
        return list(answer.alerts)

    async def settle(self) -> None:
        """Wait until no delivery is pending or retrying (all delivered or dead-lettered)."""

        async def idle() -> bool:
            waiting = await self.deliveries(pb.DELIVERY_STATE_PENDING, pb.DELIVERY_STATE_RETRYING)
            return not waiting

        await until_async(idle)


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll `predicate` until it holds (bounded; no timing asserts)."""

    async def poll() -> None:
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


async def until_async(predicate: Callable[[], Any], timeout_s: float = 20.0) -> None:
    async def poll() -> None:
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)


def flow_settings(
    tmp: Path, nats_url: str, principals_file: Path, **extra: Any
) -> AlertingSettings:
    """Alerting settings for a flow test: its own stream and subjects, loopback webhooks
    allowed, quick loops and retries."""
    tag = uuid.uuid4().hex[:10]
    delivery = {
        "poll_s": 0.1,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "claim_s": 2.0,
        "drain_s": 0.2,
    } | extra.pop("delivery", {})
    base = settings_for(
        AlertingSettings,
        tmp,
        "alerting",
        nats_url=nats_url,
        principals_file=principals_file,
        lag_poll_s=0.5,
        channels={"webhook_allow": ["127.0.0.1/32"], "allow_http": True},
        delivery=delivery,
        deadman_interval_s=0.1,
        rules_cache_s=0.2,
        **extra,
    )
    nats_settings = {"url": nats_url, "stream": f"F_{tag}", "subjects_prefix": f"f{tag}.events"}
    return AlertingSettings.model_validate(base.model_dump() | {"nats": nats_settings})


@contextlib.asynccontextmanager
async def started_flow(
    tmp: Path, nats_url: str, tokens: Any, receiver: Receiver, **extra: Any
) -> AsyncIterator[Flow]:
    """A started alerting service on its own stream (deleted afterwards)."""
    settings = flow_settings(tmp, nats_url, tokens.principals_file, **extra)
    nc = await nats.connect(nats_url)
    service = Flow(settings, nc.jetstream(), receiver, tokens.admin)
    try:
        await service.start()
        yield service
    finally:
        await service.stop()
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(settings.nats.stream)
        await nc.drain()
