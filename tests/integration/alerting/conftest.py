"""Fixtures of the alerting flow tests (tests/integration/alerting/flow.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.alerting.flow import Flow, Receiver, started_flow


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
async def flow(
    tmp_path: Path, nats_server: Any, tokens: Any, receiver: Receiver
) -> AsyncIterator[Flow]:
    """A started alerting service of the test's own, with a webhook receiver."""
    async with started_flow(tmp_path, nats_server.url, tokens, receiver) as service:
        yield service
