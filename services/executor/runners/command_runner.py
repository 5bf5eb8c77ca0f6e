"""The local execution type: an allow-listed command of the executor's machine, run as a
child process with rlimits in its own process group, for trusted ops scripts and machines
without Docker. This is NOT a sandbox: the command has the executor user's network and
filesystem. Only the operator's allow-list (name -> absolute path) decides what may run.

Arguments are literal strings with {{ parameter }} rendering; secrets never reach argv (a
template naming a secret is refused, and so is an argument that would contain a secret's
value). Parameters arrive as RUNBOX_PARAMS_FILE (JSON) and RUNBOX_PARAM_<NAME> variables,
secrets as RUNBOX_SECRETS_FILE (0600) and RUNBOX_PARAM_<NAME> variables, like the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.executor.artifacts import collect_from_directory
from services.executor.config import ExecutorSettings
from services.executor.runners import workdir
from services.executor.runners.base import FR, RS, Job, Outcome, OutputSink, StartedHook
from services.executor.runners.children import ExitStatus, Pipes, watch_exit
from services.executor.runners.forkserver import Child, ForkServer
from services.executor.runners.job_config import execution_config, referenced, render
from services.executor.runners.local_runner import kill_group, rlimits
from services.executor.runners.protocol import outcome_from
from services.executor.runners.shim import (
    discard_shim,
    send_job,
    shim_alive,
    start_limited,
    start_shim,
    util_linux,
)
from services.executor.runners.warm import WarmProcesses
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

log = logging.getLogger(__name__)
# What the runner writes into a run's work dir (parameters, then secrets).
INPUT_FILES = ("params.json", ".secrets.json")
# After the command exits, how long its output may still drain (a background child that
# keeps the pipes open is killed with the group after this).
DRAIN_S = 2.0


def allowed_commands(settings: ExecutorSettings) -> dict[str, str]:
    """local.commands plus the older sandbox.local_allowed_commands (absolute paths, named
    by their basename, or name=path); every path must be absolute."""
    commands: dict[str, str] = {}
    for entry in settings.sandbox.local_allowed_commands:
        name, sep, path = entry.partition("=")
        commands[name if sep else os.path.basename(entry)] = path if sep else entry
    commands.update(settings.local.commands)
    for name, path in commands.items():
        if not name or not os.path.isabs(path):
            raise ValueError(f"allowed local command {name!r} needs an absolute path, not {path!r}")
    return commands


@dataclass(frozen=True)
class Command:
    """A checked command line."""

    argv: list[str]


def prepare(job: Job, commands: dict[str, str]) -> Command:
    """Resolve the allow-listed command and render its arguments (never with secrets)."""
    config = execution_config(job, "local")
    if not config.command:
        raise InvalidArgument.field("config.local.command", "required")
    path = commands.get(config.command)
    if path is None:
        raise FailedPrecondition(
            f"config.local.command: {config.command!r} is not allowed on this executor "
            "(local.commands)",
            [FieldViolation("config.local.command", "command not allowed")],
        )
    if not os.access(path, os.X_OK):
        raise FailedPrecondition(
            f"config.local.command: {config.command!r} ({path}) is not executable here",
            [FieldViolation("config.local.command", "command not executable on this executor")],
        )
    secret_values = [v for v in job.secrets.values() if len(v) >= 3]
    argv = [path]
    for i, template in enumerate(config.args):
        field = f"config.local.args[{i}]"
        named = sorted(referenced(template, field) & set(job.secrets))
        if named:
            raise InvalidArgument.field(
                field,
                f"references secret parameter(s) {named}: secrets reach a command only "
                "through RUNBOX_SECRETS_FILE or the environment, never argv",
            )
        value = render(template, job.parameters, field)
        if "\0" in value or any(secret in value for secret in secret_values):
            raise InvalidArgument.field(field, "would put a NUL byte or a secret value in argv")
        argv.append(value)
    return Command(argv)


def environment(job: Job, work: Path, path: str) -> dict[str, str]:
    """A clean environment: nothing of the executor's own, the run's inputs as files and
    RUNBOX_PARAM_* variables (secrets included: env is one of their two doors)."""
    params_file, secrets_file = (work / name for name in INPUT_FILES)
    _write(params_file, json.dumps(job.parameters).encode(), 0o644)
    _write(secrets_file, json.dumps(job.secrets).encode(), 0o600)
    env = {
        "PATH": path,
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "RUNBOX_RUN_ID": job.run_id,
        "RUNBOX_WORK_DIR": str(work),
        "RUNBOX_PARAMS_FILE": str(params_file),
        "RUNBOX_SECRETS_FILE": str(secrets_file),
        "RUNBOX_RESULT_FILE": str(work / "result.json"),
        "RUNBOX_ARTIFACTS_DIR": str(work / workdir.ARTIFACTS),
    }
    for name, value in {**job.parameters, **job.secrets}.items():
        env["RUNBOX_PARAM_" + name.upper()] = value if isinstance(value, str) else json.dumps(value)
    return env


def _write(path: Path, data: bytes, mode: int) -> None:
    """A new file of the run's work dir (the umask applies to `mode`, as to open())."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


