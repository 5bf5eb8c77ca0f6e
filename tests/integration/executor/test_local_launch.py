"""How the local backend and the local execution type start processes (warm agents, the
setpriv/prlimit or warm Python shim): rlimits, own process group, the death signal, exit
codes and signals through a real executor, and every run and warm process dying with an
executor killed by -9."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runbox.common.v1 import common_pb2
from tests.integration.executor.conftest import ExecutorHarness, open_harness

RS = common_pb2
LOCAL = common_pb2.EXECUTION_TYPE_LOCAL
PYTHON3 = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
ROOT = Path(__file__).resolve().parents[3]
# Prints what the process got: pid, process group, RLIMIT_AS, RLIMIT_CORE, death signal.
PROBE = (
    "import ctypes, os, resource\n"
    "sig = ctypes.c_int()\n"
    "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG\n"
    "print(os.getpid(), os.getpgid(0), resource.getrlimit(resource.RLIMIT_AS)[0],\n"
    "      resource.getrlimit(resource.RLIMIT_CORE)[0], sig.value)\n"
)
LAUNCHERS = ["fork-server", "util-linux", "python"]

pytestmark = pytest.mark.skipif(PYTHON3 is None, reason="no python3 on the scripts' PATH")


@pytest.fixture(params=LAUNCHERS)
async def commands(
    request: pytest.FixtureRequest, tmp_path: Path, nats_server: Any, tokens: Any
) -> AsyncIterator[ExecutorHarness]:
    """An executor on the local backend whose command runner uses one launcher."""
    local = {"commands": {"python3": PYTHON3, "sh": "/bin/sh"}, "launcher": request.param}
    async with open_harness(tmp_path, nats_server.url, tokens, "local", local=local) as harness:
        yield harness


@pytest.fixture
async def scripts(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[ExecutorHarness]:
    async with open_harness(tmp_path, nats_server.url, tokens, "local") as harness:
        yield harness


def running(pid: int) -> bool:
    """Neither gone nor a zombie waiting for whoever reaps orphans."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def assert_gone(pid: int) -> None:
    for _ in range(100):
        if not running(pid):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"process {pid} survived")


def probe(stdout: bytes) -> tuple[int, int, int, int, int]:
    pid, pgid, address, core, death = (int(v) for v in stdout.decode().split())
    return pid, pgid, address, core, death


async def test_command_gets_rlimits_own_group_and_death_signal_with_either_launcher(
    commands: ExecutorHarness,
) -> None:
    """Every run (the first and the warm ones after it) leads its own group, has the
    run's RLIMIT_AS and no core files, and is set to die with the executor."""
    for _ in range(3):
        request = commands.request(
            "probe\n",
            kind=LOCAL,
            memory=64 << 20,
            config={"local": {"command": "python3", "args": ["-c", PROBE]}},
        )
        finished, _ = await commands.run(request)
        assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output
        pid, pgid, address, core, death = probe(finished.output.stdout)
        assert (pid == pgid, address, core, death) == (True, 2 * (64 << 20), 0, signal.SIGKILL)
        assert finished.usage.cpu_seconds > 0


async def test_command_exit_codes_and_signals_are_its_own_with_either_launcher(
    commands: ExecutorHarness,
) -> None:
    """An exit status and a killing signal reach FINISHED as the command's own."""
    exited, _ = await commands.run(
        commands.request(
            "x\n", kind=LOCAL, config={"local": {"command": "sh", "args": ["-c", "exit 7"]}}
        )
    )
    assert (exited.state, exited.exit.exit_code) == (RS.RUN_STATE_FAILED, 7)
    killed, _ = await commands.run(
        commands.request(
            "x\n", kind=LOCAL, config={"local": {"command": "sh", "args": ["-c", "kill -SEGV $$"]}}
        )
    )
    assert (killed.state, killed.exit.signal) == (RS.RUN_STATE_FAILED, signal.SIGSEGV)


