"""Alerting end to end with real runs and a real kill: runs that fail while alerting is down
are notified exactly once after it comes back, and a delivery cut off by kill -9 of the
alerting process is delivered after a restart (at least once, never a new delivery).

The test owns a nats-server; catalogue, local-backend executor and scheduler run in its
process (tests/integration/stack.py), real gRPC servers on SQLite. The alerting service runs
as `python -m services.alerting` on its own SQLite file (like the scheduler processes of
tests/e2e/test_scheduler_faults.py), so it can be stopped, SIGKILLed and started again on
the same database. Webhooks go to an HTTP server in the test that records each request's
raw body, so signatures are checked as a receiver would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf import duration_pb2
from nats.js import JetStreamContext

from cli import natsd
from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.alerting.v1 import alerting_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.alerting.channels import verify_signature
from services.alerting.server import DURABLE
from shared.clients import open_channel
from shared.settings import NatsSettings
from tests.conftest import Tokens, require
from tests.e2e.serving import wait_serving
from tests.e2e.test_scheduler_faults import TERMINAL, eventually, get
from tests.integration.stack import RunPath, start_run_path

RS = common_pb2
SECRET = "whsec-e2e-do-not-leak-91c4"
SCRIPT = "doomed"
FAILING = "import sys\nprint('doomed', flush=True)\nsys.exit(3)\n"
RUNS = 20
# A webhook answer may take this long; a claimed delivery is sent again after CLAIM_S (above
# the timeout, as docs/alerting.md asks), so a killed worker's delivery waits that long.
WEBHOOK_TIMEOUT_S = 4
CLAIM_S = 5
SETTLED = (pb.DELIVERY_STATE_DELIVERED, pb.DELIVERY_STATE_DEAD_LETTERED)
STREAM = NatsSettings().stream  # the default stream every service of the stack uses


@dataclass(frozen=True)
class Hook:
    """One request the receiver got, with the body as sent (signatures cover the bytes)."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def delivery_id(self) -> str:
        return self.headers.get("x-runbox-delivery", "")

    @property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


