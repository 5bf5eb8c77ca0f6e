"""Templates over gRPC: built-ins published at start-up, ListTemplates, InstantiateTemplate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from services.catalogue.server import build
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from shared.status import from_rpc_error
from tests.integration.catalogue.support import catalogue_settings

PY = common_pb2.EXECUTION_TYPE_PYTHON
TEMPLATE = b'print("scan", {{ target | tojson }}, {{ retries | default("3") | tojson }})\n'


@pytest.fixture
async def with_builtins(
    tmp_path: Path, nats_server, tokens, database_url: str
) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    """A catalogue that publishes the built-in templates when it starts."""
    settings = catalogue_settings(tmp_path, database_url, nats_server.url, tokens.principals_file)
    settings.builtin_templates = True
    running = await launch(build_runtime("catalogue", settings), build)
    yield running
    await running.stop()


async def _template(stub: catalogue_pb2_grpc.CatalogueServiceStub, name: str = "scan") -> None:
    await stub.CreateScript(
        catalogue_pb2.CreateScriptRequest(
            script=catalogue_pb2.Script(
                name=name, execution_type=PY, is_template=True, tags=["t"], description="tpl"
            )
        )
    )
    await stub.PublishVersion(
        catalogue_pb2.PublishVersionRequest(
            script_name=name,
            version="1.0.0",
            content=TEMPLATE,
            parameters=[
                catalogue_pb2.ParameterDefinition(
                    name="key", type=catalogue_pb2.PARAMETER_TYPE_PASSWORD, required=True
                )
            ],
        )
    )


async def test_builtin_templates_are_published_once(
    with_builtins: Running, tokens, tmp_path: Path, nats_server, database_url: str
) -> None:  # type: ignore[no-untyped-def]
    async with open_channel(with_builtins.address, token=tokens.admin) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        listed = await stub.ListTemplates(catalogue_pb2.ListTemplatesRequest())
    found = {t.name: t for t in listed.templates}
    assert set(found) == {"config-backup", "network-discovery"}
    assert list(found["network-discovery"].placeholders) == [
        "default_ports",
        "default_timeout_s",
        "max_hosts",
    ]
    assert found["config-backup"].latest_version == "1.0.0"
    # A second replica (or a restart) on the same database publishes nothing new.
    settings = catalogue_settings(
        tmp_path / "again", database_url, nats_server.url, tokens.principals_file
    )
    settings.builtin_templates = True
    settings.blob_dir = str(tmp_path / "blobs")
    second = await launch(build_runtime("catalogue", settings), build)
    try:
        async with open_channel(second.address, token=tokens.admin) as channel:
            stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
            versions = await stub.ListVersions(
                catalogue_pb2.ListVersionsRequest(script_name="network-discovery")
            )
            audit = await stub.ListAuditRecords(catalogue_pb2.ListAuditRecordsRequest())
    finally:
        await second.stop()
    assert [v.version for v in versions.versions] == ["1.0.0"]
    assert len([r for r in audit.records if r.action == "script.create"]) == 2


async def test_instantiate_renders_content_and_keeps_parameters(
    stub: catalogue_pb2_grpc.CatalogueServiceStub,
) -> None:
    await _template(stub)
    made = await stub.InstantiateTemplate(
        catalogue_pb2.InstantiateTemplateRequest(
            template_name="scan",
            name="scan-office",
            placeholders={"target": "10.0.0.0/24"},
            overrides=catalogue_pb2.Script(description="office scan"),
            override_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    assert (made.name, made.description, made.is_template) == ("scan-office", "office scan", False)
    assert list(made.tags) == ["t"] and made.latest_version == "1.0.0"
    chunks = [
        c.chunk
        async for c in stub.GetContent(
            catalogue_pb2.GetContentRequest(script_name="scan-office", version="1.0.0")
        )
    ]
    assert b"".join(chunks) == b'print("scan", "10.0.0.0/24", "3")\n'
    version = await stub.GetVersion(
        catalogue_pb2.GetVersionRequest(script_name="scan-office", version="1.0.0")
    )
    assert [p.name for p in version.parameters] == ["key"]
    assert "created from template scan@1.0.0" in version.changelog
    # The template itself is unchanged and still listed; the instance is not a template.
    listed = await stub.ListTemplates(catalogue_pb2.ListTemplatesRequest())
    assert [t.name for t in listed.templates] == ["scan"]
    assert list(listed.templates[0].placeholders) == ["retries", "target"]


async def test_instantiate_refusals_store_nothing(
    stub: catalogue_pb2_grpc.CatalogueServiceStub,
) -> None:
    await _template(stub)
    await stub.CreateScript(
        catalogue_pb2.CreateScriptRequest(
            script=catalogue_pb2.Script(name="plain", execution_type=PY)
        )
    )
    cases = [
        (
            dict(template_name="scan", name="x1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "placeholders[target]",
        ),
        (
            dict(template_name="scan", name="x2", placeholders={"target": "a", "bogus": "b"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "placeholders[bogus]",
        ),
        (dict(template_name="plain", name="x3"), grpc.StatusCode.INVALID_ARGUMENT, "template_name"),
        (
            dict(template_name="scan", name="Bad Name", placeholders={"target": "a"}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "script.name",
        ),
        (
            dict(template_name="scan", name="plain", placeholders={"target": "a"}),
            grpc.StatusCode.ALREADY_EXISTS,
            "",
        ),
        (dict(template_name="missing", name="x4"), grpc.StatusCode.NOT_FOUND, ""),
    ]
    for fields, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.InstantiateTemplate(catalogue_pb2.InstantiateTemplateRequest(**fields))
        assert err.value.code() == code, fields
        if field:
            violations = from_rpc_error(err.value).violations  # type: ignore[attr-defined]
            assert field in [v.field for v in violations], violations
    listed = await stub.ListScripts(catalogue_pb2.ListScriptsRequest())
    assert sorted(s.name for s in listed.scripts) == ["plain", "scan"]


async def test_template_content_must_parse_at_publish(
    stub: catalogue_pb2_grpc.CatalogueServiceStub,
) -> None:
    await _template(stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PublishVersion(
            catalogue_pb2.PublishVersionRequest(
                script_name="scan", version="1.1.0", content=b"{% for %}\n"
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in from_rpc_error(err.value).violations] == ["content"]  # type: ignore[attr-defined]


async def test_instantiate_needs_write_permission(catalogue: Running, tokens) -> None:  # type: ignore[no-untyped-def]
    async with open_channel(catalogue.address, token=tokens.reader) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        await stub.ListTemplates(catalogue_pb2.ListTemplatesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.InstantiateTemplate(
                catalogue_pb2.InstantiateTemplateRequest(template_name="x", name="y")
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
