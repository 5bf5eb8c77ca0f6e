"""What the first-run and README tests do as a user would: start a command and read what it
prints, run printed shell commands as they are, look at the stack it started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
HINT_START = "Try, from this directory in another shell:"
HINT_END = "Ctrl-C stops everything."
SERVICES = ("catalogue", "executor", "scheduler", "alerting")
_MARK = "### runbox-test command: "


def user_env() -> dict[str, str]:
    """The test's environment as a user's shell has it: no RUNBOX_* of the test's own, and
    none of the variables an outer `make test` sets (a nested make would print
    "Entering directory" lines a user never sees)."""
    make_vars = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_") and k not in make_vars
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Started:
    """A child process writing its stdout and stderr to a log file."""

    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> str:
        """Everything printed once NEEDLE was; fail with the output if the process ends or
        the time is up first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} never printed; output:\n{self.text()[-6000:]}")


def start(
    argv: list[str], log: Path, cwd: Path = REPO, env: dict[str, str] | None = None
) -> Started:
    """Start ARGV in its own session (as a shell's job) with output to LOG."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env or user_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Started(proc, log)


def hint_commands(output: str) -> list[str]:
    """The commands `runbox up` printed for another shell, in order."""
    after = output.split(HINT_START, 1)[1].split(HINT_END, 1)[0]
    return [line.strip() for line in after.splitlines() if line.strip()]


@dataclass
class Ran:
    """One command run in the shell: its exit status and what it printed on stdout."""

    code: int
    output: str


def run_shell(
    commands: list[str], cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 240
) -> dict[str, Ran]:
    """Run COMMANDS one after the other in one bash, as typed into one shell (variables and
    exports carry over); each command's exit status and output."""
    lines = ["set -uo pipefail"]
    for i, command in enumerate(commands):
        # The status first; then a newline, in case the output did not end with one.
        lines += [f"echo '{_MARK}{i}'", command, "status=$?", "echo", f'echo "{_MARK}rc $status"']
    done = subprocess.run(
        ["bash", "-c", "\n".join(lines) + "\n"],
        cwd=cwd,
        env=env or user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    found = re.findall(
        rf"^{re.escape(_MARK)}(\d+)\n(.*?)^{re.escape(_MARK)}rc (\d+)$", done.stdout, re.M | re.S
    )
    ran = {commands[int(i)]: Ran(int(code), output) for i, output, code in found}
    assert len(ran) == len(commands), f"the shell stopped early:\n{done.stdout}\n{done.stderr}"
    return ran


def health(config_file: Path) -> dict[str, str]:
    """Each service's gRPC health status, at the addresses runbox up wrote."""
    config = json.loads(config_file.read_text())
    statuses = {}
    for service in SERVICES:
        with grpc.insecure_channel(config[service]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        statuses[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return statuses


def descendants(pid: int) -> list[int]:
    """Every process under PID (children first, then theirs)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(0), [])
        found.extend(children)
        queue.extend(children)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def runbox_up_pid(root: int) -> int:
    """The `runbox up` process under ROOT (make -> bash -> run.sh exec'd into it)."""
    for pid in descendants(root):
        argv = cmdline(pid)
        if any(a.endswith("/runbox") for a in argv) and "up" in argv:
            return pid
    raise AssertionError(f"no runbox up process under {root}")
