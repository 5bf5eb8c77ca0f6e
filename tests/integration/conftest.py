"""Fixtures of the integration tests: a fresh database of each SQL dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.dialects import DIALECTS, fresh_database


@pytest.fixture(params=DIALECTS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of one dialect, dropped afterwards (test ids [sqlite],
    [postgres], [mysql]; the server ones skip locally, fail in CI, when unset)."""
    async with fresh_database(request.param, tmp_path, "service") as url:
        yield url
