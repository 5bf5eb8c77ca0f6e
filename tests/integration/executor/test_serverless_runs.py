"""The serverless execution type: boto3 Lambda Invoke against a loopback server that speaks
the Lambda Invoke HTTP API (POST /2015-03-31/functions/{name}/invocations)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from tests.integration.executor.conftest import ExecutorHarness, open_harness
from tests.integration.executor.test_http_runs import field_of

RS = common_pb2
SERVERLESS = common_pb2.EXECUTION_TYPE_SERVERLESS
PREFIX = "/2015-03-31/functions/"
SECRET = "pw-93b1d0c7"


class FakeLambda:
    """Records Invoke calls and answers as Lambda does for a few named functions: echo,
    fails (a function error), slow (waits), throttled (429) and anything else (404)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.received = threading.Event()
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not (url.path.startswith(PREFIX) and url.path.endswith("/invocations")):
                    return self._reply(404, {"message": "no such route"}, error="UnknownOperation")
                name = urllib.parse.unquote(url.path[len(PREFIX) : -len("/invocations")])
                call = {
                    "name": name,
                    "query": dict(urllib.parse.parse_qsl(url.query)),
                    "headers": dict(self.headers),
                    "payload": json.loads(body) if body else None,
                }
                fake.calls.append(call)
                fake.received.set()
                if self.headers.get("X-Amz-Invocation-Type") == "Event":
                    return self._reply(202, None)
                log = base64.b64encode(f"START {name}\nhello from {name}\nEND\n".encode()).decode()
                headers = {"X-Amz-Executed-Version": "$LATEST"}
                if self.headers.get("X-Amz-Log-Type") == "Tail":
                    headers["X-Amz-Log-Result"] = log
                if name == "echo":
                    return self._reply(200, call["payload"], headers)
                if name == "fails":
                    headers["X-Amz-Function-Error"] = "Unhandled"
                    error = {"errorMessage": "boom", "errorType": "ValueError"}
                    return self._reply(200, error, headers)
                if name == "slow":
                    fake.release.wait(30)
                    return self._reply(200, {"late": True}, headers)
                if name == "throttled":
                    return self._reply(
                        429, {"message": "Rate exceeded"}, error="TooManyRequestsException"
                    )
                return self._reply(
                    404,
                    {"message": f"Function not found: {name}"},
                    error="ResourceNotFoundException",
                )

            def _reply(
                self,
                status: int,
                payload: Any,
                headers: dict[str, str] | None = None,
                error: str = "",
            ) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if error:
                    self.send_header("x-amzn-ErrorType", error)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeLambda]:
    server = FakeLambda()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def executor(
    tmp_path: Path, nats_server: Any, tokens: Any, fake: FakeLambda
) -> AsyncIterator[ExecutorHarness]:
    serverless = {
        "endpoint_url": fake.url,
        "region": "eu-west-1",
        "access_key_id": "AKIDRUNBOXTEST",
        "secret_access_key": "not-a-real-key",
        "allowed_functions": ["echo", "fails", "slow", "throttled", "gone", "app-*"],
    }
    async with open_harness(
        tmp_path, nats_server.url, tokens, "local", serverless=serverless
    ) as harness:
        yield harness


def invoke(
    executor: ExecutorHarness, config: dict[str, Any], **kwargs: Any
) -> executor_pb2.ExecuteRequest:
    # The script's content is not used by serverless runs, but every run pins one.
    return executor.request(
        "lambda job\n", kind=SERVERLESS, config={"serverless": config}, **kwargs
    )


def stdout_result(finished: events_pb2.RunEvent) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(finished.output.stdout)
    return result


async def test_serverless_run_invokes_the_function_with_the_parameters(
    executor: ExecutorHarness, fake: FakeLambda
) -> None:
    """The payload is the parameters (no secrets), signed with the configured credentials;
    the response payload is the result and the log tail goes to stderr."""
    request = invoke(
        executor,
        {"function_name": "echo", "qualifier": "live"},
        params={"day": "mon", "n": 2},
        secrets={"pw": SECRET},
    )
    finished, _ = await executor.run(request)
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.exit
    call = fake.calls[-1]
    assert call["payload"] == {"day": "mon", "n": 2}
    assert call["query"] == {"Qualifier": "live"}
    assert "Credential=AKIDRUNBOXTEST/" in call["headers"]["Authorization"]
    assert "/eu-west-1/lambda/" in call["headers"]["Authorization"]
    result = stdout_result(finished)
    assert result["status_code"] == 200 and result["payload"] == {"day": "mon", "n": 2}
    assert result["executed_version"] == "$LATEST"
    assert b"hello from echo" in finished.output.stderr
    assert SECRET not in finished.SerializeToString().decode(errors="replace")


