"""A catalogue on a real grpc.aio server (port 0), a SQLite file and the session's nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runbox.catalogue.v1 import catalogue_pb2_grpc
from services.catalogue.config import CatalogueSettings
from services.catalogue.server import build
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.integration.helpers import settings_for


@pytest.fixture
async def catalogue(tmp_path: Path, nats_server, tokens) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    """A running catalogue with its database at tmp_path/catalogue.db and blobs in tmp_path/blobs."""
    settings = settings_for(
        CatalogueSettings,
        tmp_path,
        "catalogue",
        nats_url=nats_server.url,
        principals_file=tokens.principals_file,
        blob_dir=str(tmp_path / "blobs"),
    )
    running = await launch(build_runtime("catalogue", settings), build)
    yield running
    await running.stop()


@pytest.fixture
async def stub(
    catalogue: Running, tokens
) -> AsyncIterator[catalogue_pb2_grpc.CatalogueServiceStub]:  # type: ignore[no-untyped-def]
    """A client stub authenticated as the admin principal."""
    async with open_channel(catalogue.address, token=tokens.admin) as channel:
        yield catalogue_pb2_grpc.CatalogueServiceStub(channel)
