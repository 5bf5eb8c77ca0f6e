"""The runner interface every execution type implements, and its registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from runbox.common.v1 import common_pb2
from shared.errors import InvalidArgument

RS = common_pb2.RunState
FR = common_pb2.FailureReason


@dataclass(frozen=True)
class Limits:
    """Effective limits of one run (request overrides applied to defaults)."""

    cpus: float
    memory_bytes: int
    pids: int
    work_bytes: int
    timeout_s: float
    output_bytes: int
    network: int = common_pb2.NETWORK_POLICY_NONE


@dataclass
class Job:
    """Everything a runner needs for one run. `secrets` never leave memory
    except into the sandbox's 0600 file and environment."""

    run_id: str
    attempt: int
    script_name: str
    script_version: str
    sha256: str
    execution_type: int
    content: bytes
    parameters: dict[str, Any]
    secrets: dict[str, str]
    limits: Limits
    config: dict[str, Any] = field(default_factory=dict)
    isolation: int = common_pb2.ISOLATION_PER_RUN
    runtime: int = common_pb2.RUNTIME_UNSPECIFIED


@dataclass
class Usage:
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    wall_seconds: float = 0.0
    # What isolated the run ("docker", "none"; "" where it does not apply): set from the
    # runner's `sandbox` after it ran.
    sandbox: str = ""


@dataclass(frozen=True)
class ArtifactFile:
    """A file a run left behind, stored by the executor under a sanitised name."""

    name: str
    size_bytes: int
    sha256: str
    uri: str


@dataclass
class Outcome:
    """How a run ended."""

    state: int
    exit_code: int = 0
    reason: int = FR.FAILURE_REASON_UNSPECIFIED
    message: str = ""
    signal: int = 0
    usage: Usage = field(default_factory=Usage)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # What the script wrote to result.json (a JSON object), if it did.
    result: dict[str, Any] | None = None
    artifacts: list[ArtifactFile] = field(default_factory=list)
    # Problems worth telling the user that did not fail the run (skipped artifacts...).
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def infrastructure(cls, message: str) -> Outcome:
        return cls(
            state=RS.RUN_STATE_FAILED, reason=FR.FAILURE_REASON_INFRASTRUCTURE, message=message
        )


# Called with ("stdout" | "stderr", bytes) as output arrives (from a thread).
OutputSink = Callable[[str, bytes], None]
# Called once when user code has started.
StartedHook = Callable[[datetime], Awaitable[None]]


class Runner(Protocol):
    """Runs one job of the execution types it serves."""

    name: str
    # What isolates its runs: "docker", "none" (NOT sandboxed), "" (not applicable).
    sandbox: str

    async def validate_config(self, job: Job) -> None:
        """Raise InvalidArgument (or FailedPrecondition) if the job cannot run here."""

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        """Run to completion, timeout or cancellation; never raise for user errors."""
        ...

    async def cancel(self, run_id: str) -> bool:
        """Stop a run (SIGTERM, grace, SIGKILL); True if it was running here."""
        ...


class RunnerRegistry:
    """Maps execution types to runners."""

    def __init__(self) -> None:
        self._runners: dict[int, Runner] = {}

    def register(self, execution_type: int, runner: Runner) -> None:
        self._runners[execution_type] = runner

    def get(self, execution_type: int) -> Runner:
        runner = self._runners.get(execution_type)
        if runner is None:
            name = (
                common_pb2.ExecutionType.Name(execution_type)
                if execution_type in common_pb2.ExecutionType.values()
                else str(execution_type)
            )
            raise InvalidArgument.field(
                "execution_type", f"{name} is not supported by this executor"
            )
        return runner

    def runners(self) -> list[Runner]:
        return list({id(r): r for r in self._runners.values()}.values())


def interpreter(execution_type: int) -> tuple[list[str], str]:
    """argv prefix and file name for a script type."""
    if execution_type == common_pb2.EXECUTION_TYPE_SHELL:
        return ["/bin/sh"], "main.sh"
    return ["python3"], "main.py"
