"""The catalogue's question to the scheduler: which schedules still use a script?

Asked over gRPC (the scheduler owns its tables) before a script is soft-deleted.
"""

from __future__ import annotations

import grpc

from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from shared.errors import Unavailable

# Every state from which a schedule can fire again (only COMPLETED cannot).
_LIVE = [
    scheduler_pb2.SCHEDULE_STATE_ACTIVE,
    scheduler_pb2.SCHEDULE_STATE_PAUSED,
    scheduler_pb2.SCHEDULE_STATE_DISABLED,
]


class ScheduleLookup:
    """Lists the live schedules referencing a script, with this service's token."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)

    async def __call__(self, script_name: str) -> list[str]:
        found: list[str] = []
        token = ""
        while True:
            try:
                page = await self._stub.ListSchedules(
                    scheduler_pb2.ListSchedulesRequest(
                        script_name=script_name, states=_LIVE, page_size=200, page_token=token
                    )
                )
            except grpc.aio.AioRpcError as exc:
                raise Unavailable(
                    f"cannot ask the scheduler which schedules use {script_name!r} "
                    f"({exc.code().name}: {exc.details()}); retry, or delete with force"
                ) from None
            found += [f"{s.name or s.id} ({s.id})" for s in page.schedules]
            token = page.next_page_token
            if not token:
                return found
