"""Python and shell runs on an executor that has no sandbox (no Docker engine) and whose
operator did not allow unsandboxed runs: each is refused at Execute."""

from __future__ import annotations

from services.executor.runners.base import FR, RS, Job, Outcome, OutputSink, StartedHook
from shared.errors import FailedPrecondition, FieldViolation

# The PreconditionFailure subject the scheduler maps to FAILURE_REASON_NO_SANDBOX.
SUBJECT = "sandbox.allow_unsandboxed"
MESSAGE = (
    "no sandbox: this executor has no Docker sandbox (no engine, or backend local) and is not "
    "allowed to run python or shell scripts without one; start Docker (make docker, make "
    "sandbox-image), or let them run as plain host processes with "
    "RUNBOX_SANDBOX__ALLOW_UNSANDBOXED=true (runbox up --allow-unsandboxed)"
)


class NoSandboxRunner:
    """Refuses every run: validate_config raises FailedPrecondition on `SUBJECT`."""

    name = "no-sandbox"
    sandbox = ""

    async def validate_config(self, job: Job) -> None:
        """Always refuses: there is nothing to run the job in."""
        raise FailedPrecondition(MESSAGE, [FieldViolation(SUBJECT, "false")])

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        """Not reached (Execute refuses first); ends the run the same way if it were."""
        return Outcome(
            state=RS.RUN_STATE_FAILED, reason=FR.FAILURE_REASON_NO_SANDBOX, message=MESSAGE
        )

    async def cancel(self, run_id: str) -> bool:
        """Nothing of its own runs."""
        return False

    async def close(self) -> None:
        """Nothing to release."""
