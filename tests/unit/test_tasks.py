"""WakeableLoop: what keeps a background loop going, and what stops it."""

from __future__ import annotations

import asyncio

from shared.tasks import WakeableLoop, being_cancelled


class Flaky(WakeableLoop):
    """Steps that fail the ways awaited calls fail, then work."""

    name = "flaky"

    def __init__(self, failures: list[BaseException]) -> None:
        super().__init__(interval_s=60.0)  # only notify() and worked steps move it on
        self.failures = failures
        self.steps = 0
        self.done = asyncio.Event()

    async def step(self) -> int:
        self.steps += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.steps >= 5:
            self.done.set()
            return 0
        return 1  # did work: the next step comes at once


async def test_a_loop_survives_a_cancelled_call_and_errors_and_steps_again_after_work() -> None:
    """A CancelledError the task did not ask for (grpc.aio raises one for an RPC its peer
    cancelled) is a failed step, like any error: the loop goes on. A step that did work is
    followed at once by the next, with no notify and no interval."""
    loop = Flaky([asyncio.CancelledError(), RuntimeError("boom")])
    loop.start()
    while loop.steps < 3:  # past the two failures: each waits for a wake-up (or 60 s)
        loop.notify()
        await asyncio.sleep(0.01)
    # No more wake-ups: steps 3 and 4 did work, so 4 and 5 follow at once (a wake-up
    # left over from above covers one of them at most).
    await asyncio.wait_for(loop.done.wait(), 5)
    assert loop.steps == 5
    await loop.stop(timeout_s=1)
    assert loop._task is not None and loop._task.done()


async def test_stopping_a_loop_stuck_in_a_step_cancels_it() -> None:
    """A step that never returns is cancelled by stop() after its timeout: that
    cancellation is the task's own, and ends the loop."""

    class Stuck(WakeableLoop):
        async def step(self) -> None:
            await asyncio.Event().wait()

    loop = Stuck(interval_s=1.0)
    loop.start()
    await asyncio.sleep(0.05)
    await loop.stop(timeout_s=0.2)
    assert loop._task is not None and loop._task.cancelled()


async def test_being_cancelled_tells_own_cancellation_from_a_cancelled_call() -> None:
    seen: list[bool] = []

    async def call_cancelled_by_peer() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        try:
            await future
        except asyncio.CancelledError:
            seen.append(being_cancelled())

    async def cancelled_itself() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append(being_cancelled())
            raise

    await call_cancelled_by_peer()
    task = asyncio.create_task(cancelled_itself())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen == [False, True]
