"""The http execution type: one HTTP request, templated from the run's parameters and
secrets, to a URL the executor's allow-list permits; the response is the run's result.

The allow-list is checked on the rendered, parsed URL (scheme, host, port, path segments),
never on the string, and redirects are not followed: a 3xx is the result, so no hop can
leave the list. The response and the echoed URL are redacted of every secret value.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from services.executor.config import HttpSettings
from services.executor.output import Redactor
from services.executor.runners.base import FR, RS, Job, Outcome, OutputSink, StartedHook, Usage
from services.executor.runners.job_config import execution_config, render
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers httpx computes from the request itself; letting a template set them would let a
# run address a host other than the one the allow-list checked, or desync the framing.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# curl's exit codes for transport failures, so that "exit 7" reads the same everywhere.
EXIT_CONNECT = 7
EXIT_PROTOCOL = 52
EXIT_TRANSPORT = 56


@dataclass(frozen=True)
class UrlPrefix:
    """One allow-list entry, parsed once."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> UrlPrefix:
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL as exc:
            raise ValueError(f"allowed URL {text!r} is not a URL: {exc}") from exc
        if url.scheme not in DEFAULT_PORTS or not url.host:
            raise ValueError(f"allowed URL {text!r} needs an http(s) scheme and a host")
        if url.userinfo or url.query or url.fragment:
            raise ValueError(f"allowed URL {text!r} must not have credentials, query or fragment")
        return cls(url.scheme, url.host.lower(), _port(url), _segments(url.path))

    def allows(self, url: httpx.URL) -> bool:
        target = _segments(url.path)
        return (
            url.scheme == self.scheme
            and url.host.lower() == self.host
            and _port(url) == self.port
            and target[: len(self.segments)] == self.segments
        )


class UrlAllowList:
    """URL prefixes a run may call; empty refuses everything."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self._prefixes = [UrlPrefix.parse(p) for p in prefixes]

    def check(self, url: httpx.URL, field: str) -> None:
        """Raise unless the URL is well-formed and under an allowed prefix."""
        if url.scheme not in DEFAULT_PORTS or not url.host:
            raise InvalidArgument.field(field, "must be an absolute http(s) URL")
        if url.userinfo:
            raise InvalidArgument.field(field, "must not carry credentials: use a header")
        decoded = urllib.parse.unquote(url.path)
        if any(s in (".", "..") for s in decoded.split("/")) or "\\" in decoded:
            raise InvalidArgument.field(field, "must not contain dot segments or backslashes")
        if not any(p.allows(url) for p in self._prefixes):
            raise FailedPrecondition(
                f"{field}: {url.scheme}://{url.host}:{_port(url)}{url.path} is not in this "
                "executor's allow-list (http.allowed_urls)",
                [FieldViolation(field, "URL not allowed by this executor")],
            )


def _port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS.get(url.scheme, 0)


def _segments(path: str) -> tuple[str, ...]:
    """Path segments, decoded; a trailing slash adds no segment ("/v1/" == "/v1")."""
    return tuple(urllib.parse.unquote(s) for s in path.split("/") if s)


@dataclass(frozen=True)
class HttpRequest:
    """A rendered, checked request."""

    method: str
    url: httpx.URL
    headers: dict[str, str]
    body: bytes
    timeout_s: float
    success: frozenset[int]


def prepare(job: Job, settings: HttpSettings, allow: UrlAllowList) -> HttpRequest:
    """Render the job's HttpConfig and check it against the allow-list."""
    config = execution_config(job, "http")
    values = {**job.parameters, **job.secrets}
    method = (config.method or "GET").upper()
    if method not in METHODS:
        raise InvalidArgument.field("config.http.method", f"must be one of {sorted(METHODS)}")
    rendered = render(config.url, values, "config.http.url").strip()
    try:
        url = httpx.URL(rendered)
    except httpx.InvalidURL as exc:
        raise InvalidArgument.field("config.http.url", f"not a URL: {exc}") from exc
    allow.check(url, "config.http.url")
    headers = {}
    for name, template in config.headers.items():
        field = f"config.http.headers[{name}]"
        if not _TOKEN.match(name) or name.lower() in RESERVED_HEADERS:
            raise InvalidArgument.field(field, "not a header a run may set")
        value = render(template, values, field)
        if any(c in value for c in "\r\n\0"):
            raise InvalidArgument.field(field, "must not contain line breaks")
        headers[name] = value
    body = render(config.body, values, "config.http.body").encode()
    timeout = config.timeout.ToTimedelta().total_seconds() if config.HasField("timeout") else 0
    bad = [s for s in config.success_statuses if not 100 <= s <= 599]
    if bad:
        raise InvalidArgument.field("config.http.success_statuses", f"not HTTP statuses: {bad}")
    return HttpRequest(
        method=method,
        url=url,
        headers=headers,
        body=body,
        timeout_s=min(timeout or settings.default_timeout_s, job.limits.timeout_s or 1e9),
        success=frozenset(config.success_statuses or range(200, 300)),
    )


@dataclass
class HttpResponse:
    """What came back, the body cut at the byte cap (total_bytes counts what was read)."""

    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes
    total_bytes: int


