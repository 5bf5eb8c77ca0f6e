"""The due second of a fire recorded ahead: one statement makes its run PENDING and
claims it for this replica's dispatcher (the executor it goes to recorded, as a dispatch
round records it before sending), and its ExecuteRequest, built when the fire was
recorded, is sent at once. No dispatch round (claim, attempts, request building) stands
between the boundary and the ExecuteBatch calls.

What this replica's memory does not hold (fires recorded by another replica, or before a
restart) is made PENDING unclaimed a `grace` after its due time, for any replica's
dispatch rounds: the sweep for what memory lost. Within the grace the replica that
recorded a fire has it to itself, so two replicas promoting at the same second do not
take each other's runs into their slower rounds."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2
from services.scheduler.executors import Executor
from services.scheduler.firing.bases import RUNS
from services.scheduler.models import QuarantineRow

RS = common_pb2.RunState
# Runs promoted per statement (bounded IN lists).
PROMOTE_CHUNK = 1000


class Handover(Protocol):
    """What the firing loop needs of the dispatcher at a due second (dispatch.py)."""

    @property
    def claim_s(self) -> float:
        """How long a claim holds the runs it took."""

    def due_executors(self) -> list[Executor]:
        """Executors due runs may be claimed for now; none: they go through rounds."""

    def send_due(self, sends: Sequence[tuple[executor_pb2.ExecuteRequest, Executor]]) -> None:
        """Hand claimed runs over (in the background)."""


class DueRuns:
    """The requests of the fires this replica recorded ahead, by run id, until due."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, str]] = []
        self._requests: dict[str, executor_pb2.ExecuteRequest] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, at: datetime, request: executor_pb2.ExecuteRequest) -> None:
        heapq.heappush(self._heap, (at, request.run_id))
        self._requests[request.run_id] = request

    def take(self, now: datetime) -> dict[str, executor_pb2.ExecuteRequest]:
        """The requests due by `now`, forgotten here (a withdrawn run's too: its claim will
        match nothing)."""
        taken: dict[str, executor_pb2.ExecuteRequest] = {}
        while self._heap and self._heap[0][0] <= now:
            _, run_id = heapq.heappop(self._heap)
            request = self._requests.pop(run_id, None)
            if request is not None:
                taken[run_id] = request
        return taken


def _due(now: datetime) -> ColumnElement[bool]:
    return (RUNS.c.state == RS.RUN_STATE_SCHEDULED) & (RUNS.c.next_dispatch_at <= now)


async def promote(session: AsyncSession, by: datetime, now: datetime) -> int:
    """SCHEDULED runs due by `by` become PENDING, unclaimed (for dispatch rounds); how many.
    On SQLite (one writer) one UPDATE; on servers the due rows are first taken with FOR
    UPDATE SKIP LOCKED, so replicas promoting at the same second split the rows instead of
    waiting on (or deadlocking over) each other's."""
    values = {"state": RS.RUN_STATE_PENDING, "updated_at": now}
    if session.get_bind().dialect.name == "sqlite":
        result = await session.execute(update(RUNS).where(_due(by)).values(**values))
        return int(getattr(result, "rowcount", 0) or 0)
    ids = list(
        (
            await session.scalars(
                select(RUNS.c.id).where(_due(by)).with_for_update(skip_locked=True)
            )
        ).all()
    )
    for i in range(0, len(ids), PROMOTE_CHUNK):
        await session.execute(
            update(RUNS).where(RUNS.c.id.in_(ids[i : i + PROMOTE_CHUNK])).values(**values)
        )
    return len(ids)


async def promote_due(sessions: async_sessionmaker[AsyncSession], now: datetime) -> int:
    """`promote` everything due by now, in its own transaction (no dispatcher to claim for)."""
    async with sessions() as session, session.begin():
        return await promote(session, now, now)


async def promote_claimed(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    groups: Mapping[str, Sequence[str]],
    *,
    until: datetime,
    others_by: datetime,
) -> tuple[list[str], int]:
    """In one transaction: the due SCHEDULED runs among `groups` (executor address -> run
    ids) become PENDING claimed until `until`, each recorded as sent to its executor (as a
    dispatch round's claim and attempt record would); then the other runs due by
    `others_by` are promoted unclaimed. The ids claimed (a run withdrawn, cancelled or
    taken meanwhile is not), and how many were promoted unclaimed. A quarantined script's
    runs are not claimed (rounds leave them waiting)."""
    quarantined = select(QuarantineRow.script_name).where(QuarantineRow.released_at.is_(None))
    claimed: list[str] = []
    async with sessions() as session, session.begin():
        returning = session.get_bind().dialect.update_returning
        for address, ids in groups.items():
            values = {
                "state": RS.RUN_STATE_PENDING,
                "updated_at": now,
                "next_dispatch_at": until,
                "executor_address": address,
                "dispatch_attempted_at": now,
            }
            for i in range(0, len(ids), PROMOTE_CHUNK):
                where = (
                    _due(now)
                    & RUNS.c.id.in_(list(ids[i : i + PROMOTE_CHUNK]))
                    & RUNS.c.script_name.not_in(quarantined)
                )
                if returning:  # SQLite, PostgreSQL: the rows the UPDATE matched
                    statement = update(RUNS).where(where).values(**values).returning(RUNS.c.id)
                    claimed.extend((await session.scalars(statement)).all())
                    continue
                # MariaDB: no UPDATE ... RETURNING; the rows are locked, then updated.
                taken = list(
                    (
                        await session.scalars(
                            select(RUNS.c.id).where(where).with_for_update(skip_locked=True)
                        )
                    ).all()
                )
                if taken:
                    await session.execute(update(RUNS).where(RUNS.c.id.in_(taken)).values(**values))
                    claimed.extend(taken)
        promoted = await promote(session, others_by, now)
    return claimed, promoted
