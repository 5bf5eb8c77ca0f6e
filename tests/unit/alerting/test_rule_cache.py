"""RuleCache: a rule change made while the cache reads the rules is never hidden."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.alerting import rules as rules_module
from services.alerting.rules import RuleCache


@contextlib.asynccontextmanager
async def _session() -> AsyncIterator[None]:
    yield None


async def test_a_change_during_a_read_makes_the_next_call_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[str] = []
    cache = RuleCache(lambda: _session(), ttl_s=3600.0)  # type: ignore[arg-type,return-value]

    async def active_rules(_session: Any) -> list[Any]:
        reads.append("read")
        if len(reads) == 1:
            cache.invalidate()  # a rule created (and committed) while this read runs
        return [f"rules as of read {len(reads)}"]

    monkeypatch.setattr(rules_module, "active_rules", active_rules)
    assert await cache.rules() == ["rules as of read 1"]
    assert await cache.rules() == ["rules as of read 2"]  # not the stale first read
    assert await cache.rules() == ["rules as of read 2"]  # now fresh: from the cache
    assert len(reads) == 2
