"""The serverless execution type: one AWS Lambda Invoke (boto3) of an allow-listed function,
at a configurable endpoint (AWS, LocalStack, any Lambda-compatible API).

The payload is the run's parameters as a JSON object; secrets are added (under "secrets") only
when the executor's serverless.send_secrets is on. boto3 blocks, so each call runs on a
daemon thread (at most max_concurrent_invocations at once); botocore does not retry (the
scheduler's retry policy decides).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

from services.executor.config import ServerlessSettings
from services.executor.output import Redactor
from services.executor.runners.base import FR, RS, Job, Outcome, OutputSink, StartedHook, Usage
from services.executor.runners.job_config import execution_config
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

INVOCATION_TYPES = ("RequestResponse", "Event")
# Errors that say the platform (Lambda itself, its capacity, our endpoint) failed: retryable.
RETRYABLE_ERRORS = frozenset(
    {
        "TooManyRequestsException",
        "ServiceException",
        "ResourceNotReadyException",
        "EC2ThrottledException",
        "EC2UnexpectedException",
        "ENILimitReachedException",
        "SnapStartNotReadyException",
        "SnapStartTimeoutException",
    }
)
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous request limit


def function_allowed(name: str, allowed: list[str]) -> bool:
    """Exact names, or prefixes written with a trailing '*'."""
    return any(
        name.startswith(entry[:-1]) if entry.endswith("*") else name == entry for entry in allowed
    )


@dataclass(frozen=True)
class Invocation:
    """A checked Invoke call."""

    function_name: str
    qualifier: str
    region: str
    invocation_type: str
    payload: bytes


def prepare(job: Job, settings: ServerlessSettings) -> Invocation:
    """Check the job's ServerlessConfig against the settings and build the payload."""
    config = execution_config(job, "serverless")
    name = config.function_name
    if not name:
        raise InvalidArgument.field("config.serverless.function_name", "required")
    if not function_allowed(name, settings.allowed_functions):
        raise FailedPrecondition(
            f"config.serverless.function_name: {name!r} is not in this executor's allow-list "
            "(serverless.allowed_functions)",
            [FieldViolation("config.serverless.function_name", "function not allowed")],
        )
    kind = config.invocation_type or "RequestResponse"
    if kind not in INVOCATION_TYPES:
        raise InvalidArgument.field(
            "config.serverless.invocation_type", f"must be one of {list(INVOCATION_TYPES)}"
        )
    payload: dict[str, Any] = dict(job.parameters)
    if settings.send_secrets and job.secrets:
        if "secrets" in payload:
            raise InvalidArgument.field(
                "parameters.secrets", "reserved: the payload carries secret parameters there"
            )
        payload["secrets"] = dict(job.secrets)
    body = json.dumps(payload).encode()
    if len(body) > MAX_PAYLOAD_BYTES:
        raise InvalidArgument.field("parameters", f"payload over {MAX_PAYLOAD_BYTES} bytes")
    return Invocation(name, config.qualifier, config.region or settings.region, kind, body)


@dataclass
class Reply:
    """What Invoke returned, read within the byte cap."""

    status_code: int
    function_error: str
    executed_version: str
    log_tail: bytes
    payload: bytes
    payload_bytes: int


