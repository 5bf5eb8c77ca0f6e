"""The CLI against a real run path (catalogue, local-runner executor, scheduler, the
session's nats-server), for the run, schedule and dead-letter commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner

from tests.integration.cli.conftest import Cli
from tests.integration.stack import RunPath, start_run_path

T = TypeVar("T")


@dataclass
class Stack:
    path: RunPath
    cli: Cli


@asynccontextmanager
async def scheduler_stack(
    tmp_path: Path,
    nats_server: Any,
    tokens: Any,
    monkeypatch: pytest.MonkeyPatch,
    **settings: Any,
) -> AsyncIterator[Stack]:
    """Start the run path and point the CLI at it as the admin principal."""
    path = await start_run_path(tmp_path, nats_server.url, tokens, **settings)
    monkeypatch.setenv("RUNBOX_CATALOGUE_ADDRESS", path.catalogue.address)
    monkeypatch.setenv("RUNBOX_SCHEDULER_ADDRESS", path.scheduler.address)
    monkeypatch.setenv("RUNBOX_TOKEN", tokens.admin)
    monkeypatch.delenv("RUNBOX_TOKEN_FILE", raising=False)
    monkeypatch.delenv("RUNBOX_CONFIG", raising=False)
    try:
        yield Stack(path, Cli(CliRunner()))
    finally:
        await path.close()


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, wait_s: float = 30) -> T:
    """Poll until probe returns something other than None, within a bounded wait."""

    async def poll() -> T:
        while True:
            found = await probe()
            if found is not None:
                return found
            await asyncio.sleep(0.2)

    try:
        return await asyncio.wait_for(poll(), wait_s)
    except TimeoutError:
        raise AssertionError(f"not within {wait_s}s: {what}") from None