Launched = subprocess.Popen[bytes] | Child


@dataclass
class _Active:
    proc: Launched
    exited: asyncio.Future[ExitStatus]


class CommandRunner:
    """Runs allow-listed commands of this machine, one fresh work directory per run."""

    name = "command"
    sandbox = "none"  # a child process of the executor: NOT sandboxed

    def __init__(self, settings: ExecutorSettings) -> None:
        self._settings = settings
        self._commands = allowed_commands(settings)
        self._work_dir = Path(settings.work_dir) / "commands"
        self._work_dirs = workdir.WorkDirs(self._work_dir)
        self._active: dict[str, _Active] = {}
        self._cancelled: set[str] = set()
        # A fork server started once (runners/forkserver.py), or setpriv + prlimit, or Python
        # shims started ahead of demand (runners/shim.py): no interpreter start-up per run.
        launcher = settings.local.launcher
        self._fork_server = (
            ForkServer(self._work_dir) if launcher in ("auto", "fork-server") else None
        )
        if self._fork_server is not None and self._commands:
            self._fork_server.start()  # ahead of the first run (none can run without commands)
        self._util_linux = util_linux() if launcher == "util-linux" else None
        self._shims: WarmProcesses[subprocess.Popen[bytes]] = WarmProcesses(
            settings.local.warm_shims if launcher == "python" else 0,
            start=self._start_shim,
            alive=shim_alive,
            discard=discard_shim,
        )

    async def _start_shim(self) -> subprocess.Popen[bytes]:
        return start_shim(self._work_dir)

    async def validate_config(self, job: Job) -> None:
        prepare(job, self._commands)

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        try:
            command = prepare(job, self._commands)
        except (InvalidArgument, FailedPrecondition) as exc:
            return Outcome(
                RS.RUN_STATE_FAILED, reason=FR.FAILURE_REASON_INVALID_CONFIG, message=str(exc)
            )
        work = self._work_dirs.make(job.run_id)
        untouched = False  # the run left its work dir as made: nothing to collect
        try:
            env = environment(job, work, self._settings.local.path)
            outcome = await self._run(job, command, work, env, on_output, on_started)
            untouched = self._work_dirs.untouched(work, INPUT_FILES)
            if not untouched and not workdir.nothing_to_collect(work):
                await self._collect(job, work, outcome)
            return outcome
        finally:
            self._work_dirs.release(work, INPUT_FILES, untouched=untouched)

    async def _run(
        self,
        job: Job,
        command: Command,
        work: Path,
        env: dict[str, str],
        on_output: OutputSink,
        on_started: StartedHook,
    ) -> Outcome:
        try:
            proc = await self._spawn(command, work, env, rlimits(job.limits))
        except OSError as exc:
            return Outcome.infrastructure(f"could not start {command.argv[0]}: {exc.strerror}")
        started = datetime.now(UTC)
        exited = proc.exited if isinstance(proc, Child) else watch_exit(proc)
        self._active[job.run_id] = _Active(proc, exited)
        assert proc.stdout is not None and proc.stderr is not None
        pipes: Pipes | None = None
        try:
            pipes = Pipes({"stdout": proc.stdout, "stderr": proc.stderr}, on_output)
            await on_started(started)
            done, _ = await asyncio.wait({exited}, timeout=job.limits.timeout_s)
            timed_out = not done
            if timed_out:
                kill_group(proc, signal.SIGKILL)
            try:
                status, usage = await exited
            except OSError as exc:  # the fork server died (and the command with it)
                return Outcome.infrastructure(f"{command.argv[0]}: {exc}")
            proc.returncode = os.waitstatus_to_exitcode(status)
            if not pipes.ended.done():
                await _drain(proc, pipes.ended)
            return outcome_from(
                _trailer(status, usage, started),
                status=proc.returncode,
                started_at=started,
                timed_out=timed_out,
                cancelled=job.run_id in self._cancelled,
            )
        finally:
            kill_group(proc, signal.SIGKILL)  # whatever the command left in its group
            if pipes is not None:
                pipes.close()
            for pipe in (proc.stdout, proc.stderr):  # any not read (closing twice is a no-op)
                pipe.close()
            self._active.pop(job.run_id, None)
            self._cancelled.discard(job.run_id)

    async def _collect(self, job: Job, work: Path, outcome: Outcome) -> None:
        """result.json and artifacts, as the local runner takes them."""
        try:
            outcome.result, outcome.artifacts, warnings = await asyncio.to_thread(
                collect_from_directory,
                work,
                job.run_id,
                self._settings.artifacts,
                artifacts=workdir.ARTIFACTS,
                secrets=job.secrets.values(),
            )
        except OSError as exc:
            log.warning("artifacts of the run could not be stored: %s", exc)
            warnings = [f"artifacts could not be stored ({exc.strerror or type(exc).__name__})"]
        outcome.warnings.extend(warnings)

    async def cancel(self, run_id: str) -> bool:
        active = self._active.get(run_id)
        if active is None:
            return False
        self._cancelled.add(run_id)
        kill_group(active.proc, signal.SIGTERM)
        done, _ = await asyncio.wait({active.exited}, timeout=self._settings.sandbox.cancel_grace_s)
        if not done:
            kill_group(active.proc, signal.SIGKILL)
        return True

    async def _spawn(
        self, command: Command, work: Path, env: dict[str, str], limits: dict[str, int]
    ) -> Launched:
        """The command forked by the fork server, or under its shim (a fresh Python shim if
        the warm one died meanwhile)."""
        if self._fork_server is not None:
            return await self._fork_server.spawn(command.argv, work, env, limits)
        if self._util_linux:
            return start_limited(self._util_linux, command.argv, work, env, limits)
        proc = await self._shims.take()
        for fresh in (False, True):
            try:
                send_job(proc, command.argv, work, env, limits)
                return proc
            except BrokenPipeError:
                await discard_shim(proc)
                if fresh:
                    raise
            proc = await self._start_shim()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._shims.close()
        for active in list(self._active.values()):
            kill_group(active.proc, signal.SIGKILL)
        if self._fork_server is not None:
            self._fork_server.close()
        self._work_dirs.close()


async def _drain(proc: Launched, pumps: asyncio.Future[Any]) -> None:
    """Let the output end; a background child still holding the pipes dies with the group."""
    done, _ = await asyncio.wait({pumps}, timeout=DRAIN_S)
    if not done:
        kill_group(proc, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pumps), DRAIN_S)


def _trailer(status: int, usage: Any, started: datetime) -> dict[str, Any]:
    """What the agent would have reported, from wait4's status and rusage."""
    signalled = os.WIFSIGNALED(status)
    return {
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0,
        "signal": os.WTERMSIG(status) if signalled else 0,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_memory_bytes": usage.ru_maxrss * 1024,
        "io_read_bytes": usage.ru_inblock * 512,
        "io_write_bytes": usage.ru_oublock * 512,
        "wall_seconds": (datetime.now(UTC) - started).total_seconds(),
    }