class HookReceiver:
    """A local webhook receiver. Until `release` is set it holds every request unanswered
    (`in_hand` says one arrived); from then on it answers 200 at once."""

    def __init__(self) -> None:
        self.requests: list[Hook] = []
        self.lock = threading.Lock()
        self.in_hand = threading.Event()
        self.release = threading.Event()
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    with receiver.lock:
                        receiver.requests.append(Hook(self.path, headers, body))
                    if not receiver.release.is_set():
                        receiver.in_hand.set()
                        receiver.release.wait(60)
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    return  # the sender is gone (killed mid-delivery)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def hold(self) -> None:
        """Leave requests unanswered until `release` is set."""
        self.release.clear()

    def got(self) -> list[Hook]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class AlertingProcess:
    """`python -m services.alerting` on a fixed port and SQLite file: stopped (SIGTERM),
    killed (SIGKILL) and started again on the same database."""

    def __init__(self, tmp: Path, env: dict[str, str], token: str) -> None:
        self._log = tmp / "alerting.log"
        self._env = env
        self._token = token
        self.address = f"127.0.0.1:{env['RUNBOX_GRPC__PORT']}"
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: grpc.aio.Channel | None = None

    async def start(self) -> alerting_pb2_grpc.AlertingServiceAsyncStub:
        """Start it, wait until it serves, and return a client on a fresh channel."""
        with self._log.open("ab") as out:  # the child keeps its own descriptor
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.alerting",
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        await self._wait_serving()
        self.channel = open_channel(self.address, token=self._token)
        return alerting_pb2_grpc.AlertingServiceStub(self.channel)

    async def _wait_serving(self) -> None:
        assert self.proc is not None
        await wait_serving(self.address, self.proc, self._log, "alerting")

    async def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._close_channel()

    async def stop(self) -> None:
        """SIGTERM (a graceful stop), and wait until it is gone."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            assert self.proc.returncode == 0, self._log.read_text(errors="replace")[-3000:]
        await self._close_channel()

    async def _close_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None


def alerting_env(stack: RunPath) -> dict[str, str]:
    """The alerting process's environment: loopback webhooks allowed, quick loops."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
    return env | {
        "RUNBOX_INSTANCE_ID": "alerting-e2e",
        "RUNBOX_GRPC__HOST": "127.0.0.1",
        "RUNBOX_GRPC__PORT": str(natsd.free_port()),
        "RUNBOX_METRICS__PORT": "-1",
        "RUNBOX_DATABASE__URL": f"sqlite+aiosqlite:///{stack.tmp / 'alerting.db'}",
        "RUNBOX_NATS__URL": stack.nats_url,
        "RUNBOX_AUTH__PRINCIPALS_FILE": str(stack.tokens.principals_file),
        "RUNBOX_AUTH__SERVICE_TOKEN": stack.tokens.service,
        "RUNBOX_CATALOGUE__ADDRESS": stack.catalogue.address,
        "RUNBOX_CHANNELS__WEBHOOK_ALLOW": json.dumps(["127.0.0.1/32"]),
        "RUNBOX_CHANNELS__ALLOW_HTTP": "true",
        "RUNBOX_DELIVERY__POLL_S": "0.2",
        "RUNBOX_DELIVERY__BACKOFF_INITIAL_S": "0.2",
        "RUNBOX_DELIVERY__BACKOFF_MAX_S": "1",
        "RUNBOX_DELIVERY__CLAIM_S": str(CLAIM_S),
        "RUNBOX_DELIVERY__DRAIN_S": "1",
        "RUNBOX_RULES_CACHE_S": "0.5",
        "RUNBOX_LAG_POLL_S": "1",
        "RUNBOX_LOG__JSON_FORMAT": "false",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
async def stack(tmp_path: Path, tokens: Tokens) -> AsyncIterator[RunPath]:
    """The test's own nats-server (alerting's durable consumer sees only this test's
    events), and catalogue, executor and scheduler on it. No quarantine: 20 failures in a
    row leave the script runnable."""
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    server = await asyncio.to_thread(natsd.start, tmp_path / "nats", log_file=tmp_path / "nats.log")
    try:
        running = await start_run_path(
            tmp_path, server.url, tokens, scheduler={"quarantine_failures": 0}
        )
        try:
            yield running
        finally:
            await running.close()
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def alerting(stack: RunPath) -> AsyncIterator[AlertingProcess]:
    """The alerting process (not started yet); stopped after the test."""
    process = AlertingProcess(stack.tmp, alerting_env(stack), stack.tokens.admin)
    try:
        yield process
    finally:
        with contextlib.suppress(AssertionError):
            await process.stop()


@pytest.fixture
async def jetstream(stack: RunPath) -> AsyncIterator[JetStreamContext]:
    """A client of the stack's JetStream, to read alerting's consumer state."""
    nc = await nats.connect(stack.nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    server = HookReceiver()
    yield server
    server.close()


@pytest.fixture
async def scheduler(stack: RunPath) -> AsyncIterator[scheduler_pb2_grpc.SchedulerServiceAsyncStub]:
    """A client of the scheduler."""
    async with open_channel(stack.scheduler.address, token=stack.tokens.admin) as channel:
        yield scheduler_pb2_grpc.SchedulerServiceStub(channel)


async def submit_failing(stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub) -> scheduler_pb2.Run:
    """A run of the failing script that is not retried."""
    return await stub.SubmitRun(
        scheduler_pb2.SubmitRunRequest(
            script=RS.ScriptRef(name=SCRIPT), retry=RS.RetryPolicy(max_attempts=1)
        )
    )


async def ended(
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, run: scheduler_pb2.Run
) -> scheduler_pb2.Run:
    return await eventually(lambda: get(stub, run.id), lambda r: r.state in TERMINAL, 40)


def seconds(value: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(value))


async def webhook(api: alerting_pb2_grpc.AlertingServiceAsyncStub, url: str) -> str:
    """A signed webhook channel to the receiver; returns its id."""
    hook = pb.WebhookChannel(
        url=url, signing_secret=SECRET, timeout=seconds(WEBHOOK_TIMEOUT_S), max_attempts=5
    )
    channel = await api.CreateChannel(
        pb.CreateChannelRequest(channel=pb.Channel(name="ops-hook", webhook=hook))
    )
    return str(channel.id)


async def rule(
    api: alerting_pb2_grpc.AlertingServiceAsyncStub,
    name: str,
    channel_id: str,
    condition: pb.Condition,
    **fields: Any,
) -> pb.Rule:
    created: pb.Rule = await api.CreateRule(
        pb.CreateRuleRequest(
            rule=pb.Rule(
                name=name,
                selector=pb.Selector(script_names=[SCRIPT]),
                condition=condition,
                severity=pb.SEVERITY_CRITICAL,
                channel_ids=[channel_id],
                **fields,
            )
        )
    )
    return created


def on_failed() -> pb.Condition:
    return pb.Condition(on_state=pb.OnStateCondition(states=[RS.RUN_STATE_FAILED]))


async def deliveries(api: alerting_pb2_grpc.AlertingServiceAsyncStub) -> list[pb.Delivery]:
    answer = await api.ListDeliveries(pb.ListDeliveriesRequest(page_size=500))
    return list(answer.deliveries)


async def alerts(api: alerting_pb2_grpc.AlertingServiceAsyncStub, rule_id: str) -> list[pb.Alert]:
    answer = await api.ListAlerts(pb.ListAlertsRequest(page_size=500, rule_id=rule_id))
    return list(answer.alerts)


async def consumer_caught_up(js: JetStreamContext, *, acked: bool = True) -> bool:
    """Whether alerting's durable consumer has handed out (and, with `acked`, had
    acknowledged) every event in the stream."""
    info = await js.consumer_info(STREAM, DURABLE, timeout=2)
    return (info.num_pending or 0) == 0 and (not acked or (info.num_ack_pending or 0) == 0)


async def settled(
    api: alerting_pb2_grpc.AlertingServiceAsyncStub, js: JetStreamContext, *, acked: bool = True
) -> list[pb.Delivery] | None:
    """Every event consumed and every delivery made finished, or None (not yet). With
    `acked`, nothing more can be sent once this holds: no event is left to make one."""
    if not await consumer_caught_up(js, acked=acked):
        return None
    found = await deliveries(api)
    return found if found and all(d.state in SETTLED for d in found) else None


def signed(hook: Hook) -> bool:
    return verify_signature(SECRET, hook.headers.get("x-runbox-signature", ""), hook.body)


async def test_failures_while_alerting_down_notified_once_after_restart(
    stack: RunPath,
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
    alerting: AlertingProcess,
    receiver: HookReceiver,
    jetstream: JetStreamContext,
) -> None:
    """Alerting stopped, 20 runs fail, alerting started on the same database: one signed
    notification per failed run and one for the streak of 20, each delivery id once."""
    await stack.publish(SCRIPT, FAILING)
    api = await alerting.start()
    channel_id = await webhook(api, receiver.url("/ops"))
    per_run = await rule(
        api, "each-failure", channel_id, on_failed(), group_key="{{ rule_id }}:{{ run_id }}"
    )
    streak = await rule(
        api,
        "twenty-in-a-row",
        channel_id,
        pb.Condition(consecutive_failures=pb.ConsecutiveFailuresCondition(count=RUNS)),
    )
    await alerting.stop()

    runs = [await submit_failing(scheduler) for _ in range(RUNS)]
    finals = [await ended(scheduler, run) for run in runs]
    for final in finals:
        assert final.state == RS.RUN_STATE_FAILED, final
        assert (final.exit.exit_code, final.attempt, final.retry_run_id) == (3, 1, "")
    assert receiver.got() == []  # alerting was down: nothing could be sent
    assert not await consumer_caught_up(jetstream)  # the failures wait in the stream

    api = await alerting.start()
    done = await eventually(lambda: settled(api, jetstream), lambda d: d is not None, 40)
    assert done is not None
    assert len(done) == RUNS + 1, done
    assert all(d.state == pb.DELIVERY_STATE_DELIVERED for d in done), done
    hooks = receiver.got()
    assert Counter(h.delivery_id for h in hooks) == Counter({d.id: 1 for d in done})
    assert all(h.path == "/ops" and signed(h) for h in hooks)
    assert all(SECRET.encode() not in h.body for h in hooks)

    bodies = [h.payload for h in hooks]
    assert {b["kind"] for b in bodies} == {"firing"}
    run_ids = {run.id for run in runs}
    notified = [b["context"]["run_id"] for b in bodies if b["rule_id"] == per_run.id]
    assert sorted(notified) == sorted(run_ids)
    [streak_body] = [b for b in bodies if b["rule_id"] == streak.id]
    assert streak_body["context"]["run_id"] in run_ids
    assert {a.run_id for a in await alerts(api, per_run.id)} == run_ids
    [streak_alert] = await alerts(api, streak.id)
    assert streak_alert.occurrences == 1


async def test_delivery_cut_off_by_kill_is_delivered_after_restart(
    stack: RunPath,
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
    alerting: AlertingProcess,
    receiver: HookReceiver,
    jetstream: JetStreamContext,
) -> None:
    """kill -9 of alerting while the receiver holds its webhook request unanswered: after a
    restart on the same database the same delivery is sent again and ends DELIVERED; the
    receiver saw that delivery id twice (the cut-off attempt and the retry) and no other."""
    await stack.publish(SCRIPT, FAILING)
    api = await alerting.start()
    channel_id = await webhook(api, receiver.url("/held"))
    await rule(api, "each-failure", channel_id, on_failed())
    receiver.hold()

    run = await submit_failing(scheduler)
    assert (await ended(scheduler, run)).state == RS.RUN_STATE_FAILED
    assert await asyncio.to_thread(receiver.in_hand.wait, 40), "no webhook request arrived"
    [held] = receiver.got()
    assert held.payload["context"]["run_id"] == run.id and signed(held)
    await alerting.kill()
    receiver.release.set()  # from now on every request is answered 200

    api = await alerting.start()
    # Not `acked`: an event published after the kill (the scheduler's dead-letter notice of
    # the run) went to the killed process's pull request and comes back only after the
    # consumer's ack wait (30 s); it notifies no rule here.
    done = await eventually(
        lambda: settled(api, jetstream, acked=False), lambda d: d is not None, 40
    )
    assert done is not None
    [delivery] = done
    assert delivery.id == held.delivery_id
    assert delivery.state == pb.DELIVERY_STATE_DELIVERED, delivery
    hooks = receiver.got()
    assert [h.delivery_id for h in hooks] == [delivery.id] * 2
    assert delivery.attempts == 2
    assert hooks[1].payload == held.payload  # the recorded notification, sent again
    assert all(signed(h) for h in hooks)
