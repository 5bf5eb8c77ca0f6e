"""The CLI against a real catalogue: CliRunner in a worker thread, config from RUNBOX_* env."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from services.catalogue.server import build
from shared.runtime import Running, build_runtime, launch
from tests.integration.catalogue.support import catalogue_settings
from tests.integration.dialects import fresh_database


@pytest.fixture
async def catalogue(tmp_path: Path, nats_server, tokens) -> AsyncIterator[Running]:  # type: ignore[no-untyped-def]
    """A catalogue on SQLite without the built-in templates, so listings hold only what a test pushed.

    SQLite only: the CLI translates messages; the dialects are the catalogue tests' concern.
    """
    async with fresh_database("sqlite", tmp_path, "catalogue") as url:
        settings = catalogue_settings(tmp_path, url, nats_server.url, tokens.principals_file)
        settings.builtin_templates = False
        running = await launch(build_runtime("catalogue", settings), build)
        yield running
        await running.stop()


@dataclass
class Cli:
    """Runs `runbox ...` the way a user would, against the test catalogue."""

    runner: CliRunner

    async def __call__(self, *args: str) -> Result:
        # The CLI calls asyncio.run: it must not run on the test's event loop.
        return await asyncio.to_thread(self.runner.invoke, app, list(args))

    async def ok(self, *args: str) -> Result:
        result = await self(*args)
        assert result.exit_code == 0, f"{args}: {result.stdout}{result.stderr}"
        return result

    async def json(self, *args: str) -> Any:
        return json.loads((await self.ok(*args, "--json")).stdout)


@pytest.fixture
def cli(catalogue: Running, tokens, monkeypatch: pytest.MonkeyPatch) -> Cli:  # type: ignore[no-untyped-def]
    """The CLI configured for the catalogue as the admin principal."""
    monkeypatch.setenv("RUNBOX_CATALOGUE_ADDRESS", catalogue.address)
    # Script commands never call the scheduler, but the config requires an address.
    monkeypatch.setenv("RUNBOX_SCHEDULER_ADDRESS", "127.0.0.1:9")
    monkeypatch.setenv("RUNBOX_TOKEN", tokens.admin)
    monkeypatch.delenv("RUNBOX_TOKEN_FILE", raising=False)
    monkeypatch.delenv("RUNBOX_CONFIG", raising=False)
    return Cli(CliRunner())
