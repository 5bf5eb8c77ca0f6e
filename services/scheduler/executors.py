"""The executors a scheduler dispatches to: a static list of addresses and/or every address a
DNS name resolves to (a Kubernetes headless service, a compose service scaled to N), resolved
again every `refresh_s` so executors that come and go are picked up without a restart.

A channel is opened for each address when it first appears. An address that vanishes from DNS
stops receiving new runs at once, but its channel stays open: runs it already holds can still be
cancelled through it (CancelRun goes to the run's recorded executor address)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.trace import TracerProvider

from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from services.scheduler.link import ExecutorLink, LinkDown
from shared.clients import bearer, open_channel, open_stream_channel

log = logging.getLogger(__name__)


@dataclass
class Executor:
    address: str
    stub: executor_pb2_grpc.ExecutorServiceAsyncStub
    # The same executor on a channel without interceptors, for the run link's stream.
    link_stub: executor_pb2_grpc.ExecutorServiceAsyncStub
    backoff_s: float = 0.0
    busy_until: float = 0.0
    # False once the executor answered ExecuteBatch UNIMPLEMENTED (older than 0.3.0).
    batches: bool = True
    # This replica's run link to it (services/scheduler/link.py), once opened.
    link: ExecutorLink | None = None

    async def execute(
        self, request: executor_pb2.ExecuteRequest, timeout_s: float
    ) -> executor_pb2.ExecuteResponse:
        """Execute over the run link when it is up, else (or when it breaks first) unary."""
        link = self.link
        if link is not None and link.up:
            try:
                return await link.execute(request, timeout_s)
            except LinkDown:
                pass
        return await self.stub.Execute(request, timeout=timeout_s)


def parse_target(target: str) -> tuple[str, int]:
    """`host:port` of a DNS target; ValueError if it has no port."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"executor DNS target {target!r} must be host:port")
    return host.strip("[]"), int(port)


class ExecutorSet(Mapping[str, Any]):
    """Address -> executor stub for every executor ever seen; `active()` lists the ones new runs
    may go to (static ones, plus what the DNS name resolves to now)."""

    def __init__(
        self,
        static: list[str],
        *,
        dns_target: str = "",
        refresh_s: float = 10.0,
        token: str = "",
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._token = token
        # What the run link's call sends in place of the channel's call defaults.
        self.link_metadata = bearer(token)
        self._tracer_provider = tracer_provider
        self._dns = parse_target(dns_target) if dns_target else None
        self._refresh_s = refresh_s
        self._channels: list[grpc.aio.Channel] = []  # every one opened, closed at close()
        self._members: dict[str, Executor] = {}
        self._static = list(dict.fromkeys(static))
        self._resolved: list[str] = []
        self._task: asyncio.Task[None] | None = None
        for address in self._static:
            self._member(address)

    # Mapping: every executor ever seen, for cancelling the runs it holds.
    def __getitem__(self, address: str) -> executor_pb2_grpc.ExecutorServiceAsyncStub:
        return self._members[address].stub

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def active(self) -> list[Executor]:
        """Executors new runs may go to, in a stable order."""
        return [self._members[a] for a in dict.fromkeys([*self._static, *self._resolved])]

    def ready(self) -> list[Executor]:
        now = time.monotonic()
        return [e for e in self.active() if e.busy_until <= now]

    def pin(self, address: str) -> Executor:
        """The executor at `address`, with a channel opened if this process has not met it
        (a run recorded as handed to it before a restart)."""
        return self._member(address)

    def _member(self, address: str) -> Executor:
        member = self._members.get(address)
        if member is None:
            channel = open_channel(
                address, token=self._token, tracer_provider=self._tracer_provider
            )
            link_channel = open_stream_channel(address)  # connects when the link opens
            self._channels += [channel, link_channel]
            member = self._members[address] = Executor(
                address,
                executor_pb2_grpc.ExecutorServiceStub(channel),
                executor_pb2_grpc.ExecutorServiceStub(link_channel),
            )
        return member

    async def refresh(self) -> None:
        """Resolve the DNS name once; a failed lookup keeps the last known addresses."""
        if self._dns is None:
            return
        host, port = self._dns
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            log.warning(
                "executor DNS name %s did not resolve (%s); keeping the last set", host, exc
            )
            return
        addresses = sorted(
            {
                f"[{info[4][0]}]:{port}" if info[0] == socket.AF_INET6 else f"{info[4][0]}:{port}"
                for info in infos
            }
        )
        if addresses != self._resolved:
            log.info("executors behind %s: %s", host, ", ".join(addresses) or "none")
        for address in addresses:
            self._member(address)
        self._resolved = addresses

    async def start(self) -> None:
        if self._dns is None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="executor-dns")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for channel in self._channels:
            await channel.close(None)
