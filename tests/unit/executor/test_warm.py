"""WarmProcesses: idle processes handed out once, topped up in the background, never a
dead one, all ended on close (with fake processes: the real ones are in
tests/integration/executor/test_local_launch.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from services.executor.runners.warm import WarmProcesses


@dataclass
class Fake:
    pid: int
    alive: bool = True
    discarded: bool = False


class Maker:
    """Starts fakes with increasing pids and records what was discarded."""

    def __init__(self, fail: bool = False) -> None:
        self._pids = itertools.count(1)
        self.fail = fail
        self.started: list[Fake] = []

    async def start(self) -> Fake:
        if self.fail:
            raise OSError("no more processes")
        proc = Fake(next(self._pids))
        self.started.append(proc)
        return proc

    async def discard(self, proc: Fake) -> None:
        proc.discarded = True


def pool(maker: Maker, size: int) -> WarmProcesses[Fake]:
    return WarmProcesses(size, start=maker.start, alive=lambda p: p.alive, discard=maker.discard)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_take_starts_one_then_hands_out_warm_ones_and_refills() -> None:
    """The first take starts a process; the pool fills to its size and later takes get
    those idle ones, each exactly once."""
    maker = Maker()
    warm = pool(maker, 2)
    first = await warm.take()
    assert first.pid == 1
    await until(lambda: warm.idle == 2)
    second, third = await warm.take(), await warm.take()
    assert {second.pid, third.pid} == {2, 3}
    await until(lambda: warm.idle == 2)
    assert len(maker.started) == 5
    await warm.close()


async def test_take_skips_and_discards_a_process_that_died_idle() -> None:
    """An idle process found dead is discarded, never handed out."""
    maker = Maker()
    warm = pool(maker, 1)
    await warm.take()
    await until(lambda: warm.idle == 1)
    maker.started[-1].alive = False
    taken = await warm.take()
    assert taken.alive
    assert maker.started[1].discarded
    await warm.close()


async def test_close_discards_idle_processes_and_stops_refilling() -> None:
    """Closing ends every idle process; takes after it start fresh ones, never refill."""
    maker = Maker()
    warm = pool(maker, 2)
    await warm.take()
    await until(lambda: warm.idle == 2)
    await warm.close()
    assert warm.idle == 0
    assert all(p.discarded for p in maker.started[1:])
    await warm.take()
    for _ in range(10):
        await asyncio.sleep(0)
    assert warm.idle == 0


async def test_size_zero_starts_every_process_on_demand() -> None:
    """With size 0 nothing is started ahead of demand."""
    maker = Maker()
    warm = pool(maker, 0)
    await warm.take()
    for _ in range(10):
        await asyncio.sleep(0)
    assert warm.idle == 0
    assert len(maker.started) == 1


async def test_start_failure_reaches_the_taker_and_stops_the_refill() -> None:
    """A start that fails raises OSError to take; a failing refill just stops."""
    maker = Maker()
    warm = pool(maker, 2)
    await warm.take()  # its refill has not run yet
    maker.fail = True
    for _ in range(10):
        await asyncio.sleep(0)
    assert warm.idle == 0
    with pytest.raises(OSError):
        await warm.take()
    await warm.close()
