"""A catalogue on a real grpc.aio server (port 0) and the session's nats-server,
once per SQL dialect: SQLite always, PostgreSQL and MariaDB when configured
(database_url in tests/integration/conftest.py), each test on a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runbox.catalogue.v1 import catalogue_pb2_grpc
from services.catalogue.server import build
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.integration.catalogue.support import catalogue_settings


@pytest.fixture
async def catalogue(
    tmp_path: Path, database_url: str, nats_server, tokens
) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    """A running catalogue on database_url with its blobs in tmp_path/blobs."""
    settings = catalogue_settings(tmp_path, database_url, nats_server.url, tokens.principals_file)
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
