"""The http execution type against a real HTTP server on loopback, through a real
executor on a real gRPC server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from shared.status import DETAILS_KEY, from_rpc_error
from tests.integration.executor.conftest import ExecutorHarness, open_harness

RS = common_pb2
HTTP = common_pb2.EXECUTION_TYPE_HTTP
TOKEN = "tok-4f8a1c9e"
MAX_BODY = 2048


class Target:
    """A loopback HTTP server that records what it receives."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.received = threading.Event()
        self.release = threading.Event()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                target.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body.decode(),
                    }
                )
                target.received.set()
                path = self.path.split("?")[0]
                if path == "/api/slow":
                    target.release.wait(30)
                    return self._reply(200, b"late")
                if path.startswith("/api/status/"):
                    return self._reply(int(path.rsplit("/", 1)[1]), b"status body")
                if path == "/api/redirect":
                    return self._reply(302, b"", {"Location": "http://169.254.169.254/latest"})
                if path == "/api/big":
                    return self._reply(200, b"x" * (MAX_BODY * 3))
                if path == "/api/binary":
                    return self._reply(200, bytes(range(256)))
                echo = {
                    "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "body": body.decode(),
                }
                return self._reply(
                    200,
                    json.dumps(echo).encode(),
                    {"X-Echo-Auth": self.headers.get("Authorization", "")},
                )

            def _reply(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def closed_url() -> str:
    """An allowed URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


@pytest.fixture
async def executor(
    tmp_path: Path, nats_server: Any, tokens: Any, target: Target, closed_url: str
) -> AsyncIterator[ExecutorHarness]:
    allowed = [f"http://127.0.0.1:{target.port}/api/", closed_url]
    async with open_harness(
        tmp_path,
        nats_server.url,
        tokens,
        "local",
        http={"allowed_urls": allowed, "max_response_bytes": MAX_BODY},
    ) as harness:
        yield harness


def http_request(
    executor: ExecutorHarness, http: dict[str, Any], **kwargs: Any
) -> executor_pb2.ExecuteRequest:
    # The script's content is not used by http runs, but every run pins one.
    return executor.request("http job\n", kind=HTTP, config={"http": http}, **kwargs)


def stdout_result(finished: events_pb2.RunEvent) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(finished.output.stdout)
    return result


async def test_http_run_sends_the_templated_request_and_captures_the_response(
    executor: ExecutorHarness, target: Target
) -> None:
    """URL, header and body render from parameters and secrets; the response is the result,
    with the secret redacted wherever it is echoed."""
    http = {
        "method": "POST",
        "url": f"http://127.0.0.1:{target.port}/api/items/{{{{ item }}}}?q={{{{ q | urlquote }}}}",
        "headers": {"Authorization": "Bearer {{ token }}", "Content-Type": "application/json"},
        "body": '{"count": {{ count }}}',
    }
    request = http_request(
        executor, http, params={"item": "42", "q": "a b", "count": 3}, secrets={"token": TOKEN}
    )
    finished, _ = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.exit
    seen = target.requests[-1]
    assert seen["method"] == "POST"
    assert seen["path"] == "/api/items/42?q=a%20b"
    assert seen["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert seen["body"] == '{"count": 3}'
    result = stdout_result(finished)
    assert result["status"] == 200 and result["body_encoding"] == "utf-8"
    assert json.loads(result["body"])["auth"] == "Bearer ***"
    assert result["headers"]["x-echo-auth"] == "Bearer ***"
    assert TOKEN not in finished.SerializeToString().decode(errors="replace")
    assert json_format.MessageToDict(finished.result)["status"] == 200


async def test_http_run_fails_with_the_status_as_exit_code(
    executor: ExecutorHarness, target: Target
) -> None:
    """A status outside success_statuses (default 2xx) fails the run with exit code = status."""
    url = f"http://127.0.0.1:{target.port}/api/status/503"
    finished, _ = await executor.run(http_request(executor, {"url": url}))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_EXIT_CODE
    assert finished.exit.exit_code == 503
    assert stdout_result(finished)["body"] == "status body"


async def test_http_run_succeeds_on_a_listed_success_status(
    executor: ExecutorHarness, target: Target
) -> None:
    """success_statuses replaces the 2xx default."""
    url = f"http://127.0.0.1:{target.port}/api/status/404"
    finished, _ = await executor.run(
        http_request(executor, {"url": url, "success_statuses": [404]})
    )
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.exit


async def test_http_run_does_not_follow_redirects(
    executor: ExecutorHarness, target: Target
) -> None:
    """A redirect is the result, not a hop: nothing outside the allow-list is called."""
    url = f"http://127.0.0.1:{target.port}/api/redirect"
    finished, _ = await executor.run(http_request(executor, {"url": url}))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.exit_code == 302
    assert stdout_result(finished)["headers"]["location"] == "http://169.254.169.254/latest"
    assert len(target.requests) == 1


async def test_http_run_truncates_a_large_body_and_base64s_binary(
    executor: ExecutorHarness, target: Target
) -> None:
    """The body is cut at http.max_response_bytes; non-UTF-8 bodies are base64."""
    big, _ = await executor.run(
        http_request(executor, {"url": f"http://127.0.0.1:{target.port}/api/big"})
    )
    result = stdout_result(big)
    assert result["body_truncated"] and len(result["body"]) == MAX_BODY
    binary, _ = await executor.run(
        http_request(executor, {"url": f"http://127.0.0.1:{target.port}/api/binary"})
    )
    assert stdout_result(binary)["body_encoding"] == "base64"


async def test_http_run_times_out(executor: ExecutorHarness, target: Target) -> None:
    """No response within the config's timeout ends the run TIMED_OUT."""
    url = f"http://127.0.0.1:{target.port}/api/slow"
    finished, _ = await executor.run(http_request(executor, {"url": url, "timeout": "1s"}))
    assert finished.state == RS.RUN_STATE_TIMED_OUT
    assert finished.exit.reason == RS.FAILURE_REASON_TIMEOUT


async def test_http_run_is_cancelled_mid_request(executor: ExecutorHarness, target: Target) -> None:
    """Cancel stops the waiting request and the run ends CANCELLED."""
    request = http_request(executor, {"url": f"http://127.0.0.1:{target.port}/api/slow"})
    await executor.stub.Execute(request)
    assert await asyncio.to_thread(target.received.wait, 10)
    reply = await executor.stub.Cancel(executor_pb2.CancelRequest(run_id=request.run_id))
    assert reply.cancelled
    events = await executor.events(request.run_id)
    assert events[-1].state == RS.RUN_STATE_CANCELLED


async def test_http_run_to_a_refused_port_fails_like_curl(
    executor: ExecutorHarness, closed_url: str
) -> None:
    """A target that refuses the connection is the run's failure: EXIT_CODE, exit code 7."""
    finished, _ = await executor.run(http_request(executor, {"url": closed_url + "x"}))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_EXIT_CODE
    assert finished.exit.exit_code == 7


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/other",
        "http://127.0.0.1:{port}@169.254.169.254/api/",
        "http://{{{{ host }}}}/api/",
    ],
)
async def test_http_run_outside_the_allow_list_is_refused_at_execute(
    executor: ExecutorHarness, target: Target, url: str
) -> None:
    """The rendered URL is checked before acceptance: FAILED_PRECONDITION on config.http.url,
    or INVALID_ARGUMENT for URL tricks; the target sees nothing."""
    request = http_request(
        executor, {"url": url.format(port=target.port)}, params={"host": "169.254.169.254"}
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await executor.stub.Execute(request)
    code = exc.value.code()
    assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
    assert field_of(exc.value) == "config.http.url"
    assert target.requests == []


async def test_http_run_with_a_missing_parameter_is_refused_at_execute(
    executor: ExecutorHarness, target: Target
) -> None:
    """StrictUndefined: a template naming an absent parameter is INVALID_ARGUMENT."""
    url = f"http://127.0.0.1:{target.port}/api/{{{{ nope }}}}"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await executor.stub.Execute(http_request(executor, {"url": url}))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(exc.value).violations[0].field == "config.http.url"  # type: ignore[attr-defined]


def field_of(exc: grpc.aio.AioRpcError) -> str:
    """The field named by a BadRequest or PreconditionFailure detail."""
    for key, value in exc.trailing_metadata() or ():
        if key != DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                return str(bad.field_violations[0].field)
            if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                return str(failure.violations[0].subject)
    return ""
