"""The direct hand-off of a submitted run: SubmitRun's run goes to an executor right after
its commit, without waiting for a dispatch round (docs/scheduler.md, "Dispatch").

SubmitRun submits inside `Dispatcher.direct()`, which picks the executor first. The
transaction that inserts the run (`RunEvents.stage`) then claims it as a round would
(`claim_in`): it goes in already claimed for `claim_s` and recorded as sent to that
executor, so no round of any replica takes it, unless a run that should go first is
waiting (higher priority, or as high and older) or its script is quarantined. After the
commit the dispatcher sends Execute at once, with no other statement before it. Anything
not taken so (limits, fires going first, no executor ready, a run ahead) is left to the
dispatch loop, which stays the sweep for what memory lost: a replica that dies between
the commit and Execute leaves a claim that expires, and any replica's round sends the run
(to the recorded executor first, which runs a run id once)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, exists, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from runbox.common.v1.common_pb2 import RunState as RS
from services.scheduler.executors import Executor
from services.scheduler.models import QuarantineRow, RunRow
from shared.sqlite_rows import SqliteStatement, driver_of


@dataclass
class Handoff:
    """One SubmitRun's hand-off: where its run goes (no candidates: the loop takes it), and
    what the submit did (`claimed`: the run id it inserted claimed; `submitted`: how many
    new runs it committed, 0 for an idempotent repeat)."""

    candidates: list[Executor] = field(default_factory=list)
    claim_s: float = 30.0
    claimed: str | None = None
    submitted: int = 0


_DIRECT: contextvars.ContextVar[Handoff | None] = contextvars.ContextVar(
    "runbox_direct_handoff", default=None
)


@contextlib.contextmanager
def direct(handoff: Handoff) -> Iterator[Handoff]:
    """Submit inside this block to have its run claimed for `handoff`."""
    token = _DIRECT.set(handoff)
    try:
        yield handoff
    finally:
        _DIRECT.reset(token)


def current() -> Handoff | None:
    """The hand-off of the submit in progress in this task, if it asked for one."""
    return _DIRECT.get()


async def claim_in(session: AsyncSession, row: RunRow) -> None:
    """In the transaction inserting `row` (before it is added): claim it for the current
    hand-off, unless there is none, or a dispatchable run should go first, or its script is
    quarantined (one SELECT; the row goes in claimed, nothing more is written)."""
    handoff = _DIRECT.get()
    if handoff is None or not handoff.candidates:
        return
    now = datetime.now(UTC)
    if await session.scalar(_blocked(row.script_name, row.id, row.priority, row.created_at, now)):
        return
    row.next_dispatch_at = now + timedelta(seconds=handoff.claim_s)
    row.executor_address = handoff.candidates[0].address
    row.dispatch_attempted_at = now
    handoff.claimed = row.id


def claim_values(conn: Connection, handoff: Handoff | None, values: dict[str, Any]) -> bool:
    """`claim_in` for a run inserted from its column `values` on a Core connection (the
    hand-off is passed in: this may run in another thread, where context variables are not
    the submitting task's); True if `values` were claimed."""
    if handoff is None or not handoff.candidates:
        return False
    now = datetime.now(UTC)
    params = {
        "script": values["script_name"],
        "run_id": values["id"],
        "priority": values["priority"],
        "created_at": values["created_at"],
        "now": now,
    }
    driver = driver_of(conn)
    blocked = _SQLITE_BLOCKED.scalar(driver, params) if driver else conn.scalar(_BLOCKED, params)
    if blocked:
        return False
    values["next_dispatch_at"] = now + timedelta(seconds=handoff.claim_s)
    values["executor_address"] = handoff.candidates[0].address
    values["dispatch_attempted_at"] = now
    return True


def _blocked(script: Any, run_id: Any, priority: Any, created_at: Any, now: Any) -> Any:
    """One SELECT: is the script quarantined, or a dispatchable run ahead of this one?"""
    quarantined = exists().where(
        QuarantineRow.script_name == script, QuarantineRow.released_at.is_(None)
    )
    ahead = exists().where(
        RunRow.state == RS.RUN_STATE_PENDING,
        or_(RunRow.next_dispatch_at.is_(None), RunRow.next_dispatch_at <= now),
        RunRow.id != run_id,
        RunRow.script_name.not_in(
            select(QuarantineRow.script_name).where(QuarantineRow.released_at.is_(None))
        ),
        or_(
            RunRow.priority > priority,
            (RunRow.priority == priority) & (RunRow.created_at <= created_at),
        ),
    )
    return select(or_(quarantined, ahead))


# Built once, for the hot path (its cache key is computed once).
_BLOCKED = _blocked(
    bindparam("script"),
    bindparam("run_id"),
    bindparam("priority"),
    bindparam("created_at"),
    bindparam("now"),
)
_SQLITE_BLOCKED = SqliteStatement(_BLOCKED)
