"""What the lifecycle (runs.py) tells others, passed to it at construction.

Run-end hooks are called inside the transaction that ends a run, whichever way it ends (an
executor's event, a cancel while pending, a dispatch failure, a lost lease): what follows
from it (a retry, a dead letter, a schedule's failure count) commits with it or not at all.
Each says which ends it acts on (`concerns`): when none does, a batch of events takes the
Core path without them (runs.py apply_many); a hook that can do its work on that path too
(`RunsEndHook.plan`) keeps the batch there in the cases it handles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.models import RunRow


class RunEndHook(Protocol):
    """Acts on one run's end (retries.py: RetryOrDeadLetter, Quarantines)."""

    def concerns(self, row: RunRow) -> bool: ...

    async def __call__(self, session: AsyncSession, row: RunRow) -> None: ...


# The writes a hook planned on a Core transaction's connection (RunsEndHook.plan).
EndWrites = Callable[[Connection], None]


@dataclass(frozen=True)
class RunsEndHook:
    """Acts on the runs one transaction ends, at once (after every RunEndHook has seen each
    of them): a batch of events ends many.

    `plan`, when given, is the same work on the connection of a Core transaction (the apply
    of a batch of events, run_store.py) for the ends it can handle there: it reads (and
    locks) what it needs and returns the writes still to do, or None having written nothing,
    and then the batch goes through the ORM with `runs_ended`."""

    concerns: Callable[[RunRow], bool]
    runs_ended: Callable[[AsyncSession, Sequence[RunRow]], Awaitable[None]]
    plan: Callable[[Connection, Sequence[RunRow]], EndWrites | None] | None = None


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class RunListeners:
    """The lifecycle's listeners: `submitted` after each submit's commit (dispatch wakes),
    `run_ended` per ended run in order, then `runs_ended`."""

    submitted: Callable[[], None] = _nothing
    run_ended: Sequence[RunEndHook] = ()
    runs_ended: Sequence[RunsEndHook] = ()

    def plan_ends(self, conn: Connection, rows: Sequence[RunRow]) -> list[EndWrites] | None:
        """On a Core transaction's connection: the writes that handle the ends of `rows`,
        each hook concerned having planned its own; None (nothing written) when one of them
        cannot work there and the ORM path must be taken. Every hook plans before any writes,
        so a refusal by the last leaves nothing half done."""
        if any(hook.concerns(row) for row in rows for hook in self.run_ended):
            return None
        writes = []
        for many in self.runs_ended:
            mine = [row for row in rows if many.concerns(row)]
            if not mine:
                continue
            planned = many.plan(conn, mine) if many.plan is not None else None
            if planned is None:
                return None
            writes.append(planned)
        return writes
