"""Parameters over gRPC: publish-time refusals, GetParameterSchema, ValidateParameters."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from jsonschema import Draft202012Validator

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from shared import parameters
from shared.status import from_rpc_error
from tests.integration.catalogue.support import publish

PT = catalogue_pb2.ParameterType
Def = catalogue_pb2.ParameterDefinition
Rules = catalogue_pb2.ParameterRules
Cond = catalogue_pb2.ParameterCondition


def _value(raw: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": raw})
    return holder.fields["v"]


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


DEFINITIONS = [
    Def(name="host", type=PT.PARAMETER_TYPE_STRING, required=True, rules=Rules(pattern=r"[a-z.]+")),
    Def(
        name="port",
        type=PT.PARAMETER_TYPE_INTEGER,
        default_value=_value(22),
        rules=Rules(min_value=1, max_value=65535),
    ),
    Def(
        name="notify",
        type=PT.PARAMETER_TYPE_EMAIL,
        condition=Cond(parameter="port", equals=_value(22)),
        required=True,
    ),
    Def(name="token", type=PT.PARAMETER_TYPE_PASSWORD, default_value=_value("default-secret-xyz")),
    Def(name="when", type=PT.PARAMETER_TYPE_DATETIME),
]


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (
            Def(name="x", type=PT.PARAMETER_TYPE_STRING, rules=Rules(pattern="(unclosed")),
            "parameters[1].rules.pattern",
        ),
        (Def(name="x", type=42), "parameters[1].type"),
        (
            Def(
                name="x",
                type=PT.PARAMETER_TYPE_STRING,
                condition=Cond(parameter="x", equals=_value("a")),
            ),
            "parameters[1].condition.parameter",
        ),
        (
            Def(
                name="x",
                type=PT.PARAMETER_TYPE_INTEGER,
                rules=Rules(min_value=10),
                default_value=_value(3),
            ),
            "parameters[1].default_value",
        ),
    ],
    ids=["bad-regex", "unknown-type", "cycle", "default-breaks-rules"],
)
async def test_publish_refuses_bad_definitions_and_stores_nothing(
    stub: catalogue_pb2_grpc.CatalogueServiceStub, definition: Def, field: str
) -> None:
    await publish(stub, "p", "1.0.0")
    ok = Def(name="fine", type=PT.PARAMETER_TYPE_STRING)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await publish(stub, "p", "1.1.0", params=[ok, definition])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in from_rpc_error(err.value).violations]  # type: ignore[attr-defined]
    assert fields == [field]
    listed = await stub.ListVersions(catalogue_pb2.ListVersionsRequest(script_name="p"))
    assert [v.version for v in listed.versions] == ["1.0.0"]


async def test_parameter_schema_is_json_schema_2020_12(
    stub: catalogue_pb2_grpc.CatalogueServiceStub,
) -> None:
    await publish(stub, "deploy", "1.2.0", params=DEFINITIONS)
    response = await stub.GetParameterSchema(
        catalogue_pb2.GetParameterSchemaRequest(
            ref=common_pb2.ScriptRef(name="deploy", version="^1")
        )
    )
    assert response.version == "1.2.0"
    schema = json_format.MessageToDict(response.schema)
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "urn:runbox:script:deploy:1.2.0"
    assert schema["required"] == ["host"]
    assert schema["properties"]["port"]["default"] == 22
    assert schema["properties"]["token"]["writeOnly"] is True
    assert "default-secret-xyz" not in json.dumps(schema)
    assert schema["allOf"][0]["then"] == {"required": ["notify"]}
    # A client can validate a form with it before calling the server.
    validator = Draft202012Validator(schema, format_checker=parameters.FORMATS)
    assert list(validator.iter_errors({"host": "Bad Host", "port": 22}))


async def test_validate_returns_normalised_values_or_every_violation(
    stub: catalogue_pb2_grpc.CatalogueServiceStub,
) -> None:
    await publish(stub, "deploy", "1.0.0", params=DEFINITIONS)
    ref = common_pb2.ScriptRef(name="deploy")
    ok = await stub.ValidateParameters(
        catalogue_pb2.ValidateParametersRequest(
            ref=ref,
            values=_struct(
                {"host": "db.example", "port": "2222", "when": "2026-01-01T10:00:00+02:00"}
            ),
        )
    )
    assert json_format.MessageToDict(ok.values) == {
        "host": "db.example",
        "port": 2222,
        "when": "2026-01-01T08:00:00Z",
    }
    assert list(ok.secret_names) == ["token"]
    assert "default-secret-xyz" not in str(ok)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ValidateParameters(
            catalogue_pb2.ValidateParametersRequest(
                ref=ref,
                values=_struct(
                    {"host": "UPPER", "port": 70000, "when": "2026-01-01T10:00", "token": "tok-987"}
                ),
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = {v.field for v in from_rpc_error(err.value).violations}  # type: ignore[attr-defined]
    assert found == {"values.host", "values.port", "values.when"}
    assert "tok-987" not in (err.value.details() or "")
    # port defaults to 22, so notify becomes required and must be an email.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ValidateParameters(
            catalogue_pb2.ValidateParametersRequest(ref=ref, values=_struct({"host": "a"}))
        )
    violations = from_rpc_error(err.value).violations  # type: ignore[attr-defined]
    assert [(v.field, v.description) for v in violations] == [("values.notify", "required")]


async def test_schema_and_validation_need_read_permission(catalogue, tokens) -> None:  # type: ignore[no-untyped-def]
    from shared.clients import open_channel

    async with open_channel(catalogue.address, token=tokens.admin) as channel:
        await publish(catalogue_pb2_grpc.CatalogueServiceStub(channel), "s", "1.0.0")
    async with open_channel(catalogue.address, token=tokens.nobody) as channel:
        stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetParameterSchema(
                catalogue_pb2.GetParameterSchemaRequest(ref=common_pb2.ScriptRef(name="s"))
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