# Prints what else the process got: open fds, ids, no_new_privs, cwd, stdin, hard limits.
CONTEXT = (
    "import json, os, resource\n"
    "fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))[:-1]  # the last: listdir's\n"
    "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
    "limits = {n: resource.getrlimit(getattr(resource, n)) for n in\n"
    "          ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_CORE')}\n"
    "print(json.dumps({'fds': fds, 'ids': [os.getuid(), os.getgid(), os.getgroups()],\n"
    "    'no_new_privs': status['NoNewPrivs'].strip(), 'cwd': os.getcwd(),\n"
    "    'work': os.environ['RUNBOX_WORK_DIR'], 'env': sorted(os.environ),\n"
    "    'stdin': os.readlink('/proc/self/fd/0'), 'limits': limits, 'sid': os.getsid(0),\n"
    "    'pid': os.getpid()}))\n"
)


def own_no_new_privs() -> str:
    status = Path("/proc/self/status").read_text()
    return status.split("NoNewPrivs:")[1].split()[0]


async def test_command_gets_std_fds_only_the_executors_ids_and_fixed_limits_with_either_launcher(
    commands: ExecutorHarness,
) -> None:
    """The command has fds 0-2 only (stdin /dev/null), the executor's uid, gid and groups
    and its no_new_privs (the launcher changes neither), the run's work dir as cwd, the
    run's environment only, its own session, and hard limits equal to the soft ones."""
    request = commands.request(
        "x\n",
        kind=LOCAL,
        memory=64 << 20,
        config={"local": {"command": "python3", "args": ["-c", CONTEXT]}},
    )
    finished, _ = await commands.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output
    got = json.loads(finished.output.stdout)
    assert got["fds"] == [0, 1, 2]
    assert got["stdin"] == "/dev/null"
    assert got["ids"] == [os.getuid(), os.getgid(), os.getgroups()]
    assert got["no_new_privs"] == own_no_new_privs()
    assert got["cwd"] == got["work"]
    assert all(
        name in ("PATH", "HOME", "LANG") or name.startswith("RUNBOX_") for name in got["env"]
    )
    assert got["sid"] == got["pid"]
    assert got["limits"]["RLIMIT_AS"] == [2 * (64 << 20)] * 2
    assert all(soft == hard for soft, hard in got["limits"].values())


