"""`runbox alert ...` against a real alerting service (loopback gRPC, SQLite, the
session's nats-server) and a local webhook receiver."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import pytest
from typer.testing import CliRunner

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting.config import AlertingSettings
from services.alerting.models import AlertRow, open_key
from services.alerting.server import build
from shared import db
from shared.runtime import Running, build_runtime, launch
from tests.integration.cli.conftest import Cli
from tests.integration.helpers import settings_for

SECRET = "cli-secret-never-printed-5d1e"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A local webhook endpoint: its URL and the bodies it received."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    server.shutdown()
    server.server_close()


@pytest.fixture
async def alerting(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[Running]:
    tag = uuid.uuid4().hex[:10]
    base = settings_for(
        AlertingSettings,
        tmp_path,
        "alerting",
        nats_url=nats_server.url,
        principals_file=tokens.principals_file,
        channels={"webhook_allow": ["127.0.0.1/32"], "allow_http": True},
    )
    stream = {"url": nats_server.url, "stream": f"C_{tag}", "subjects_prefix": f"c{tag}.events"}
    settings = AlertingSettings.model_validate(base.model_dump() | {"nats": stream})
    running = await launch(build_runtime("alerting", settings), build)
    yield running
    await running.stop()
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().delete_stream(stream["stream"])
    await nc.drain()


@pytest.fixture
def cli(alerting: Running, tokens: Any, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("RUNBOX_ALERTING_ADDRESS", alerting.address)
    # Alert commands never call these, but the config requires them.
    monkeypatch.setenv("RUNBOX_CATALOGUE_ADDRESS", "127.0.0.1:9")
    monkeypatch.setenv("RUNBOX_SCHEDULER_ADDRESS", "127.0.0.1:9")
    monkeypatch.setenv("RUNBOX_TOKEN", tokens.admin)
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.delenv("RUNBOX_TOKEN_FILE", raising=False)
    monkeypatch.delenv("RUNBOX_CONFIG", raising=False)
    return Cli(CliRunner())


async def test_channel_and_rule_round_trip(cli: Cli, receiver: tuple[str, list[bytes]]) -> None:
    """Create a webhook channel (secret from env) and test it; create, disable, enable, show,
    list and delete a rule notifying it; the secret never appears in any output."""
    url, bodies = receiver
    channel = await cli.json(
        "alert", "channel", "create", "--name", "ops-hook", "--webhook-url", url,
        "--secret-env", "HOOK_SECRET",
    )  # fmt: skip
    assert channel["webhook"]["url"] == url and "signing_secret" not in channel["webhook"]
    tested = await cli.ok("alert", "channel", "test", channel["id"])
    assert "delivered" in tested.stdout and len(bodies) == 1
    rule = await cli.json(
        "alert", "rule", "create", "--name", "backup-failed", "--script", "backup",
        "--label", "team=ops", "--on-state", "failed,timed_out", "--severity", "critical",
        "--channel", channel["id"], "--template", "{{ script_name }} {{ state }}",
    )  # fmt: skip
    assert rule["enabled"] is True and rule["channel_ids"] == [channel["id"]]
    assert rule["condition"]["on_state"]["states"] == ["RUN_STATE_FAILED", "RUN_STATE_TIMED_OUT"]
    disabled = await cli.json("alert", "rule", "disable", rule["id"])
    assert disabled.get("enabled", False) is False
    await cli.ok("alert", "rule", "enable", rule["id"])
    shown = await cli.ok("alert", "rule", "show", rule["id"])
    assert "on failed,timed_out" in shown.stdout and "script=backup" in shown.stdout
    listed = await cli.ok("alert", "rule", "list")
    assert rule["id"] in listed.stdout and "yes" in listed.stdout
    refused = await cli("alert", "channel", "delete", channel["id"])
    assert refused.exit_code == 2 and "backup-failed" in refused.stderr
    await cli.ok("alert", "rule", "delete", rule["id"])
    await cli.ok("alert", "channel", "delete", channel["id"])
    for output in (shown.stdout, listed.stdout, tested.stdout):
        assert SECRET not in output


async def test_bad_rule_shows_field_and_flag(cli: Cli) -> None:
    """A refused rule prints the status, the field and the flag that set it; exit status 2."""
    result = await cli(
        "alert", "rule", "create", "--name", "r", "--consecutive-failures", "0",
        "--label", "=x",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--label '=x' must be key=value" in result.stderr
    result = await cli("alert", "rule", "create", "--name", "r", "--consecutive-failures", "0")
    assert result.exit_code == 2
    assert "INVALID_ARGUMENT" in result.stderr
    assert "rule.condition.consecutive_failures.count (--consecutive-failures)" in result.stderr
    result = await cli("alert", "rule", "create", "--name", "r")
    assert result.exit_code == 2 and "exactly one condition" in result.stderr


async def test_webhook_outside_allow_list_is_refused(cli: Cli) -> None:
    """A private address not on the allow-list is named with its flag."""
    result = await cli(
        "alert", "channel", "create", "--name", "internal", "--webhook-url", "http://10.2.3.4/x"
    )
    assert result.exit_code == 2
    assert "channel.webhook.url (--webhook-url)" in result.stderr


async def test_silence_alerts_and_deliveries(cli: Cli, alerting: Running) -> None:
    """Silence create/list/expire; an alert listed, acknowledged and resolved; deliveries list."""
    silence = await cli.json(
        "alert", "silence", "create", "--script", "backup", "--duration", "2h",
        "--comment", "db upgrade",
    )  # fmt: skip
    listed = await cli.json("alert", "silence", "list")
    assert [s["id"] for s in listed] == [silence["id"]]
    await cli.ok("alert", "silence", "expire", silence["id"])
    assert await cli.json("alert", "silence", "list") == []
    assert len(await cli.json("alert", "silence", "list", "--all")) == 1

    alert_id = await _insert_alert(alerting)
    alerts = await cli.json("alert", "list", "--state", "firing")
    assert [a["id"] for a in alerts] == [alert_id]
    acked = await cli.json("alert", "ack", alert_id, "--comment", "on it")
    assert acked["state"] == "ALERT_STATE_ACKNOWLEDGED" and acked["acknowledged_by"] == "admin"
    resolved = await cli.ok("alert", "resolve", alert_id)
    assert "RESOLVED" in resolved.stdout
    assert await cli.json("alert", "list", "--state", "firing") == []
    table = await cli.ok("alert", "list")
    assert alert_id in table.stdout and "RESOLVED" in table.stdout
    assert await cli.json("alert", "deliveries", "list", "--state", "dead_lettered") == []
    missing = await cli("alert", "deliveries", "retry", "nope")
    assert missing.exit_code == 2 and "NOT_FOUND" in missing.stderr


async def _insert_alert(alerting: Running) -> str:
    """An alert as the engine would record it (the engine is tested elsewhere)."""
    settings = alerting.runtime.settings
    assert isinstance(settings, AlertingSettings)
    engine = db.create_engine(settings.database)
    alert_id, now = uuid.uuid4().hex, datetime.now(UTC)
    try:
        async with db.sessionmaker(engine)() as session, session.begin():
            session.add(
                AlertRow(
                    id=alert_id,
                    rule_id="rule-1",
                    group_key="rule-1:backup",
                    open_key=open_key("rule-1", "rule-1:backup"),
                    state=pb.ALERT_STATE_FIRING,
                    severity=pb.SEVERITY_CRITICAL,
                    summary="backup failed",
                    script_name="backup",
                    occurrences=2,
                    context={},
                    first_seen=now,
                    last_seen=now,
                )
            )
    finally:
        await engine.dispose()
    return alert_id
