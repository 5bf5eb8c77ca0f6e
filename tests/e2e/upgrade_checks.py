"""Checks of a stack running on a previous release's state (tests/fixtures/releases):
what the old release answered (expected.json) still reads the same, and old script
versions still run."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2

from cli import natsd
from cli import stack as dev_stack
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from tests.conftest import docker_available, require, sandbox_image_available
from tests.e2e.upgrade_state import SERVICES, StateReader, contains, without

TERMINAL = {
    common_pb2.RUN_STATE_SUCCEEDED,
    common_pb2.RUN_STATE_FAILED,
    common_pb2.RUN_STATE_TIMED_OUT,
    common_pb2.RUN_STATE_CANCELLED,
    common_pb2.RUN_STATE_LOST,
}
# Schedule fields a restart moves on: fire times passed while no scheduler ran.
MOVING = ("next_fire_time", "last_fire_time", "update_time")


def require_stack() -> None:
    """nats-server, a Docker engine and the sandbox image (old runs are python and shell)."""
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    require(docker_available(), "no Docker engine reachable (make docker)")
    require(sandbox_image_available(), "sandbox image missing (make sandbox-image)")


def reader_of(stack: dev_stack.Stack) -> StateReader:
    """A StateReader of a local stack, as its admin."""
    token = stack.admin_token_file.read_text().strip()
    return StateReader({svc: stack.address(svc) for svc in SERVICES}, token)


def check_upgraded(stack: dev_stack.Stack, expected: dict[str, Any]) -> None:
    """Everything the old release answered reads the same; a new run of an old version succeeds."""
    reader = reader_of(stack)
    try:
        check_unchanged(reader, expected)
        check_new_run(reader, expected, "Upgrade")
    finally:
        reader.close()


def check_unchanged(reader: StateReader, expected: dict[str, Any]) -> None:
    """Everything the old release answered reads the same."""
    check_scripts(reader, expected)
    check_runs(reader, expected)
    check_schedules(reader, expected)
    check_alerting(reader, expected)


def check_scripts(reader: StateReader, expected: dict[str, Any]) -> None:
    """Scripts, versions and parameters unchanged; content still matches its sha256."""
    for name, script in expected["scripts"].items():
        assert contains(reader.versions(name), script["versions"]) == [], name
        for version, shown in script["shown"].items():
            assert contains(reader.script(name), shown["script"]) == [], name
            assert reader.content_sha256(name, version) == shown["version"]["sha256"]
    names = {t["name"] for t in reader.templates()}
    assert {t["name"] for t in expected["templates"]} <= names


def check_runs(reader: StateReader, expected: dict[str, Any]) -> None:
    """Old runs listed with their states, exits and outputs."""
    runs = {run["id"]: run for run in reader.runs()}
    for old in expected["runs"]:
        assert old["id"] in runs, f"run {old['id']} is gone"
        assert contains(runs[old["id"]], old) == [], old["id"]
    assert contains(reader.deadletters(), expected["deadletters"]) == []


def check_schedules(reader: StateReader, expected: dict[str, Any]) -> None:
    """Schedules still there, in their states; the active one fires in the future."""
    schedules = {s["id"]: s for s in reader.schedules()}
    for old in expected["schedules"]:
        assert old["id"] in schedules, f"schedule {old['name']} is gone"
        assert contains(schedules[old["id"]], without(old, *MOVING)) == [], old["name"]
    nightly = schedules[expected["nightly_schedule"]]
    assert nightly["state"] == "SCHEDULE_STATE_ACTIVE"
    next_fire = datetime.fromisoformat(nightly["next_fire_time"].replace("Z", "+00:00"))
    assert next_fire > datetime.now(UTC)


def check_alerting(reader: StateReader, expected: dict[str, Any]) -> None:
    """Channels, rules, the fired alert and its delivery unchanged."""
    state = reader.alerting_state()
    for key, items in state.items():
        assert contains(items, expected[key]) == [], key


def check_new_run(reader: StateReader, expected: dict[str, Any], name: str) -> None:
    """A new run of 0.1.0's greet@1.0.0 (two values given, two defaults) succeeds."""
    params = struct_pb2.Struct()
    params.update({"name": name, "times": 2})
    submitted = reader.scheduler.SubmitRun(
        scheduler_pb2.SubmitRunRequest(
            script=common_pb2.ScriptRef(name="greet", version="1.0.0"), parameters=params
        ),
        metadata=reader.md,
        timeout=30,
    )
    deadline = time.monotonic() + 90
    run = reader.run(submitted.id)
    while run.state not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        run = reader.run(submitted.id)
    assert run.state == common_pb2.RUN_STATE_SUCCEEDED, run
    old = expected["scripts"]["greet"]["shown"]["1.0.0"]["version"]
    assert run.sha256 == old["sha256"]
    assert run.output.stdout.decode() == f"Hello, {name}! (red, loud=False)\n" * 2
