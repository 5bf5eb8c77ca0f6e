"""What the lifecycle (runs.py) tells others, passed to it at construction.

Run-end hooks are called inside the transaction that ends a run, whichever way it ends (an
executor's event, a cancel while pending, a dispatch failure, a lost lease): what follows
from it (a retry, a dead letter, a schedule's failure count) commits with it or not at all.
Each says which ends it acts on (`concerns`): when none does, a batch of events takes the
Core path without them (runs.py apply_many)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.models import RunRow


class RunEndHook(Protocol):
    """Acts on one run's end (retries.py: RetryOrDeadLetter, Quarantines)."""

    def concerns(self, row: RunRow) -> bool: ...

    async def __call__(self, session: AsyncSession, row: RunRow) -> None: ...


@dataclass(frozen=True)
class RunsEndHook:
    """Acts on the runs one transaction ends, at once (after every RunEndHook has seen each
    of them): a batch of events ends many."""

    concerns: Callable[[RunRow], bool]
    runs_ended: Callable[[AsyncSession, Sequence[RunRow]], Awaitable[None]]


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class RunListeners:
    """The lifecycle's listeners: `submitted` after each submit's commit (dispatch wakes),
    `run_ended` per ended run in order, then `runs_ended`."""

    submitted: Callable[[], None] = _nothing
    run_ended: Sequence[RunEndHook] = ()
    runs_ended: Sequence[RunsEndHook] = ()

    def concerned(self, row: RunRow) -> bool:
        """Whether a run-end hook acts on the end of `row`."""
        return any(hook.concerns(row) for hook in self.run_ended) or any(
            many.concerns(row) for many in self.runs_ended
        )