@pytest.fixture
async def forked(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[ExecutorHarness]:
    local = {"commands": {"sh": "/bin/sh"}, "launcher": "fork-server"}
    async with open_harness(tmp_path, nats_server.url, tokens, "local", local=local) as harness:
        yield harness


async def test_run_fails_as_infrastructure_when_the_fork_server_dies_and_the_next_starts_one(
    forked: ExecutorHarness, tmp_path: Path
) -> None:
    """A fork server killed under a run takes the command with it (its death signal): the
    run ends FAILED (infrastructure) at once, and the next run gets a fresh server."""
    pid_file = tmp_path / "command.pid"
    script = f"echo $$ > {pid_file}; kill -9 $PPID; sleep 300"
    request = forked.request(
        "x\n", kind=LOCAL, config={"local": {"command": "sh", "args": ["-c", script]}}
    )
    finished, _ = await forked.run(request)
    assert (finished.state, finished.exit.reason) == (
        RS.RUN_STATE_FAILED,
        RS.FAILURE_REASON_INFRASTRUCTURE,
    )
    await assert_gone(int(pid_file.read_text()))
    again, _ = await forked.run(
        forked.request(
            "x\n", kind=LOCAL, config={"local": {"command": "sh", "args": ["-c", "exit 3"]}}
        )
    )
    assert (again.state, again.exit.exit_code) == (RS.RUN_STATE_FAILED, 3)


@pytest.mark.parametrize(
    ("script", "state", "code", "sig", "stderr"),
    [
        ("import sys; print('out'); sys.exit(3)\n", RS.RUN_STATE_FAILED, 3, 0, b""),
        ("raise ValueError('boom')\n", RS.RUN_STATE_FAILED, 1, 0, b"ValueError: boom"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n",
            RS.RUN_STATE_FAILED,
            0,
            9,
            b"",
        ),
        (
            "import sys; print('out'); print('err', file=sys.stderr)\n",
            RS.RUN_STATE_SUCCEEDED,
            0,
            0,
            b"err\n",
        ),
    ],
)
async def test_python_run_on_a_warm_agent_ends_as_its_script_says(
    scripts: ExecutorHarness, script: str, state: int, code: int, sig: int, stderr: bytes
) -> None:
    """A python run (in a fork of a warm agent) reports exit codes, uncaught exceptions,
    signals and both streams as a python3 process of its own would."""
    for _ in range(2):  # a cold agent, then a warm one
        finished, _ = await scripts.run(scripts.request(script))
        assert (finished.state, finished.exit.exit_code, finished.exit.signal) == (state, code, sig)
        assert stderr in finished.output.stderr
        if "print('out')" in script:
            assert finished.output.stdout == b"out\n"


async def test_python_run_gets_rlimits_and_death_signal_on_a_warm_agent(
    scripts: ExecutorHarness,
) -> None:
    """The script runs under the run's RLIMIT_AS, no core files, set to die with the agent."""
    for _ in range(2):
        finished, _ = await scripts.run(scripts.request(PROBE, memory=96 << 20))
        assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.output
        _, _, address, core, death = probe(finished.output.stdout)
        assert (address, core, death) == (2 * (96 << 20), 0, signal.SIGKILL)


# A runner in a process of its own (so that it can be killed with -9): it prints the pids
# of its idle warm processes, then starts a run that prints its pid and sleeps.
KILLED_RUNNER = r"""
import asyncio, json, sys
from pathlib import Path
from services.executor.config import ExecutorSettings
from services.executor.runners.base import Job, Limits
from services.executor.runners.command_runner import CommandRunner
from services.executor.runners.local_runner import LocalRunner
from runbox.common.v1 import common_pb2

kind, launcher, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
settings = ExecutorSettings(work_dir=str(work), local={"commands": {"sh": "/bin/sh"}, "launcher": launcher})
limits = Limits(cpus=1, memory_bytes=256 << 20, pids=64, work_bytes=1 << 20, timeout_s=60, output_bytes=1 << 20)
if kind == "local":
    runner = CommandRunner(settings)
    pool = runner._shims
    job = lambda script: Job("r" * 32, 1, "t", "1", "", common_pb2.EXECUTION_TYPE_LOCAL, b"", {}, {}, limits,
                             config={"local": {"command": "sh", "args": ["-c", script]}})
else:
    runner = LocalRunner(settings.sandbox, work / "local", settings.artifacts)
    pool = runner._agents
    job = lambda script: Job("r" * 32, 1, "t", "1", "", common_pb2.EXECUTION_TYPE_SHELL, script.encode(), {}, {}, limits)

async def started(at):
    pass

def output(stream, data):
    # A line of its own per chunk: the runner holds a trailing newline back (a trailer may follow).
    if data.strip():
        print(data.decode().strip(), flush=True)

async def main():
    await runner.execute(job("true"), lambda s, d: None, started)
    warm = 2 if kind == "shell" or launcher == "python" else 0
    while pool.idle < warm:
        await asyncio.sleep(0.01)
    helpers = [p.pid for p in pool.idle_processes()]
    if kind == "local" and runner._fork_server is not None:
        helpers.append(runner._fork_server.pid)
    print(json.dumps(helpers), flush=True)
    await runner.execute(job("echo $$; exec sleep 300"), output, started)

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("kind", "launcher"),
    [("shell", "auto"), ("local", "fork-server"), ("local", "util-linux"), ("local", "python")],
)
async def test_runs_and_warm_processes_die_with_an_executor_killed_by_sigkill(
    tmp_path: Path, kind: str, launcher: str
) -> None:
    """kill -9 of the process running the runner ends its running script and every idle
    warm process (PR_SET_PDEATHSIG), with nothing left to clean them up."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_RUNNER,
        kind,
        launcher,
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        idle = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        script = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert len(idle) == {"fork-server": 1, "util-linux": 0}.get(launcher, 2)
        assert all(running(pid) for pid in [*idle, script])
        proc.kill()
        await proc.wait()
        for pid in [*idle, script]:
            await assert_gone(pid)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