def result_of(
    request: HttpRequest, response: HttpResponse, cap: int, redactor: Redactor
) -> dict[str, Any]:
    """The run's result: the response, body as text if UTF-8 else base64, all redacted."""
    body = redactor(response.body)
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(body).decode(), "base64"
    headers: dict[str, str] = {}
    for name, value in response.headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return {
        "method": request.method,
        "url": redactor.text(str(request.url)),
        "status": response.status,
        "reason": response.reason,
        "http_version": response.http_version,
        "headers": {k: redactor.text(v) for k, v in headers.items()},
        "body": text,
        "body_encoding": encoding,
        "body_bytes": response.total_bytes,
        "body_truncated": response.total_bytes > cap,
    }


class HttpRunner:
    """Sends one request per run through a shared connection pool."""

    name = "http"
    sandbox = ""  # nothing runs here: a call out

    def __init__(
        self, settings: HttpSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._settings = settings
        self._allow = UrlAllowList(settings.allowed_urls)
        # No redirects (a hop could leave the allow-list) and no proxy or .netrc from the
        # executor's environment (the request must go where the check said).
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            verify=settings.verify_tls,
            transport=transport,
        )
        self._tasks: dict[str, asyncio.Task[HttpResponse]] = {}

    async def validate_config(self, job: Job) -> None:
        prepare(job, self._settings, self._allow)

    async def execute(self, job: Job, on_output: OutputSink, on_started: StartedHook) -> Outcome:
        started = datetime.now(UTC)
        try:
            request = prepare(job, self._settings, self._allow)
        except (InvalidArgument, FailedPrecondition) as exc:
            return _finish(
                Outcome(RS.RUN_STATE_FAILED, reason=FR.FAILURE_REASON_INVALID_CONFIG), started, exc
            )
        task = asyncio.create_task(self._send(request))
        self._tasks[job.run_id] = task  # before STARTED, so a cancel can always find it
        try:
            await on_started(started)
            done, _ = await asyncio.wait({task}, timeout=request.timeout_s)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return _finish(_timed_out(request.timeout_s), started)
            if task.cancelled():
                outcome = Outcome(
                    RS.RUN_STATE_CANCELLED, reason=FR.FAILURE_REASON_CANCELLED, message="cancelled"
                )
                return _finish(outcome, started)
            error = task.exception()
            if error is not None:
                return _finish(_transport_failure(error, request.timeout_s), started)
            return self._outcome(job, request, task.result(), on_output, started)
        finally:
            if not task.done():  # the run itself was cancelled (executor shutdown)
                task.cancel()
            self._tasks.pop(job.run_id, None)

    async def _send(self, request: HttpRequest) -> HttpResponse:
        cap = self._settings.max_response_bytes
        async with self._client.stream(
            request.method,
            request.url,
            headers=request.headers,
            content=request.body or None,
            timeout=request.timeout_s,
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > cap:
                    break  # the rest is not read: the connection is dropped, not drained
            return HttpResponse(
                status=response.status_code,
                reason=response.reason_phrase,
                http_version=response.http_version,
                headers=list(response.headers.multi_items()),
                body=bytes(body[:cap]),
                total_bytes=len(body),
            )

    def _outcome(
        self,
        job: Job,
        request: HttpRequest,
        response: HttpResponse,
        on_output: OutputSink,
        started: datetime,
    ) -> Outcome:
        result = result_of(
            request, response, self._settings.max_response_bytes, Redactor(job.secrets.values())
        )
        on_output("stdout", json.dumps(result, ensure_ascii=False).encode() + b"\n")
        outcome = Outcome(RS.RUN_STATE_SUCCEEDED, result=result)
        if response.status not in request.success:
            outcome.state, outcome.reason = RS.RUN_STATE_FAILED, FR.FAILURE_REASON_EXIT_CODE
            outcome.exit_code = response.status
            outcome.message = f"HTTP {response.status} {response.reason}".strip()
        return _finish(outcome, started)

    async def cancel(self, run_id: str) -> bool:
        task = self._tasks.get(run_id)
        if task is None:
            return False
        task.cancel()  # execute() sees a cancelled task and ends the run CANCELLED
        return True

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await self._client.aclose()


def _timed_out(timeout_s: float) -> Outcome:
    return Outcome(
        RS.RUN_STATE_TIMED_OUT,
        reason=FR.FAILURE_REASON_TIMEOUT,
        message=f"no complete response within {timeout_s:g}s",
    )


def _transport_failure(error: BaseException, timeout_s: float) -> Outcome:
    """A target that cannot be reached is the run's failure (like a script whose request
    failed), not the platform's: reason EXIT_CODE with curl's exit code for the cause."""
    if isinstance(error, httpx.TimeoutException):
        return _timed_out(timeout_s)
    if isinstance(error, httpx.ConnectError):
        code = EXIT_CONNECT
    elif isinstance(error, httpx.RemoteProtocolError):
        code = EXIT_PROTOCOL
    elif isinstance(error, httpx.TransportError):
        code = EXIT_TRANSPORT
    else:
        return Outcome.infrastructure(f"http runner error: {type(error).__name__}")
    return Outcome(
        RS.RUN_STATE_FAILED,
        exit_code=code,
        reason=FR.FAILURE_REASON_EXIT_CODE,
        message=f"{type(error).__name__}: {error}"[:500],
    )


def _finish(outcome: Outcome, started: datetime, error: Exception | None = None) -> Outcome:
    finished = datetime.now(UTC)
    if error is not None:
        outcome.message = str(error)
    outcome.started_at = outcome.started_at or started
    outcome.finished_at = finished
    outcome.usage = Usage(wall_seconds=(finished - started).total_seconds())
    return outcome
