"""`runbox deadletters`, `runbox runs replay`, `runbox quarantines` and
`runbox quarantine release` against a real run path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runbox.catalogue.v1 import catalogue_pb2
from tests.integration.cli.scheduler_stack import Stack, eventually, scheduler_stack

FAILING = "import sys\nprint('broken', sys.argv[1:])\nsys.exit(3)\n"


@pytest.fixture
async def stack(tmp_path: Path, nats_server, tokens, monkeypatch) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    async with scheduler_stack(tmp_path, nats_server, tokens, monkeypatch) as running:
        yield running


@pytest.fixture
async def crash_loop_stack(  # type: ignore[no-untyped-def]
    tmp_path: Path, nats_server, tokens, monkeypatch
) -> AsyncIterator[Stack]:
    """Quarantine after two failed runs of a script."""
    async with scheduler_stack(
        tmp_path, nats_server, tokens, monkeypatch, scheduler={"quarantine_failures": 2}
    ) as running:
        yield running


async def _dead_letter_of(stack: Stack, run_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        letters = await stack.cli.json("deadletters")
        return next((d for d in letters if d["run"]["id"] == run_id), None)

    return await eventually(probe, f"run {run_id} dead-lettered")


async def _failed_run(stack: Stack, ref: str, *flags: str) -> str:
    submitted = await stack.cli.json("run", ref, *flags)
    result = await stack.cli("runs", "watch", submitted["id"])
    assert result.exit_code == 3, result.stdout + result.stderr
    return str(submitted["id"])


async def test_failed_run_is_listed_then_replayed_with_a_new_version(stack: Stack) -> None:
    """A run failing its only attempt is a dead letter; replaying it on a fixed version
    succeeds; a second replay is refused."""
    await stack.path.publish("flaky", FAILING)
    run_id = await _failed_run(stack, "flaky")
    letter = await _dead_letter_of(stack, run_id)
    assert letter["run"]["script"]["name"] == "flaky" and letter["reason"]
    assert await stack.cli.json("deadletters", "--script", "other") == []
    table = (await stack.cli.ok("deadletters", "--script", "flaky")).stdout
    assert "flaky" in table and "FAILED" in table

    await stack.path.publish("flaky", "print('fixed')\n", version="1.0.1")
    replayed = await stack.cli.json(
        "runs", "replay", run_id, "--version", "1.0.1", "--idempotency-key", "fix-1"
    )
    assert replayed["id"] != run_id and replayed["script_version"] == "1.0.1"
    watched = await stack.cli("runs", "watch", replayed["id"])
    assert watched.exit_code == 0, watched.stdout + watched.stderr
    letters = await stack.cli.json("deadletters", "--script", "flaky")
    assert [d.get("replay_run_id") for d in letters] == [replayed["id"]]
    again = await stack.cli("runs", "replay", run_id)
    assert again.exit_code == 2 and "FAILED_PRECONDITION" in again.stderr


async def test_replay_with_new_parameters_uses_them(stack: Stack) -> None:
    """--param replaces the dead-lettered run's parameters: the replay runs with them."""
    mode = catalogue_pb2.ParameterDefinition(name="mode", type=catalogue_pb2.PARAMETER_TYPE_STRING)
    script = "import os, sys\nsys.exit(3 if os.environ['RUNBOX_PARAM_MODE'] == 'bad' else 0)\n"
    await stack.path.publish("moody", script, params=[mode])
    run_id = await _failed_run(stack, "moody", "-p", "mode=bad")
    await _dead_letter_of(stack, run_id)
    replayed = await stack.cli.json("runs", "replay", run_id, "-p", "mode=good")
    assert replayed["parameters"] == {"mode": "good"}
    watched = await stack.cli("runs", "watch", replayed["id"])
    assert watched.exit_code == 0, watched.stdout + watched.stderr


async def test_replay_refusals_exit_2(stack: Stack) -> None:
    """Replaying an unknown run is NOT_FOUND; a run that is not dead-lettered is
    FAILED_PRECONDITION; a bad --param never reaches the server."""
    await stack.path.publish("fine", "print(1)\n")
    submitted = await stack.cli.json("run", "fine")
    assert (await stack.cli("runs", "watch", submitted["id"])).exit_code == 0
    unknown = await stack.cli("runs", "replay", "no-such-run")
    assert unknown.exit_code == 2 and "NOT_FOUND" in unknown.stderr
    alive = await stack.cli("runs", "replay", submitted["id"])
    assert alive.exit_code == 2 and "FAILED_PRECONDITION" in alive.stderr
    malformed = await stack.cli("runs", "replay", submitted["id"], "-p", "novalue")
    assert malformed.exit_code == 2 and "--param 'novalue' must be key=value" in malformed.stderr


async def test_crash_looping_script_is_quarantined_then_released(crash_loop_stack: Stack) -> None:
    """Two failed runs quarantine the script: `quarantines` lists it, `quarantine release`
    ends it, and releasing again is NOT_FOUND."""
    stack = crash_loop_stack
    assert await stack.cli.json("quarantines") == []
    await stack.path.publish("looping", FAILING)
    for _ in range(2):
        await _failed_run(stack, "looping")

    async def quarantined() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = await stack.cli.json("quarantines")
        return found or None

    listed = await eventually(quarantined, "looping quarantined")
    assert [q["script_name"] for q in listed] == ["looping"]
    assert listed[0]["consecutive_failures"] >= 2
    assert "looping" in (await stack.cli.ok("quarantines")).stdout
    released = await stack.cli.ok("quarantine", "release", "looping")
    assert "released looping" in released.stdout
    assert await stack.cli.json("quarantines") == []
    again = await stack.cli("quarantine", "release", "looping")
    assert again.exit_code == 2 and "NOT_FOUND" in again.stderr
