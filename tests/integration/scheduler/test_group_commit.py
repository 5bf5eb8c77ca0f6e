"""Group commit of submits' inserts and dispatch marks (shared/group_commit.py): writes that
arrive together share one transaction, each caller is answered once its own row is
committed, and a failure reaches only the caller whose write causes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from runbox.common.v1 import common_pb2
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import OUTBOX, RunRow
from services.scheduler.run_events import RunEvents
from services.scheduler.run_store import RunStore
from services.scheduler.runs import Runs, new_run_values
from services.scheduler.server import MIGRATIONS
from services.scheduler.watch import Watchers
from shared import db
from shared.db_transactions import transactions_of
from shared.outbox import Outbox
from shared.settings import DatabaseSettings

RS = common_pb2.RunState
T0 = datetime(2026, 12, 5, 7, 0, 0, 250000, tzinfo=UTC)


@pytest.fixture
async def runs(database_url: str) -> AsyncIterator[Runs]:
    await db.upgrade(MIGRATIONS, database_url)
    engine = db.create_engine(DatabaseSettings(url=database_url))
    sessions = db.sessionmaker(engine)
    tx = transactions_of(sessions)
    try:
        yield Runs(
            sessions,
            RunStore(sessions, tx),
            RunEvents(Outbox(OUTBOX, sessions), subjects_prefix="runbox.events"),
            None,  # type: ignore[arg-type]  # no catalogue: runs are inserted as values
            Watchers(),
            SchedulerMetrics(CollectorRegistry()),
            lease_s=60,
        )
    finally:
        await tx.close()
        await engine.dispose()


def _values(run_id: str, key: str | None = None) -> dict[str, Any]:
    values = new_run_values()
    values.update(
        id=run_id,
        script_name="s",
        script_version="1.0.0",
        sha256="0" * 64,
        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
        state=RS.RUN_STATE_PENDING,
        idempotency_key=key,
        request_sha256="a" * 64,
        created_at=T0,
        updated_at=T0,
    )
    return values


async def _stored(runs: Runs) -> tuple[set[str], int]:
    async with runs._sessions() as session:
        ids = set((await session.scalars(select(RunRow.id))).all())
        events = await session.scalar(select(func.count()).select_from(OUTBOX))
    return ids, int(events or 0)


async def test_submits_arriving_together_share_one_transaction(runs: Runs) -> None:
    """Eight submits made ready in one turn of the loop are committed in one transaction,
    each answered with its own run and its SUBMITTED event staged."""
    answered = await asyncio.gather(*(runs._insert(_values(f"g{i}"), {}, "") for i in range(8)))

    assert [run.id for run in answered] == [f"g{i}" for i in range(8)]
    assert runs.store.inserts.groups == 1 and runs.store.inserts.regrouped == 0
    assert await _stored(runs) == ({f"g{i}" for i in range(8)}, 8)


async def test_a_repeated_key_in_a_group_answers_the_existing_run(runs: Runs) -> None:
    """A submit repeating a committed idempotency key, grouped with new ones, answers the
    run the key names; the new runs of its group are committed all the same."""
    first = await runs._insert(_values("k0", key="key-1"), {}, "key-1")

    answered = await asyncio.gather(
        runs._insert(_values("n1"), {}, ""),
        runs._insert(_values("k1", key="key-1"), {}, "key-1"),
        runs._insert(_values("n2"), {}, ""),
    )

    assert [run.id for run in answered] == ["n1", first.id, "n2"]
    assert runs.store.inserts.regrouped == 1
    assert await _stored(runs) == ({"k0", "n1", "n2"}, 3)


async def test_the_same_new_key_twice_in_a_group_makes_one_run(runs: Runs) -> None:
    """Two submits with one new key in the same group: one run, both answered with it."""
    answered = await asyncio.gather(
        runs._insert(_values("a1", key="key-2"), {}, "key-2"),
        runs._insert(_values("a2", key="key-2"), {}, "key-2"),
    )

    assert answered[0].id == answered[1].id == "a1"
    assert await _stored(runs) == ({"a1"}, 1)


async def test_a_failure_in_a_grouped_transaction_fails_only_its_caller(runs: Runs) -> None:
    """One write of a group fails (its stage raises): its caller gets the error, nothing of
    it is stored, and the others of the group are committed and answered."""

    def broken(conn: Connection) -> None:
        raise RuntimeError("boom")

    def fine(conn: Connection) -> None:
        pass

    store = runs.store
    results = await asyncio.gather(
        store.insert(_values("f1"), None, fine),
        store.insert(_values("f2"), None, broken),
        store.insert(_values("f3"), None, fine),
        return_exceptions=True,
    )

    assert results[0] is False and results[2] is False
    assert isinstance(results[1], RuntimeError)
    assert store.inserts.groups == 1 and store.inserts.regrouped == 1
    assert await _stored(runs) == ({"f1", "f3"}, 0)


async def test_a_duplicate_run_id_alone_raises_to_its_caller(runs: Runs) -> None:
    """A write that fails alone (no group) raises as before: IntegrityError for a run id
    already stored."""
    await runs.store.insert(_values("d1"), None, lambda conn: None)

    with pytest.raises(IntegrityError):
        await runs.store.insert(_values("d1"), None, lambda conn: None)


async def test_dispatch_marks_arriving_together_share_one_transaction(runs: Runs) -> None:
    """Marks of several hand-offs answered together are one transaction; each run QUEUED
    on its executor."""
    await asyncio.gather(*(runs._insert(_values(f"m{i}"), {}, "") for i in range(4)))

    await asyncio.gather(
        *(runs.mark_dispatched_many([(f"m{i}", f"ex-{i}", f"h:{i}")]) for i in range(4))
    )

    assert runs.store.marks.groups == 1
    async with runs._sessions() as session:
        rows = (await session.scalars(select(RunRow).order_by(RunRow.id))).all()
    assert [(r.state, r.executor_id) for r in rows] == [
        (RS.RUN_STATE_QUEUED, f"ex-{i}") for i in range(4)
    ]
