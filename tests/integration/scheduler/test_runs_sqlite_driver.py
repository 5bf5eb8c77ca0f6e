"""On a SQLite file the per-run statements run on the sqlite3 driver itself
(shared/sqlite_rows.py): what they store is byte for byte what SQLAlchemy Core stores for the
same values, and what they read back is what Core reads."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Connection

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.scheduler import run_store
from services.scheduler.handoff import Handoff
from services.scheduler.models import OUTBOX
from services.scheduler.runs import new_run_values
from services.scheduler.server import MIGRATIONS
from shared import db
from shared.db_transactions import Transactions, transactions_of
from shared.outbox import Outbox, OutboxMessage, marks_on
from shared.settings import DatabaseSettings
from shared.sqlite_rows import driver_of

RS = common_pb2.RunState
T0 = datetime(2026, 12, 5, 7, 0, 0, 250000, tzinfo=UTC)
T1 = datetime(2026, 12, 5, 7, 0, 1, 0, tzinfo=UTC)


class Paths:
    """The same Core function on the driver (Transactions on a SQLite file) and on Core
    (a session's connection over aiosqlite, which is no sqlite3 connection)."""

    def __init__(self, path: Path, sessions: Any, tx: Transactions) -> None:
        self.path = path
        self.sessions = sessions
        self.tx = tx

    async def driver(self, fn: Callable[..., Any], *args: Any) -> Any:
        def checked(conn: Connection, *rest: Any) -> Any:
            assert driver_of(conn) is not None
            return fn(conn, *rest)

        return await self.tx.write(checked, *args)

    async def core(self, fn: Callable[..., Any], *args: Any) -> Any:
        def checked(conn: Connection, *rest: Any) -> Any:
            assert driver_of(conn) is None
            return fn(conn, *rest)

        async with self.sessions() as session, session.begin():
            conn = await session.connection()
            return await conn.run_sync(checked, *args)

    def stored(self, table: str, key: str, value: str) -> dict[str, Any]:
        """A row as SQLite holds it (no conversion at all)."""
        with sqlite3.connect(self.path) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute(f"SELECT * FROM {table} WHERE {key} = ?", (value,)).fetchone()
        assert row is not None
        return dict(row)


@pytest.fixture
async def paths(tmp_path: Path) -> AsyncIterator[Paths]:
    path = tmp_path / "scheduler.db"
    url = f"sqlite+aiosqlite:///{path}"
    await db.upgrade(MIGRATIONS, url)
    engine = db.create_engine(DatabaseSettings(url=url))
    sessions = db.sessionmaker(engine)
    tx = transactions_of(sessions)
    try:
        yield Paths(path, sessions, tx)
    finally:
        await tx.close()
        await engine.dispose()


def _values(run_id: str) -> dict[str, Any]:
    values = new_run_values()
    values.update(
        id=run_id,
        script_name="s",
        script_version="1.0.0",
        sha256="0" * 64,
        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
        state=RS.RUN_STATE_PENDING,
        labels={"team": "data", "ünï": "ç"},
        parameters={"n": 1, "x": 0.5, "names": ["a", "é"], "none": None},
        secret_names=["token"],
        trace_context={"traceparent": "00-1-2-01"},
        created_at=T0,
        updated_at=T0,
        output_truncated=True,
        stdout_tail=b"\x00\xffout",
        request_sha256="f" * 64,
    )
    return values


def _no_stage(conn: Connection) -> None:
    pass


def _same_but(a: dict[str, Any], b: dict[str, Any], *keys: str) -> None:
    assert {k: v for k, v in a.items() if k not in keys} == {
        k: v for k, v in b.items() if k not in keys
    }


async def test_a_run_inserted_on_the_driver_is_stored_as_core_stores_it(paths: Paths) -> None:
    """The INSERT of a submit on the driver stores every column as Core does (times, JSON,
    booleans, bytes, NULLs), with the hand-off's claim check on both paths."""
    handoff = Handoff(candidates=[], claim_s=30)
    await paths.driver(run_store._insert_in, _values("drv"), handoff, _no_stage)
    await paths.core(run_store._insert_in, _values("cor"), handoff, _no_stage)

    driver, core = paths.stored("runs", "id", "drv"), paths.stored("runs", "id", "cor")
    _same_but(driver, core, "id")
    assert driver["created_at"] == "2026-12-05 07:00:00.250000"
    assert driver["parameters"] == core["parameters"]


async def test_a_run_read_on_the_driver_is_the_run_core_reads(paths: Paths) -> None:
    """Reads by id and by idempotency key give the same Python values on both paths."""
    values = {**_values("r1"), "idempotency_key": "k1", "queued_at": T1}
    await paths.core(run_store._insert_in, values, None, _no_stage)

    for fn, arg in ((run_store._by_id, "r1"), (run_store._by_key, "k1")):
        driver = await paths.tx.read(fn, arg)
        core = await paths.core(fn, arg)
        assert vars(driver) == vars(core)
        assert vars(driver)["queued_at"] == T1.replace(tzinfo=None)  # as SQLAlchemy reads it
    assert await paths.tx.read(run_store._by_id, "nope") is None


def _events(run_id: str) -> list[events_pb2.RunEvent]:
    started = events_pb2.RunEvent(
        run_id=run_id, type=events_pb2.RUN_EVENT_TYPE_STARTED, state=RS.RUN_STATE_RUNNING
    )
    started.occurred_at.FromDatetime(T0)
    started.started_at.FromDatetime(T0)
    finished = events_pb2.RunEvent(
        run_id=run_id,
        type=events_pb2.RUN_EVENT_TYPE_FINISHED,
        state=RS.RUN_STATE_SUCCEEDED,
        executor_id="ex-1",
        exit=common_pb2.ExitInfo(exit_code=0, message="done"),
        usage=common_pb2.ResourceUsage(cpu_seconds=0.5, peak_memory_bytes=1024, sandbox="none"),
        output=common_pb2.OutputTail(stdout=b"out\n", stdout_total_bytes=4, truncated=True),
    )
    finished.occurred_at.FromDatetime(T1)
    finished.finished_at.FromDatetime(T1)
    finished.result.update({"ok": True, "items": [1, 2]})
    return [started, finished]


async def test_events_applied_on_the_driver_store_what_core_stores(paths: Paths) -> None:
    """A dispatch mark and the applied STARTED and FINISHED leave the same stored row on
    both paths (but the clock's columns)."""
    lease = T1 + timedelta(seconds=60)
    for run_id, on in (("drv", paths.driver), ("cor", paths.core)):
        await on(run_store._insert_in, _values(run_id), None, _no_stage)
        await on(run_store._dispatched_in, {("ex-1", "h:1"): [run_id]}, [], T0, lease)
        dispatched = paths.stored("runs", "id", run_id)
        assert dispatched["state"] == RS.RUN_STATE_QUEUED
        assert dispatched["lease_expires_at"] == "2026-12-05 07:01:01.000000"
        applied = await on(run_store._moves_in, _events(run_id), [0, 1], lease, lambda _c, _r: [])
        assert applied is not None and applied[0] == [0, 1]

    driver, core = paths.stored("runs", "id", "drv"), paths.stored("runs", "id", "cor")
    _same_but(driver, core, "id", "updated_at")
    assert driver["state"] == RS.RUN_STATE_SUCCEEDED and driver["result"] == core["result"]
    assert driver["stdout_tail"] == b"out\n" and driver["output_truncated"] == 1


async def test_outbox_rows_staged_on_the_driver_are_stored_as_core_stores_them(
    paths: Paths,
) -> None:
    """The SUBMITTED event's outbox row: same columns, same formats on both paths."""
    outbox = Outbox(OUTBOX, paths.sessions)

    def stage(msg_id: str) -> Callable[[Connection], None]:
        message = OutboxMessage("runbox.events.run.x.submitted", msg_id, b"\x01\x02", {"a": "b"})
        return lambda conn: outbox.add_in(conn, [message])

    await paths.driver(lambda conn: stage("m-drv")(conn))
    await paths.core(lambda conn: stage("m-cor")(conn))

    driver, core = (
        paths.stored("outbox", "msg_id", "m-drv"),
        paths.stored("outbox", "msg_id", "m-cor"),
    )
    _same_but(driver, core, "id", "msg_id", "created_at")
    assert len(driver["created_at"]) == len(core["created_at"]) == 26
    assert driver["published_at"] is None and driver["headers"] == '{"a": "b"}'


async def test_the_relay_marks_sent_rows_on_the_driver_as_the_session_marked_them(
    paths: Paths,
) -> None:
    """marks_on (the scheduler's relay marker) sets published_at in the format the
    session's UPDATE stored, for the rows named only."""
    outbox = Outbox(OUTBOX, paths.sessions)
    messages = [OutboxMessage("s", f"m{i}", b"x", {}) for i in range(3)]
    await paths.driver(lambda conn: outbox.add_in(conn, messages))

    await marks_on(paths.tx, OUTBOX)(["m0", "m2"])
    await outbox._mark_rows(["m1"])  # the session's way, for comparison

    stored = [paths.stored("outbox", "msg_id", f"m{i}")["published_at"] for i in range(3)]
    assert all(isinstance(at, str) and len(at) == 26 for at in stored)
    assert stored[0][:10] == stored[1][:10] == stored[2][:10]
