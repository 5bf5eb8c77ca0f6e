"""Helpers for catalogue integration tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import grpc

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from services.catalogue.config import CatalogueSettings
from tests.integration.helpers import settings_for

PY = common_pb2.EXECUTION_TYPE_PYTHON


async def publish(
    stub: catalogue_pb2_grpc.CatalogueServiceStub,
    name: str,
    version: str,
    content: bytes = b"print('hi')\n",
    params: Iterable[catalogue_pb2.ParameterDefinition] = (),
) -> catalogue_pb2.ScriptVersion:
    """Create the python script if needed, then publish one version of it."""
    try:
        await stub.CreateScript(
            catalogue_pb2.CreateScriptRequest(
                script=catalogue_pb2.Script(name=name, execution_type=PY)
            )
        )
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
    return await stub.PublishVersion(
        catalogue_pb2.PublishVersionRequest(
            script_name=name, version=version, content=content, parameters=list(params)
        )
    )


def catalogue_settings(
    tmp_path: Path, database_url: str, nats_url: str, principals_file: Path
) -> CatalogueSettings:
    """Settings of a test catalogue: blobs in tmp_path/blobs, the given database."""
    settings: CatalogueSettings = settings_for(
        CatalogueSettings,
        tmp_path,
        "catalogue",
        nats_url=nats_url,
        principals_file=principals_file,
        blob_dir=str(tmp_path / "blobs"),
    )
    settings.database.url = database_url
    return settings
