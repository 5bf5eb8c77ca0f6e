"""Catalogue on a real grpc.aio server, real SQLite and a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import nats
import pytest
from google.protobuf import struct_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from shared.clients import open_channel
from shared.errors import InvalidArgument
from shared.runtime import Running
from shared.status import from_rpc_error
from tests.integration.catalogue.support import PY, publish

PT = catalogue_pb2.ParameterType


async def test_publish_and_resolve_exact_latest_and_ranges(stub) -> None:  # type: ignore[no-untyped-def]
    """Versions resolve by exact version, latest, caret, tilde and comparison ranges."""
    for v in ("1.0.0", "1.2.0", "1.2.7", "1.3.0", "2.0.0", "2.1.0-rc.1"):
        await publish(stub, "job", v, content=f"print('{v}')".encode())
    cases = {
        "1.2.0": "1.2.0",
        "": "2.0.0",
        "latest": "2.0.0",
        "^1.2": "1.3.0",
        "~1.2.3": "1.2.7",
        ">=1.0,<2": "1.3.0",
        "2.1.0-rc.1": "2.1.0-rc.1",
    }
    for selector, expected in cases.items():
        got = await stub.ResolveVersion(
            catalogue_pb2.ResolveVersionRequest(
                ref=common_pb2.ScriptRef(name="job", version=selector)
            )
        )
        assert got.version == expected, selector
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveVersion(
            catalogue_pb2.ResolveVersionRequest(ref=common_pb2.ScriptRef(name="job", version=">=3"))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_content_round_trips_in_chunks(stub) -> None:  # type: ignore[no-untyped-def]
    """GetContent streams the exact bytes with their digest."""
    content = bytes(range(256)) * 1000  # 256 KB: several chunks
    published = await publish(stub, "big", "1.0.0", content=content)
    assert published.sha256 == hashlib.sha256(content).hexdigest()
    chunks = [
        m
        async for m in stub.GetContent(
            catalogue_pb2.GetContentRequest(script_name="big", version="1.0.0")
        )
    ]
    assert len(chunks) > 1
    assert chunks[0].sha256 == published.sha256
    assert b"".join(c.chunk for c in chunks) == content


async def test_corrupt_blob_is_data_loss(stub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A blob altered on disk is reported as DATA_LOSS, never served."""
    published = await publish(stub, "fragile", "1.0.0", content=b"print('original')")
    blob = tmp_path / "blobs" / published.sha256[:2] / published.sha256[2:4] / published.sha256
    blob.write_bytes(b"print('tampered')")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [
            m
            async for m in stub.GetContent(
                catalogue_pb2.GetContentRequest(script_name="fragile", version="1.0.0")
            )
        ]
    assert err.value.code() == grpc.StatusCode.DATA_LOSS


async def test_duplicate_version_is_already_exists(stub) -> None:  # type: ignore[no-untyped-def]
    """Versions are immutable: publishing one twice is ALREADY_EXISTS and keeps the first."""
    first = await publish(stub, "imm", "1.0.0", content=b"print(1)")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await publish(stub, "imm", "1.0.0", content=b"print(2)")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    again = await stub.GetVersion(
        catalogue_pb2.GetVersionRequest(script_name="imm", version="1.0.0")
    )
    assert again.sha256 == first.sha256


