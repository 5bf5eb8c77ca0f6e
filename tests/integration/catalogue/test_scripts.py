"""Script registration over gRPC: idempotency, listing and the created event."""

from __future__ import annotations

import asyncio

import grpc
import nats
import pytest

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from tests.integration.catalogue.support import PY, publish

Stub = catalogue_pb2_grpc.CatalogueServiceStub


def _create(name: str, key: str = "", **fields: object) -> catalogue_pb2.CreateScriptRequest:
    script = catalogue_pb2.Script(name=name, execution_type=PY, **fields)  # type: ignore[arg-type]
    return catalogue_pb2.CreateScriptRequest(script=script, idempotency_key=key)


async def test_create_script_returns_first_result_when_idempotency_key_repeats(stub: Stub) -> None:
    """A retried CreateScript with the same key returns the original script, not ALREADY_EXISTS."""
    first = await stub.CreateScript(_create("retry-me", key="k-1", description="first"))
    again = await stub.CreateScript(_create("retry-me", key="k-1", description="second"))
    assert again == first
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateScript(_create("retry-me", key="k-2"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_create_script_stores_metadata_and_defaults_owner_to_caller(stub: Stub) -> None:
    """Metadata round-trips; the owner defaults to the calling principal."""
    limits = common_pb2.ResourceLimits(memory_bytes=64 * 1024 * 1024)
    config = catalogue_pb2.ExecutionConfig(
        script=catalogue_pb2.ScriptRunnerConfig(interpreter="python3")
    )
    created = await stub.CreateScript(
        _create("meta", description="d", tags=["b", "a", "b"], default_limits=limits, config=config)
    )
    got = await stub.GetScript(catalogue_pb2.GetScriptRequest(name="meta"))
    assert got == created
    assert (got.owner, list(got.tags), got.description) == ("admin", ["a", "b"], "d")
    assert got.default_limits == limits and got.config == config
    assert got.create_time.seconds > 0


async def test_list_scripts_filters_and_reports_latest_version(stub: Stub) -> None:
    """ListScripts filters by prefix and execution type and fills latest_version."""
    await publish(stub, "etl-a", "1.0.0")
    await publish(stub, "etl-a", "1.1.0")
    await stub.CreateScript(_create("etl-b"))
    shell = catalogue_pb2.Script(name="etl-sh", execution_type=common_pb2.EXECUTION_TYPE_SHELL)
    await stub.CreateScript(catalogue_pb2.CreateScriptRequest(script=shell))
    page = await stub.ListScripts(
        catalogue_pb2.ListScriptsRequest(name_prefix="etl-", execution_type=PY)
    )
    assert [(s.name, s.latest_version) for s in page.scripts] == [("etl-a", "1.1.0"), ("etl-b", "")]


async def test_unknown_script_is_not_found_for_every_lookup(stub: Stub) -> None:
    """GetScript, GetVersion, ListVersions and PublishVersion on an unknown script are NOT_FOUND."""
    calls = [
        stub.GetScript(catalogue_pb2.GetScriptRequest(name="ghost")),
        stub.GetVersion(catalogue_pb2.GetVersionRequest(script_name="ghost", version="1.0.0")),
        stub.ListVersions(catalogue_pb2.ListVersionsRequest(script_name="ghost")),
        stub.PublishVersion(
            catalogue_pb2.PublishVersionRequest(script_name="ghost", version="1.0.0", content=b"x")
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_create_script_publishes_created_event_with_msg_id(stub: Stub, nats_server) -> None:  # type: ignore[no-untyped-def]
    """CreateScript puts a CREATED ScriptEvent on JetStream with Nats-Msg-Id "<name>:created"."""
    nc = await nats.connect(nats_server.url)
    try:
        await stub.CreateScript(_create("announced"))
        sub = await nc.jetstream().subscribe(
            "runbox.events.script.announced", ordered_consumer=True
        )
        msg = await asyncio.wait_for(sub.next_msg(timeout=10), 15)
        event = events_pb2.ScriptEvent.FromString(msg.data)
        assert event.type == events_pb2.SCRIPT_EVENT_TYPE_CREATED
        assert (event.script_name, event.actor) == ("announced", "admin")
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == "announced:created"
    finally:
        await nc.close()


async def test_no_sandbox_in_default_retry_refused_invalid_argument(stub: Stub) -> None:
    """A default retry policy naming no_sandbox is INVALID_ARGUMENT at create and update, and
    the stored policy is unchanged."""
    from google.protobuf import field_mask_pb2

    from shared.status import from_rpc_error

    reasons = [common_pb2.FAILURE_REASON_LOST, common_pb2.FAILURE_REASON_NO_SANDBOX]
    bad = common_pb2.RetryPolicy(max_attempts=2, retry_on=reasons)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateScript(_create("no-sandbox-retry", default_retry=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in from_rpc_error(err.value).violations]  # type: ignore[attr-defined]
    assert fields == ["script.default_retry.retry_on[1]"]

    good = common_pb2.RetryPolicy(max_attempts=2, retry_on=[common_pb2.FAILURE_REASON_LOST])
    await stub.CreateScript(_create("no-sandbox-retry", default_retry=good))
    script = catalogue_pb2.Script(name="no-sandbox-retry", execution_type=PY, default_retry=bad)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateScript(
            catalogue_pb2.UpdateScriptRequest(
                script=script, update_mask=field_mask_pb2.FieldMask(paths=["default_retry"])
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = await stub.GetScript(catalogue_pb2.GetScriptRequest(name="no-sandbox-retry"))
    assert got.default_retry == good