class ServerlessRunner:
    """Invokes Lambda functions through cached, thread-safe boto3 clients."""

    name = "serverless"
    sandbox = ""  # nothing runs here: the function runs elsewhere

    def __init__(self, settings: ServerlessSettings) -> None:
        self._settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_invocations)
        self._clients: dict[str, LambdaClient] = {}
        self._lock = threading.Lock()
        self._tasks: dict[str, asyncio.Future[Reply]] = {}
        self._cancelled: set[str] = set()

    async def validate_config(self, job: Job) -> None:
        prepare(job, self._settings)

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        started = datetime.now(UTC)
        try:
            call = prepare(job, self._settings)
        except (InvalidArgument, FailedPrecondition) as exc:
            outcome = Outcome(
                RS.RUN_STATE_FAILED, reason=FR.FAILURE_REASON_INVALID_CONFIG, message=str(exc)
            )
            return _finish(outcome, started)
        future = self._start(call)
        self._tasks[job.run_id] = future  # before STARTED, so a cancel can always find it
        try:
            await on_started(started)
            done, _ = await asyncio.wait({future}, timeout=job.limits.timeout_s or None)
            if job.run_id in self._cancelled or future.cancelled():
                return _finish(_cancelled(), started)
            if not done:
                # The call cannot be recalled: the function may still finish on its side.
                future.cancel()
                return _finish(_timed_out(job.limits.timeout_s), started)
            error = future.exception()
            if error is not None:
                return _finish(_failure(error), started)
            return _finish(self._outcome(job, future.result(), on_output), started)
        finally:
            future.cancel()  # no-op when done; else stop waiting (executor shutdown)
            self._tasks.pop(job.run_id, None)
            self._cancelled.discard(job.run_id)

    def _start(self, call: Invocation) -> asyncio.Future[Reply]:
        """Invoke on a daemon thread: a call Lambda holds for up to read_timeout_s must not
        keep the executor from exiting (a pool's threads are joined at exit)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()

        def settle(reply: Reply | None, error: BaseException | None) -> None:
            if future.done():  # timed out or cancelled meanwhile
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(reply)  # type: ignore[arg-type]

        def work() -> None:
            with self._slots:
                try:
                    reply, error = self._invoke(call), None
                except Exception as exc:
                    reply, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, reply, error)

        threading.Thread(target=work, name="lambda-invoke", daemon=True).start()
        return future

    def _client(self, region: str) -> LambdaClient:
        """One client per region, created once (client creation is slow; clients are
        thread-safe, sessions are not)."""
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                s = self._settings
                session = boto3.session.Session(
                    aws_access_key_id=s.access_key_id.get_secret_value() or None,
                    aws_secret_access_key=s.secret_access_key.get_secret_value() or None,
                    aws_session_token=s.session_token.get_secret_value() or None,
                    region_name=region,
                )
                client = session.client(
                    "lambda",
                    endpoint_url=s.endpoint_url or None,
                    config=botocore.config.Config(
                        connect_timeout=s.connect_timeout_s,
                        read_timeout=s.read_timeout_s,
                        retries={"total_max_attempts": 1, "mode": "standard"},
                        user_agent_extra="runbox-executor",
                    ),
                )
                self._clients[region] = client
            return client

    def _invoke(self, call: Invocation) -> Reply:
        """The blocking call (runs on the pool)."""
        client = self._client(call.region)
        extra = {"Qualifier": call.qualifier} if call.qualifier else {}
        if call.invocation_type == "RequestResponse":
            extra["LogType"] = "Tail"
        response = client.invoke(
            FunctionName=call.function_name,
            InvocationType=call.invocation_type,  # type: ignore[arg-type]
            Payload=call.payload,
            **extra,  # type: ignore[arg-type]
        )
        stream = response.get("Payload")
        cap = self._settings.max_response_bytes
        payload = b""
        if stream is not None:
            try:
                payload = stream.read(cap + 1)
            finally:
                stream.close()
        try:
            log_tail = base64.b64decode(response.get("LogResult", ""), validate=True)
        except (binascii.Error, ValueError):
            log_tail = b""
        return Reply(
            status_code=response.get("StatusCode", 0),
            function_error=response.get("FunctionError", ""),
            executed_version=response.get("ExecutedVersion", ""),
            log_tail=log_tail,
            payload=payload[:cap],
            payload_bytes=len(payload),
        )

    def _outcome(self, job: Job, reply: Reply, on_output: OutputSink) -> Outcome:
        if reply.log_tail:
            on_output("stderr", reply.log_tail)
        result = result_of(reply, self._settings.max_response_bytes, Redactor(job.secrets.values()))
        on_output("stdout", json.dumps(result, ensure_ascii=False).encode() + b"\n")
        if reply.function_error:
            return Outcome(
                RS.RUN_STATE_FAILED,
                exit_code=1,
                reason=FR.FAILURE_REASON_EXIT_CODE,
                message=f"function error ({reply.function_error})",
                result=result,
            )
        return Outcome(RS.RUN_STATE_SUCCEEDED, result=result)

    async def cancel(self, run_id: str) -> bool:
        future = self._tasks.get(run_id)
        if future is None:
            return False
        self._cancelled.add(run_id)
        future.cancel()  # wakes execute(); a call already sent runs on at Lambda
        return True

    async def close(self) -> None:
        for future in list(self._tasks.values()):
            future.cancel()


def result_of(reply: Reply, cap: int, redactor: Redactor) -> dict[str, Any]:
    """The run's result: status, function error and the payload (JSON when it parses)."""
    truncated = reply.payload_bytes > cap
    payload, encoding = _decode(redactor(reply.payload), truncated)
    return {
        "status_code": reply.status_code,
        "function_error": reply.function_error,
        "executed_version": reply.executed_version,
        "payload": payload,
        "payload_encoding": encoding,
        "payload_bytes": reply.payload_bytes,
        "payload_truncated": truncated,
    }


def _decode(raw: bytes, truncated: bool) -> tuple[Any, str]:
    """JSON when the whole payload parses, else text if UTF-8, else base64."""
    if raw and not truncated:
        try:
            return json.loads(raw), "json"
        except ValueError:
            pass
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"


def _failure(error: BaseException) -> Outcome:
    """Map boto's exceptions: the platform's failures are INFRASTRUCTURE (retryable), a call
    Lambda refused (unknown function, bad payload, no permission) is INVALID_CONFIG."""
    if isinstance(error, botocore.exceptions.ReadTimeoutError):
        return _timed_out(None)
    if isinstance(error, botocore.exceptions.ClientError):
        info = error.response.get("Error", {})
        code = info.get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"lambda refused the invocation: {code}: {info.get('Message', '')}"[:500]
        if code in RETRYABLE_ERRORS or status >= 500:
            return Outcome.infrastructure(message)
        return Outcome(
            RS.RUN_STATE_FAILED, reason=FR.FAILURE_REASON_INVALID_CONFIG, message=message
        )
    if isinstance(error, botocore.exceptions.BotoCoreError):
        return Outcome.infrastructure(f"lambda endpoint: {type(error).__name__}: {error}"[:500])
    return Outcome.infrastructure(f"serverless runner error: {type(error).__name__}")


def _timed_out(timeout_s: float | None) -> Outcome:
    after = f" within {timeout_s:g}s" if timeout_s else ""
    return Outcome(
        RS.RUN_STATE_TIMED_OUT,
        reason=FR.FAILURE_REASON_TIMEOUT,
        message=f"no response from the function{after}",
    )


def _cancelled() -> Outcome:
    return Outcome(RS.RUN_STATE_CANCELLED, reason=FR.FAILURE_REASON_CANCELLED, message="cancelled")


def _finish(outcome: Outcome, started: datetime) -> Outcome:
    finished = datetime.now(UTC)
    outcome.started_at, outcome.finished_at = outcome.started_at or started, finished
    outcome.usage = Usage(wall_seconds=(finished - started).total_seconds())
    return outcome
