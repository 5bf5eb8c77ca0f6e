"""Group commit: writes that arrive together share one transaction.

A caller hands its item and waits; the first item starts a commit task, which runs on the
next turn of the event loop, so every write made ready in the same turn (several SubmitRuns
whose requests arrived together, several executors' answers) joins it, and so does every one
that arrives while a commit is in flight (the thread's or a server's). One BEGIN and one
COMMIT for the lot, the items' statements in arrival order, as if each had been its own
transaction committed in that order.

Each caller is answered only once its own item is committed. When the shared transaction
fails (a unique key, a lock, anything), nothing of it was written: each of its items is then
written again in a transaction of its own, so the error reaches only the caller whose item
causes it (a duplicate idempotency key fails only the submit that repeats it, which then
answers the existing run) and the others are answered as if they had never been grouped.

A caller cancelled while it waits does not take its item back: it is committed with the
others (a cancelled RPC whose commit had begun was committed before too)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy.engine import Connection

from shared.db_transactions import Transactions

log = logging.getLogger(__name__)
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")
# Items per shared transaction at most (a burst is committed in several).
MAX_GROUP = 256


class GroupCommit(Generic[I, R]):
    """Writes items with `write_many(conn, items) -> results` (one result per item, in
    order), sharing a transaction between the items that arrive together. `write_many`
    must leave the items as it got them (it may run twice for one item: in a group that
    failed, then alone); what it made of an item belongs in the item's result."""

    def __init__(
        self,
        tx: Transactions,
        write_many: Callable[[Connection, Sequence[I]], list[R]],
        *,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._tx = tx
        self._write_many = write_many
        self._max = max_group
        self._waiting: list[tuple[I, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed (or tried) for groups: for tests and metrics
        self.regrouped = 0  # groups that failed and were written again one by one

    async def write(self, item: I) -> R:
        """Write `item` (with whatever arrives with it); its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if self._task is None:
            self._task = loop.create_task(self._commit_waiting(), name="group-commit")
        return await future

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                await self._commit(group)
        finally:
            self._task = None
            if self._waiting:  # the loop ended by an error above: never strand a caller
                self._task = asyncio.get_running_loop().create_task(
                    self._commit_waiting(), name="group-commit"
                )

    async def _commit(self, group: list[tuple[I, asyncio.Future[R]]]) -> None:
        self.groups += 1
        items = [item for item, _ in group]
        try:
            results = await self._tx.write(self._write_many, items)
        except Exception as exc:
            if len(group) == 1:
                _answer(group[0][1], error=exc)
                return
            self.regrouped += 1
            log.debug("group commit of %d failed (%s): written one by one", len(group), exc)
            for item, future in group:
                try:
                    (result,) = await self._tx.write(self._write_many, [item])
                except Exception as one:
                    _answer(future, error=one)
                else:
                    _answer(future, result=result)
            return
        except BaseException as exc:  # cancelled (stopping): the callers learn it too
            for _, future in group:
                _answer(future, error=exc)
            raise
        for (_, future), result in zip(group, results, strict=True):
            _answer(future, result=result)


def _answer(
    future: asyncio.Future[R], *, result: R | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
