"""The run link's acks (services/scheduler/link.py): they ride with the next Execute's
message, or go in a message of their own once `ack_linger_s` has passed, and never wait for
an Execute that does not come."""

from __future__ import annotations

import asyncio
from typing import Any

from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from services.scheduler.link import Applier, ExecutorLink


class _Call:
    """A Link call that records what the scheduler writes on it."""

    def __init__(self) -> None:
        self.written: list[executor_pb2.LinkRequest] = []
        self.wrote = asyncio.Event()

    async def write(self, request: executor_pb2.LinkRequest) -> None:
        self.written.append(request)
        self.wrote.set()


async def _nothing(events: list[events_pb2.RunEvent]) -> None:
    return None


def _writing(linger_s: float) -> tuple[ExecutorLink, _Call, asyncio.Task[None]]:
    link = ExecutorLink(None, "test", Applier(_nothing), ack_linger_s=linger_s)  # type: ignore[arg-type]
    call = _Call()
    return link, call, asyncio.create_task(link._write(call))  # type: ignore[arg-type]


def _sent(call: _Call) -> list[tuple[list[str], list[str]]]:
    return [([e.request.run_id for e in r.executes], list(r.acks)) for r in call.written]


async def test_acks_ride_with_the_next_execute() -> None:
    """Acks queued before an Execute go in the Execute's message: one message, not two."""
    link, call, writer = _writing(3600)
    execute: asyncio.Task[Any] | None = None
    try:
        link.ack(["e1", "e2"])
        execute = asyncio.create_task(
            link.execute(executor_pb2.ExecuteRequest(run_id="r2"), timeout_s=30)
        )
        await asyncio.wait_for(call.wrote.wait(), 10)
        assert _sent(call) == [(["r2"], ["e1", "e2"])]
    finally:
        for task in (writer, execute):
            if task is not None:
                task.cancel()
        await asyncio.gather(writer, *(t for t in [execute] if t), return_exceptions=True)


async def test_acks_go_alone_after_the_linger_when_no_execute_comes() -> None:
    """With no Execute to carry them, acks queued together go in one message of their own."""
    link, call, writer = _writing(0.01)
    try:
        link.ack(["e1"])
        link.ack(["e2"])
        await asyncio.wait_for(call.wrote.wait(), 10)
        assert _sent(call) == [([], ["e1", "e2"])]
        call.wrote.clear()
        link.ack(["e3"])  # a new linger for acks queued after that message
        await asyncio.wait_for(call.wrote.wait(), 10)
        assert _sent(call)[1:] == [([], ["e3"])]
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
