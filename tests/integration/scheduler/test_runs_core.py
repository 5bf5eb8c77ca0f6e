"""The run operations on the Core path (shared/db_transactions.py) store and return what the
ORM path does, on every dialect: applied events, a run read by id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import OUTBOX, RUN_COLUMNS, RunRow
from services.scheduler.run_events import RunEvents
from services.scheduler.run_listeners import RunEndHook, RunListeners
from services.scheduler.run_store import RunStore, dispatched_record
from services.scheduler.runs import Runs
from services.scheduler.server import MIGRATIONS
from services.scheduler.servicer import run_to_proto
from services.scheduler.watch import Watchers
from shared import db
from shared.db_transactions import transactions_of
from shared.outbox import Outbox
from shared.settings import DatabaseSettings

RS = common_pb2.RunState
T0 = datetime(2026, 12, 5, 7, 0, 0, 250000, tzinfo=UTC)


@dataclass
class Store:
    engine: Any
    sessions: Any
    core: Runs  # its hook says it is not concerned by successes: the Core path
    orm: Runs  # a hook concerned by every end: the ORM path for every end


def _runs(sessions: Any, hook: RunEndHook) -> Runs:
    return Runs(
        sessions,
        RunStore(sessions, transactions_of(sessions)),
        RunEvents(Outbox(OUTBOX, sessions), subjects_prefix="runbox.events"),
        None,  # type: ignore[arg-type]  # no submit here
        Watchers(),
        SchedulerMetrics(CollectorRegistry()),
        lease_s=60,
        listeners=RunListeners(run_ended=[hook]),
    )


class _Uninterested:
    ended: list[str] = []

    @staticmethod
    def concerns(row: RunRow) -> bool:
        return row.state != RS.RUN_STATE_SUCCEEDED

    async def __call__(self, session: Any, row: RunRow) -> None:
        self.ended.append(row.id)


class _Any:
    @staticmethod
    def concerns(row: RunRow) -> bool:
        return True

    async def __call__(self, session: Any, row: RunRow) -> None:
        pass


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    await db.upgrade(MIGRATIONS, database_url)
    engine = db.create_engine(DatabaseSettings(url=database_url))
    sessions = db.sessionmaker(engine)
    try:
        yield Store(engine, sessions, _runs(sessions, _Uninterested()), _runs(sessions, _Any()))
    finally:
        await engine.dispose()


def _row(run_id: str) -> RunRow:
    return RunRow(
        id=run_id,
        script_name="s",
        script_version="1.0.0",
        sha256="0" * 64,
        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
        state=RS.RUN_STATE_PENDING,
        labels={"team": "data"},
        parameters={"n": 1, "names": ["a", "é"]},
        created_at=T0,
        updated_at=T0,
    )


def _events(run_id: str) -> list[events_pb2.RunEvent]:
    queued = events_pb2.RunEvent(
        run_id=run_id,
        type=events_pb2.RUN_EVENT_TYPE_QUEUED,
        state=RS.RUN_STATE_QUEUED,
        executor_id="ex-1",
    )
    queued.occurred_at.FromDatetime(T0)
    started = events_pb2.RunEvent(
        run_id=run_id, type=events_pb2.RUN_EVENT_TYPE_STARTED, state=RS.RUN_STATE_RUNNING
    )
    started.occurred_at.FromDatetime(T0)
    started.started_at.FromDatetime(T0)
    finished = events_pb2.RunEvent(
        run_id=run_id,
        type=events_pb2.RUN_EVENT_TYPE_FINISHED,
        state=RS.RUN_STATE_SUCCEEDED,
        exit=common_pb2.ExitInfo(exit_code=0, message="done"),
        usage=common_pb2.ResourceUsage(cpu_seconds=0.5, peak_memory_bytes=1024, sandbox="docker"),
        output=common_pb2.OutputTail(stdout=b"out\n", stdout_total_bytes=4),
    )
    finished.occurred_at.FromDatetime(T0)
    finished.finished_at.FromDatetime(T0)
    finished.result.update({"ok": True, "items": [1, 2]})
    return [queued, started, finished]


# Set from the clock when applied, so they differ between two applications.
_CLOCKED = {"id", "updated_at", "lease_expires_at"}


def _columns(row: RunRow) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in RunRow.__table__.columns if c.key not in _CLOCKED}


async def test_applied_events_store_what_the_orm_path_stores(store: Store) -> None:
    """The same events applied on the Core path and the ORM path leave equal rows, hooks
    called on the ORM path only (the Core path's hook says it is not concerned)."""
    async with store.sessions() as session, session.begin():
        session.add_all([_row("core"), _row("orm")])

    async def orm_only(*_: Any) -> Any:
        raise AssertionError("the Core path fell back to the ORM")

    store.core._apply_orm = orm_only  # type: ignore[method-assign]
    core_first = await store.core.apply_many(_events("core")[:1])
    core_rest = await store.core.apply_many([*_events("core")[1:], *_events("core")])
    orm_first = await store.orm.apply_many(_events("orm")[:1])
    orm_rest = await store.orm.apply_many([*_events("orm")[1:], *_events("orm")])

    assert (core_first, core_rest) == (orm_first, orm_rest) == ([True], [True] * 2 + [False] * 3)
    async with store.sessions() as session:
        rows = {r.id: r for r in (await session.scalars(select(RunRow))).all()}
    assert _columns(rows["core"]) == _columns(rows["orm"])
    assert rows["core"].state == RS.RUN_STATE_SUCCEEDED and rows["core"].executor_id == "ex-1"
    assert rows["core"].result == {"ok": True, "items": [1, 2]}
    assert rows["core"].sandbox == "docker" and rows["core"].stdout_tail == b"out\n"
    assert _Uninterested.ended == []


async def test_a_run_read_by_id_is_the_run_the_orm_reads(store: Store) -> None:
    """Runs.get (Core, an object of no session) returns the stored columns as the ORM does."""
    async with store.sessions() as session, session.begin():
        session.add(_row("r1"))
    async with store.sessions() as session:
        stored = await session.get(RunRow, "r1")
    assert stored is not None

    got = await store.core.store.get("r1")

    assert {**_columns(got), "id": got.id} == {**_columns(stored), "id": stored.id}


async def test_dispatched_runs_are_queued_with_their_times_stored_as_the_orm_stores_them(
    store: Store,
) -> None:
    """mark_dispatched_many moves a PENDING run to QUEUED with the executor, its queue time
    and lease, stored in the column's format (SQLite: the text the ORM writes and parses)."""
    async with store.sessions() as session, session.begin():
        session.add_all([_row("d1"), _row("d2")])
    before = datetime.now(UTC)

    await store.core.mark_dispatched_many([("d1", "ex-1", "10.0.0.1:50051")], release=["d2"])

    async with store.sessions() as session:
        row = await session.get(RunRow, "d1")
        raw = (
            await session.execute(text("SELECT queued_at, created_at FROM runs WHERE id = 'd1'"))
        ).first()
    assert row is not None and row.state == RS.RUN_STATE_QUEUED
    assert (row.executor_id, row.executor_address) == ("ex-1", "10.0.0.1:50051")
    assert row.queued_at is not None and row.lease_expires_at is not None
    queued = row.queued_at.replace(tzinfo=row.queued_at.tzinfo or UTC)
    assert before - timedelta(seconds=1) <= queued <= datetime.now(UTC)
    assert raw is not None and type(raw[0]) is type(raw[1])
    if isinstance(raw[0], str):  # SQLite: same text format as the ORM's
        assert len(raw[0]) == len(raw[1]) and "+" not in raw[0] and "T" not in raw[0]


async def test_the_dispatched_change_is_the_run_the_mark_stored(store: Store) -> None:
    """The change a dispatch mark hands watchers (watch.Dispatched), applied to the PENDING
    run as WatchRun shows it (run_store.dispatched_record), is the run as stored after the
    mark: WatchRun need not read it back."""
    async with store.sessions() as session, session.begin():
        session.add(_row("w1"))
    shown = await store.core.store.get("w1")
    queue = store.core._watchers.subscribe("w1")

    await store.core.mark_dispatched_many([("w1", "ex-1", "10.0.0.1:50051")])

    change = queue.get_nowait()
    assert change.row is None and change.dispatched is not None
    d = change.dispatched
    moved = dispatched_record(shown, d.executor_id, d.address, d.at, d.lease_expiry)
    stored = await store.core.store.get("w1")
    # What a watcher is sent (SQLite reads times back naive, as UTC; MariaDB's DATETIME keeps
    # whole seconds: the fed message shows the microseconds a read-back would not).
    fed, read = run_to_proto(moved), run_to_proto(stored)
    if store.engine.dialect.name == "mysql":
        for message in (fed, read):
            message.queue_time.nanos = message.create_time.nanos = 0
    assert fed == read
    assert moved.state == RS.RUN_STATE_QUEUED and moved.lease_expires_at is not None


async def test_a_submitted_run_is_a_record_with_every_column(store: Store) -> None:
    """What the hot path reads is a plain record (no ORM state), with every column."""
    async with store.sessions() as session, session.begin():
        session.add(_row("p1"))
    got = await store.core.store.get("p1")
    assert not isinstance(got, RunRow)
    assert set(vars(got)) == set(RUN_COLUMNS)


async def test_run_times_keep_their_microseconds_on_every_dialect(store: Store) -> None:
    """A run's times are stored to the microsecond on every dialect (MariaDB's DATETIME keeps
    whole seconds unless declared DATETIME(6)): a 12 ms run does not read back as 0 s or 1 s,
    and runs created within one second keep their order."""
    async with store.sessions() as session, session.begin():
        session.add(_row("r1"))
    await store.core.apply_many(_events("r1"))
    finished = T0 + timedelta(milliseconds=12)
    async with store.sessions() as session, session.begin():
        stored = await session.get(RunRow, "r1")
        assert stored is not None
        stored.finished_at = finished

    got = await store.core.store.get("r1")

    def utc(value: datetime | None) -> datetime | None:
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)

    assert utc(got.created_at) == T0 and utc(got.started_at) == T0
    assert utc(got.finished_at) == finished
    assert run_to_proto(got).finish_time.ToDatetime(tzinfo=UTC) == finished