async def test_serverless_function_error_fails_the_run_with_the_error_payload(
    executor: ExecutorHarness,
) -> None:
    """X-Amz-Function-Error makes the run FAILED (EXIT_CODE, exit 1) with the error as result."""
    finished, _ = await executor.run(invoke(executor, {"function_name": "fails"}))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_EXIT_CODE
    assert finished.exit.exit_code == 1
    result = stdout_result(finished)
    assert result["function_error"] == "Unhandled"
    assert result["payload"]["errorMessage"] == "boom"


async def test_serverless_event_invocation_succeeds_on_202(
    executor: ExecutorHarness, fake: FakeLambda
) -> None:
    """InvocationType Event queues the call: 202 and no payload."""
    finished, _ = await executor.run(
        invoke(executor, {"function_name": "app-report", "invocation_type": "Event"})
    )
    assert finished.state == RS.RUN_STATE_SUCCEEDED, finished.exit
    assert fake.calls[-1]["name"] == "app-report"
    assert fake.calls[-1]["headers"]["X-Amz-Invocation-Type"] == "Event"
    assert stdout_result(finished)["status_code"] == 202


async def test_serverless_function_outside_the_allow_list_is_refused_at_execute(
    executor: ExecutorHarness, fake: FakeLambda
) -> None:
    """FAILED_PRECONDITION on config.serverless.function_name; nothing is invoked."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await executor.stub.Execute(invoke(executor, {"function_name": "admin-delete-all"}))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert field_of(exc.value) == "config.serverless.function_name"
    assert fake.calls == []


async def test_serverless_unknown_function_fails_as_invalid_config(
    executor: ExecutorHarness,
) -> None:
    """Lambda's ResourceNotFoundException is the run's configuration, not the platform."""
    finished, _ = await executor.run(invoke(executor, {"function_name": "gone"}))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_INVALID_CONFIG
    assert "ResourceNotFoundException" in finished.exit.message


async def test_serverless_throttling_is_infrastructure_and_not_retried_by_boto(
    executor: ExecutorHarness, fake: FakeLambda
) -> None:
    """429 is retryable by the scheduler (INFRASTRUCTURE); botocore itself tries once."""
    finished, _ = await executor.run(invoke(executor, {"function_name": "throttled"}))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_INFRASTRUCTURE
    assert len(fake.calls) == 1


async def test_serverless_run_times_out(executor: ExecutorHarness) -> None:
    """A function slower than the run's timeout ends the run TIMED_OUT."""
    finished, _ = await executor.run(invoke(executor, {"function_name": "slow"}, timeout_s=1))
    assert finished.state == RS.RUN_STATE_TIMED_OUT
    assert finished.exit.reason == RS.FAILURE_REASON_TIMEOUT


async def test_serverless_run_is_cancelled_while_waiting(
    executor: ExecutorHarness, fake: FakeLambda
) -> None:
    """Cancel ends the run CANCELLED without waiting for the function."""
    request = invoke(executor, {"function_name": "slow"})
    await executor.stub.Execute(request)
    assert await asyncio.to_thread(fake.received.wait, 10)
    reply = await executor.stub.Cancel(executor_pb2.CancelRequest(run_id=request.run_id))
    assert reply.cancelled
    events = await executor.events(request.run_id)
    assert events[-1].state == RS.RUN_STATE_CANCELLED


async def test_serverless_unreachable_endpoint_is_infrastructure(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """An endpoint that refuses connections is the platform's failure: retryable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serverless = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "access_key_id": "AKIDRUNBOXTEST",
        "secret_access_key": "not-a-real-key",
        "allowed_functions": ["echo"],
    }
    async with open_harness(
        tmp_path, nats_server.url, tokens, "local", serverless=serverless
    ) as executor:
        finished, _ = await executor.run(invoke(executor, {"function_name": "echo"}))
    assert finished.state == RS.RUN_STATE_FAILED
    assert finished.exit.reason == RS.FAILURE_REASON_INFRASTRUCTURE
    assert "lambda endpoint" in finished.exit.message
