"""The outbox backlog gauges against a real SQLite outbox and a real JetStream stream."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData

from shared import db
from shared.outbox import Outbox, outbox_table
from shared.outbox_backlog import OutboxBacklog
from shared.settings import DatabaseSettings


@pytest.fixture
async def setup(tmp_path: Path, nats_server: Any) -> Any:
    """An outbox table in a SQLite file, and a JetStream stream for its subject."""
    metadata = MetaData()
    table = outbox_table(metadata)
    engine = db.create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'o.db'}"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"BACKLOG_{uuid.uuid4().hex[:8].upper()}"
    subject = f"test.{stream.lower()}"
    await js.add_stream(name=stream, subjects=[f"{subject}.>"], duplicate_window=60)
    yield table, db.sessionmaker(engine), js, subject
    await js.delete_stream(stream)
    await nc.close()
    await engine.dispose()


async def _add(outbox: Outbox, sessions: Any, subject: str, ids: list[str]) -> None:
    async with sessions() as session, session.begin():
        for msg_id in ids:
            await outbox.add(session, subject=f"{subject}.x", msg_id=msg_id, payload=b"e")


def gauge(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


async def test_backlog_counts_unsent_events_until_the_relay_sends_them(setup: Any) -> None:
    """Staged events show as unsent with the oldest one's age; a flush brings both to 0."""
    table, sessions, js, subject = setup
    registry = CollectorRegistry()
    backlog = OutboxBacklog(table, sessions, registry, "svc")
    outbox = Outbox(table, sessions)
    assert await backlog.measure() == (0, 0.0)
    await _add(outbox, sessions, subject, ["a", "b", "c"])
    unsent, age = await backlog.measure()
    assert unsent == 3 and age >= 0
    assert gauge(registry, "runbox_svc_outbox_unsent_events") == 3
    assert gauge(registry, "runbox_svc_outbox_oldest_unsent_age_seconds") == age
    assert await outbox.flush(js) == 3
    assert await backlog.measure() == (0, 0.0)
    assert gauge(registry, "runbox_svc_outbox_unsent_events") == 0


async def test_backlog_loop_measures_at_start_and_stops(setup: Any) -> None:
    """The background loop sets the gauges without being asked and stops on request."""
    table, sessions, _js, subject = setup
    registry = CollectorRegistry()
    await _add(Outbox(table, sessions), sessions, subject, ["x"])
    backlog = OutboxBacklog(table, sessions, registry, "svc", interval_s=0.05)
    backlog.start()
    try:
        for _ in range(200):
            if gauge(registry, "runbox_svc_outbox_unsent_events") == 1:
                break
            await asyncio.sleep(0.05)
        assert gauge(registry, "runbox_svc_outbox_unsent_events") == 1
    finally:
        await backlog.stop()
