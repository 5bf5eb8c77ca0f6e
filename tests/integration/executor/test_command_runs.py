"""The local execution type: an allow-listed command of the executor's machine as a child
process with rlimits in its own process group, through a real executor."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from tests.integration.executor.conftest import ExecutorHarness, open_harness
from tests.integration.executor.test_http_runs import field_of

RS = common_pb2
LOCAL = common_pb2.EXECUTION_TYPE_LOCAL
SECRET = "pw-5e0d2b77"

TOOL = """#!/bin/sh
# An ops script: reports what it was given, without printing the secret itself.
echo "args: $*"
echo "params: $(cat "$RUNBOX_PARAMS_FILE")"
echo "env who: $RUNBOX_PARAM_WHO"
echo "secret file mode: $(stat -c %a "$RUNBOX_SECRETS_FILE")"
echo "secret env length: ${#RUNBOX_PARAM_PW}"
if grep -q "$RUNBOX_PARAM_PW" /proc/$$/cmdline; then echo "secret in argv"; fi
echo "leaked on purpose: $RUNBOX_PARAM_PW" >&2
printf '{"ok": true, "who": "%s"}' "$RUNBOX_PARAM_WHO" > "$RUNBOX_RESULT_FILE"
exit "${EXIT:-0}"
"""


@pytest.fixture
async def executor(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[ExecutorHarness]:
    tool = tmp_path / "tool.sh"
    tool.write_text(TOOL)
    tool.chmod(0o755)
    commands = {"tool": str(tool), "sh": "/bin/sh"}
    async with open_harness(
        tmp_path, nats_server.url, tokens, "local", local={"commands": commands}
    ) as harness:
        yield harness


def command(
    executor: ExecutorHarness, name: str, args: list[str], **kwargs: Any
) -> executor_pb2.ExecuteRequest:
    # The script's content is not used by local commands, but every run pins one.
    config = {"local": {"command": name, "args": args}}
    return executor.request("command job\n", kind=LOCAL, config=config, **kwargs)


async def test_command_runs_with_params_as_file_and_env_and_secrets_out_of_argv(
    executor: ExecutorHarness,
) -> None:
    """Args render from parameters; parameters and secrets arrive as files and env; the
    secret never reaches argv, and its echo in the output is redacted."""
    request = command(
        executor,
        "tool",
        ["--who={{ who }}", "literal arg"],
        params={"who": "ops"},
        secrets={"pw": SECRET},
    )
    finished, _ = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    out = finished.output.stdout.decode()
    assert "args: --who=ops literal arg\n" in out
    assert 'params: {"who": "ops"}\n' in out
    assert "env who: ops\n" in out
    assert "secret file mode: 600\n" in out
    assert f"secret env length: {len(SECRET)}\n" in out
    assert "secret in argv" not in out
    assert finished.output.stderr == b"leaked on purpose: ***\n"
    assert SECRET not in finished.SerializeToString().decode(errors="replace")
    assert json_format.MessageToDict(finished.result) == {"ok": True, "who": "ops"}


async def test_command_fails_with_its_exit_code(executor: ExecutorHarness) -> None:
    """A non-zero exit is FAILED with reason EXIT_CODE and the code."""
    finished, _ = await executor.run(command(executor, "sh", ["-c", "echo bye; exit 3"]))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_EXIT_CODE
    assert finished.exit.exit_code == 3
    assert finished.output.stdout == b"bye\n"


async def test_command_runs_in_its_own_group_with_rlimits(executor: ExecutorHarness) -> None:
    """The command leads its own process group, and the run's memory limit is its RLIMIT_AS."""
    script = 'echo "$$ $(ps -o pgid= -p $$ | tr -d " ") $(ulimit -v) $(ulimit -c)"'
    finished, _ = await executor.run(command(executor, "sh", ["-c", script], memory=64 << 20))
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output
    pid, pgid, address_kib, core = finished.output.stdout.decode().split()
    assert pid == pgid
    assert int(address_kib) == 2 * 64 * 1024
    assert core == "0"
    assert finished.usage.wall_time.ToTimedelta().total_seconds() > 0


async def test_command_timeout_kills_the_whole_group(
    executor: ExecutorHarness, tmp_path: Path
) -> None:
    """On timeout the command and its background children die: TIMED_OUT."""
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    finished, _ = await executor.run(command(executor, "sh", ["-c", script], timeout_s=1))
    assert finished.state == RS.RUN_STATE_TIMED_OUT
    assert finished.exit.reason == RS.FAILURE_REASON_TIMEOUT
    await assert_dead(int(pid_file.read_text()))


async def test_command_cancel_escalates_to_sigkill(
    executor: ExecutorHarness, tmp_path: Path
) -> None:
    """Cancel sends SIGTERM to the group, then SIGKILL after the grace to one ignoring it."""
    ready = tmp_path / "ready"
    script = f"trap '' TERM; touch {ready}; while :; do sleep 0.1; done"
    request = command(executor, "sh", ["-c", script])
    await executor.stub.Execute(request)
    for _ in range(100):
        if ready.exists():
            break
        await asyncio.sleep(0.1)
    reply = await executor.stub.Cancel(executor_pb2.CancelRequest(run_id=request.run_id))
    assert reply.cancelled
    events = await executor.events(request.run_id)
    assert events[-1].state == RS.RUN_STATE_CANCELLED
    assert events[-1].exit.signal == 9