async def test_bad_input_is_invalid_argument_with_fields(stub) -> None:  # type: ignore[no-untyped-def]
    """Bad names, semver, digest and size are INVALID_ARGUMENT naming the field."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateScript(
            catalogue_pb2.CreateScriptRequest(script=catalogue_pb2.Script(name="Bad Name!"))
        )
    error = from_rpc_error(err.value)
    assert isinstance(error, InvalidArgument)
    assert {v.field for v in error.violations} == {"script.name", "script.execution_type"}
    await publish(stub, "ok", "1.0.0")
    bad = [
        (
            catalogue_pb2.PublishVersionRequest(script_name="ok", version="1.0", content=b"x"),
            "version",
        ),
        (
            catalogue_pb2.PublishVersionRequest(
                script_name="ok", version="1.0.1", content=b"x", sha256="0" * 64
            ),
            "sha256",
        ),
        (
            catalogue_pb2.PublishVersionRequest(
                script_name="ok", version="1.0.2", content=b"x" * (1024 * 1024 + 1)
            ),
            "content",
        ),
    ]
    for request, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PublishVersion(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in from_rpc_error(err.value).violations] == [field]  # type: ignore[attr-defined]


async def test_unknown_script_is_not_found(stub) -> None:  # type: ignore[no-untyped-def]
    """Unknown scripts are NOT_FOUND for every lookup."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ResolveVersion(
            catalogue_pb2.ResolveVersionRequest(ref=common_pb2.ScriptRef(name="ghost"))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_validate_parameters_fills_defaults_and_reports_all(stub) -> None:  # type: ignore[no-untyped-def]
    """Defaults are filled, types coerced, secrets split off, and all violations reported at once."""
    params = [
        catalogue_pb2.ParameterDefinition(
            name="count",
            type=PT.PARAMETER_TYPE_INTEGER,
            required=True,
            rules=catalogue_pb2.ParameterRules(max_value=10),
        ),
        catalogue_pb2.ParameterDefinition(
            name="greeting",
            type=PT.PARAMETER_TYPE_STRING,
            default_value=struct_pb2.Value(string_value="hello"),
        ),
        catalogue_pb2.ParameterDefinition(
            name="api_key",
            type=PT.PARAMETER_TYPE_PASSWORD,
            default_value=struct_pb2.Value(string_value="s3cr3t-default"),
        ),
    ]
    version = await publish(stub, "params", "1.0.0", params=params)
    assert not any(p.HasField("default_value") for p in version.parameters if p.name == "api_key")
    values = struct_pb2.Struct()
    values.update({"count": "7"})
    ok = await stub.ValidateParameters(
        catalogue_pb2.ValidateParametersRequest(
            ref=common_pb2.ScriptRef(name="params"), values=values
        )
    )
    assert dict(ok.values) == {"count": 7, "greeting": "hello"}
    assert list(ok.secret_names) == ["api_key"]
    assert "s3cr3t" not in str(ok)
    bad = struct_pb2.Struct()
    bad.update({"count": "99", "nope": 1})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ValidateParameters(
            catalogue_pb2.ValidateParametersRequest(
                ref=common_pb2.ScriptRef(name="params"), values=bad
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in from_rpc_error(err.value).violations} == {
        "values.count",
        "values.nope",
    }  # type: ignore[attr-defined]


async def test_permissions_enforced(catalogue: Running, tokens) -> None:  # type: ignore[no-untyped-def]
    """No token -> UNAUTHENTICATED; a reader cannot create scripts."""
    async with grpc.aio.insecure_channel(catalogue.address) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListScripts(catalogue_pb2.ListScriptsRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(catalogue.address, token=tokens.reader) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        await stub.ListScripts(catalogue_pb2.ListScriptsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateScript(
                catalogue_pb2.CreateScriptRequest(
                    script=catalogue_pb2.Script(name="x", execution_type=PY)
                )
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_publish_emits_script_event_on_jetstream(stub, nats_server) -> None:  # type: ignore[no-untyped-def]
    """Publishing a version puts a ScriptEvent on runbox.events.script.<name>."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await publish(stub, "evented", "3.1.4")
        sub = await js.subscribe("runbox.events.script.evented", ordered_consumer=True)
        seen = []

        async def collect() -> None:
            while not any(e.type == events_pb2.SCRIPT_EVENT_TYPE_VERSION_PUBLISHED for e in seen):
                msg = await sub.next_msg(timeout=10)
                seen.append(events_pb2.ScriptEvent.FromString(msg.data))

        await asyncio.wait_for(collect(), 15)
        published = [e for e in seen if e.type == events_pb2.SCRIPT_EVENT_TYPE_VERSION_PUBLISHED]
        assert published[0].version == "3.1.4"
        assert published[0].actor == "admin"
    finally:
        await nc.close()


async def test_script_names_page_with_stable_cursor(stub) -> None:  # type: ignore[no-untyped-def]
    """ListScripts pages through every script exactly once, even with inserts between pages."""
    for i in range(5):
        await publish(stub, f"page-{i}", "1.0.0")
    first = await stub.ListScripts(
        catalogue_pb2.ListScriptsRequest(name_prefix="page-", page_size=2)
    )
    await publish(stub, "page-0a", "1.0.0")  # sorts before the cursor: must not shift pages
    names = [s.name for s in first.scripts]
    token = first.next_page_token
    while token:
        page = await stub.ListScripts(
            catalogue_pb2.ListScriptsRequest(name_prefix="page-", page_size=2, page_token=token)
        )
        names += [s.name for s in page.scripts]
        token = page.next_page_token
    assert names == ["page-0", "page-1", "page-2", "page-3", "page-4"]
