"""The shared gRPC bootstrap on a real grpc.aio server: server-side default
deadline, error mapping with field details, auth, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runbox.alerting.v1 import alerting_pb2, alerting_pb2_grpc
from shared.auth import hash_token
from shared.clients import open_channel
from shared.errors import FieldViolation, InvalidArgument
from shared.runtime import Running, Service, build_runtime, launch
from shared.settings import ServiceSettings
from shared.status import from_rpc_error

SERVICE = alerting_pb2.DESCRIPTOR.services_by_name["AlertingService"].full_name


class SlowServicer(alerting_pb2_grpc.AlertingServiceServicer):
    """GetRule never answers; CreateRule rejects two fields; ListRules raises a bug."""

    async def GetRule(self, request, context):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3600)

    async def CreateRule(self, request, context):  # type: ignore[no-untyped-def]
        raise InvalidArgument(
            "rule is invalid",
            [FieldViolation("rule.name", "required"), FieldViolation("rule.severity", "unknown")],
        )

    async def ListRules(self, request, context):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internal detail")


async def _build(runtime):  # type: ignore[no-untyped-def]
    return Service(
        registrations=[
            (alerting_pb2_grpc.add_AlertingServiceServicer_to_server, SlowServicer(), SERVICE)
        ],
        permissions={
            f"/{SERVICE}/GetRule": "alert:read",
            f"/{SERVICE}/CreateRule": "alert:write",
            f"/{SERVICE}/ListRules": "alert:read",
        },
    )


@pytest.fixture
async def server() -> AsyncIterator[Running]:
    settings = ServiceSettings(
        grpc={"default_deadline_s": 0.5},
        metrics={"port": -1},
        auth={
            "principals": [
                {
                    "name": "a",
                    "token_sha256": hash_token("good"),
                    "permissions": ["alert:read", "alert:write"],
                },
                {"name": "r", "token_sha256": hash_token("reader"), "permissions": ["alert:read"]},
            ]
        },
    )
    running = await launch(build_runtime("testsvc", settings), _build)
    yield running
    await running.stop()


async def test_call_without_deadline_gets_server_default(server: Running) -> None:
    """A unary call with no client deadline ends with DEADLINE_EXCEEDED from the server."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = alerting_pb2_grpc.AlertingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetRule(
                alerting_pb2.GetRuleRequest(id="x"), metadata=[("authorization", "Bearer good")]
            )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "server-side deadline" in (err.value.details() or "")


async def test_invalid_argument_carries_every_field_violation(server: Running) -> None:
    """Domain InvalidArgument becomes INVALID_ARGUMENT with BadRequest details."""
    async with open_channel(server.address, token="good") as channel:
        stub = alerting_pb2_grpc.AlertingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateRule(alerting_pb2.CreateRuleRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_rpc_error(err.value)
    assert isinstance(error, InvalidArgument)
    assert [(v.field, v.description) for v in error.violations] == [
        ("rule.name", "required"),
        ("rule.severity", "unknown"),
    ]


async def test_unexpected_error_is_internal_without_details(server: Running) -> None:
    """A bug becomes INTERNAL and its message does not leak."""
    async with open_channel(server.address, token="good") as channel:
        stub = alerting_pb2_grpc.AlertingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListRules(alerting_pb2.ListRulesRequest())
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (err.value.details() or "")


@pytest.mark.parametrize(
    ("token", "method", "code"),
    [
        (None, "ListRules", grpc.StatusCode.UNAUTHENTICATED),
        ("wrong", "ListRules", grpc.StatusCode.UNAUTHENTICATED),
        ("reader", "CreateRule", grpc.StatusCode.PERMISSION_DENIED),
        ("good", "DeleteRule", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_auth_refuses_bad_callers(
    server: Running, token: str | None, method: str, code: grpc.StatusCode
) -> None:
    """Missing/invalid tokens are UNAUTHENTICATED; missing permissions PERMISSION_DENIED."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = alerting_pb2_grpc.AlertingServiceStub(channel)
        request_type = getattr(alerting_pb2, f"{method}Request")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(request_type(), metadata=metadata, timeout=5)
    assert err.value.code() == code


async def test_health_is_serving_without_token(server: Running) -> None:
    """Health checks need no token (probes) and report SERVING for the service."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