async def test_command_not_allowed_is_refused_at_execute(executor: ExecutorHarness) -> None:
    """A command outside local.commands is FAILED_PRECONDITION on config.local.command."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await executor.stub.Execute(command(executor, "rm", ["-rf", "/"]))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field_of(exc.value) == "config.local.command"


async def test_command_arg_naming_a_secret_is_refused_at_execute(
    executor: ExecutorHarness,
) -> None:
    """INVALID_ARGUMENT on the argument: secrets go through the file or env, never argv."""
    request = command(executor, "tool", ["--pw={{ pw }}"], secrets={"pw": SECRET})
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await executor.stub.Execute(request)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(exc.value) == "config.local.args[0]"
    assert SECRET not in (exc.value.details() or "")


async def assert_dead(pid: int) -> None:
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"process {pid} survived")


async def test_command_output_goes_out_live_before_it_ends(executor: ExecutorHarness) -> None:
    """Output printed while the command runs reaches a LOG event before FINISHED (the live
    flusher starts with the first output)."""
    finished, events = await executor.run(command(executor, "sh", ["-c", "echo early; sleep 1"]))
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output
    logs = [e for e in events if e.type == events_pb2.RUN_EVENT_TYPE_LOG]
    assert logs and logs[0].log.data == b"early\n"
    assert finished.output.stdout == b"early\n"


async def test_command_work_dir_is_removed_whatever_the_command_left(
    executor: ExecutorHarness, tmp_path: Path
) -> None:
    """Nothing of a run stays in the commands' work area: not when it left nothing, not when it
    left artifacts, extra files, or a symlink in place of its artifacts dir (which is then
    reported, not followed)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not a run's")
    scripts = {
        "nothing": ":",
        "artifact and extras": (
            'echo hi > "$RUNBOX_ARTIFACTS_DIR/a.txt"; mkdir -p d/e; echo x > d/e/f; rm params.json'
        ),
        "symlinked artifacts": f'rm -r "$RUNBOX_ARTIFACTS_DIR"; ln -s {outside} "$RUNBOX_ARTIFACTS_DIR"',
    }
    finished = {}
    for name, script in scripts.items():
        finished[name], _ = await executor.run(command(executor, "sh", ["-c", script]))
        assert finished[name].state == RS.RUN_STATE_SUCCEEDED, (name, finished[name].exit)
    assert not list(finished["nothing"].artifacts)
    assert [a.name for a in finished["artifact and extras"].artifacts] == ["a.txt"]
    assert not list(finished["symlinked artifacts"].artifacts)
    assert "artifacts directory cannot be opened" in finished["symlinked artifacts"].exit.message
    assert list((tmp_path / "work" / "commands").iterdir()) == []
    assert (outside / "keep.txt").read_text() == "not a run's"


async def test_a_long_runs_started_goes_out_while_it_runs(
    executor: ExecutorHarness, tmp_path: Path
) -> None:
    """STARTED waits for a commit made anyway only up to the linger: a run still running
    has its STARTED on JetStream (before its FINISHED exists)."""
    release = tmp_path / "release"
    script = 'while [ ! -e "$0" ]; do sleep 0.01; done'
    request = command(executor, "sh", ["-c", script, str(release)])
    sub = await executor.js.subscribe(
        f"runbox.events.run.{request.run_id}.>", ordered_consumer=True
    )
    try:
        await executor.stub.Execute(request)
        seen = []
        while not seen or seen[-1].type != events_pb2.RUN_EVENT_TYPE_STARTED:
            msg = await sub.next_msg(timeout=30)
            seen.append(events_pb2.RunEvent.FromString(msg.data))
        assert [e.type for e in seen] == [
            events_pb2.RUN_EVENT_TYPE_QUEUED,
            events_pb2.RUN_EVENT_TYPE_STARTED,
        ]
        release.touch()
        msg = await sub.next_msg(timeout=30)
        finished = events_pb2.RunEvent.FromString(msg.data)
    finally:
        await sub.unsubscribe()
    assert finished.type == events_pb2.RUN_EVENT_TYPE_FINISHED
    assert finished.state == RS.RUN_STATE_SUCCEEDED
    assert [e.sequence for e in (*seen, finished)] == [1, 2, 3]


async def test_a_short_runs_started_and_finished_share_one_commit(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """With a linger longer than the run, STARTED is committed with FINISHED (one
    transaction: one created_at), after QUEUED's own commit; all three go out, in order."""
    async with open_harness(
        tmp_path,
        nats_server.url,
        tokens,
        "local",
        local={"commands": {"sh": "/bin/sh"}},
        outbox_linger_s=5,
    ) as harness:
        request = command(harness, "sh", ["-c", ":"])
        finished, events = await harness.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED
    assert [e.type for e in events] == [
        events_pb2.RUN_EVENT_TYPE_QUEUED,
        events_pb2.RUN_EVENT_TYPE_STARTED,
        events_pb2.RUN_EVENT_TYPE_FINISHED,
    ]
    conn = sqlite3.connect(tmp_path / "executor.db")
    try:
        staged = dict(
            conn.execute(
                "SELECT msg_id, created_at FROM outbox WHERE msg_id LIKE ?",
                (f"{request.run_id}:%",),
            ).fetchall()
        )
    finally:
        conn.close()
    queued, started, done = (staged[e.event_id] for e in events)
    assert started == done
    assert queued <= started
