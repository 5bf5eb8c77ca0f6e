"""The local execution type's other launchers (the default is the fork server,
runners/forkserver.py): a command started through a shim that sets the run's
rlimits and PR_SET_PDEATHSIG (the command dies with the executor; kept across exec) and
then becomes the command, so the pid, the rusage (wait4), the signals and the exit status
are the command's own. (A preexec_fn would run Python in a fork of the threaded executor,
whose gRPC threads hold locks there.) Two shims:

- util-linux's `setpriv --pdeathsig KILL` and `prlimit` (local.launcher util-linux), exec'd in a chain: a few
  milliseconds of CPU per run, no interpreter start-up;
- a Python shim (local.launcher python), started ahead of demand (runners/warm.py): it sets the death signal,
  then blocks on stdin until its one job line arrives (argv, cwd, environment, rlimits).

Either way secrets travel in the environment (or the pipe), never in argv."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from services.executor.runners.local_runner import kill_group

SHIM_SOURCE = r"""
import ctypes, json, os, resource, signal, sys
parent = os.getppid()
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:  # the executor died before the line above
    os._exit(1)
line = sys.stdin.buffer.readline()
if not line:
    os._exit(0)
job = json.loads(line)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
os.chdir(job["cwd"])
for name, value in job["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
os.execve(job["argv"][0], job["argv"], job["env"])
"""


# prlimit's option for each rlimit the runners set (local_runner.rlimits).
PRLIMIT_OPTIONS = {
    "RLIMIT_AS": "--as",
    "RLIMIT_CPU": "--cpu",
    "RLIMIT_FSIZE": "--fsize",
    "RLIMIT_CORE": "--core",
    "RLIMIT_NPROC": "--nproc",
}


def util_linux() -> tuple[str, str]:
    """setpriv and prlimit (local.launcher util-linux): start-up fails if either is missing."""
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if setpriv and prlimit and _works(setpriv, prlimit):
        return setpriv, prlimit
    raise ValueError(
        "local.launcher is util-linux but setpriv (2.33 or later, for --pdeathsig) or "
        "prlimit is not on PATH"
    )


def _works(setpriv: str, prlimit: str) -> bool:
    """Once, at start-up: an older setpriv has no --pdeathsig (every run would fail)."""
    try:
        probe = subprocess.run(
            [setpriv, "--pdeathsig", "KILL", "--", prlimit, "--core=0", "--", prlimit, "-V"],
            capture_output=True,
            env={},
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def start_limited(
    tools: tuple[str, str],
    argv: list[str],
    work: Path,
    env: dict[str, str],
    limits: dict[str, int],
) -> subprocess.Popen[bytes]:
    """The command under setpriv and prlimit, in its own session (signalled as one group)."""
    setpriv, prlimit = tools
    options = [f"{PRLIMIT_OPTIONS[name]}={value}" for name, value in limits.items()]
    return subprocess.Popen(
        [setpriv, "--pdeathsig", "KILL", "--", prlimit, *options, "--", *argv],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def start_shim(base: Path) -> subprocess.Popen[bytes]:
    """A shim waiting for its job in its own session (signalled as one group). Popen, not
    asyncio's subprocess API, which would reap the child itself and hide its rusage."""
    base.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", SHIM_SOURCE],
        cwd=base,
        env={},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def send_job(
    proc: subprocess.Popen[bytes],
    argv: list[str],
    work: Path,
    env: dict[str, str],
    limits: dict[str, int],
) -> None:
    """Hand the shim its command; BrokenPipeError if it is gone. The shim reads while this
    writes, so even a large environment does not block for long."""
    assert proc.stdin is not None
    line = json.dumps({"argv": argv, "cwd": str(work), "env": env, "rlimits": limits})
    try:
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def shim_alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


async def discard_shim(proc: subprocess.Popen[bytes]) -> None:
    """Kill an unused shim, close its pipes and reap it (at once: it is killed)."""
    kill_group(proc, signal.SIGKILL)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    proc.wait()
