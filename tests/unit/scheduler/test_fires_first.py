"""FiresFirst (firing/loop.py): dispatch rounds and RunEvent batches wait for a burst of fires
being recorded, for at most `max_wait_s` from the start of the burst, not per wait. A clock
of the test's: nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio

from services.scheduler.firing import FiresFirst


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_wait_ends_when_the_burst_ends() -> None:
    first = FiresFirst(2.0, clock=Clock())
    first.busy()
    waiter = asyncio.create_task(first.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    first.idle()
    await waiter


async def test_a_burst_holds_waiters_only_its_first_max_wait_s() -> None:
    """Past `max_wait_s` since the burst started, a wait returns at once although the burst
    goes on (before, each wait could take `max_wait_s`: a burst of late fires held every
    batch of RunEvents that long, one after the other)."""
    clock = Clock()
    first = FiresFirst(2.0, clock=clock)
    first.busy()
    clock.now += 1.0
    first.busy()  # the same burst, another round: its start is kept
    waiter = asyncio.create_task(first.wait())
    await asyncio.sleep(0)
    assert not waiter.done(), "within the head start, waiters wait"
    waiter.cancel()
    clock.now += 1.5
    await first.wait()  # past the head start: returns at once (it waited max_wait_s again)
    assert not first.is_idle()
    first.idle()
    first.busy()  # a new burst has a head start of its own
    waiter = asyncio.create_task(first.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    first.idle()
    await waiter
