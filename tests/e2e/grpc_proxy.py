"""A small generic gRPC proxy for fault tests: a grpc.aio server that forwards every
unary-unary call, as raw bytes, to one target, and can hold calls of a method so a test
decides when (and whether) they reach the target."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from shared.status import DETAILS_KEY

# Metadata a proxy must not copy onto its own call: transport headers gRPC sets itself.
_TRANSPORT = ("user-agent", "content-type", "te")
FORWARD_TIMEOUT_S = 10.0


@dataclass
class HeldCall:
    """A call the proxy keeps: its request, and whether the test released it."""

    method: str
    request: bytes
    metadata: tuple[tuple[str, str | bytes], ...]
    released: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the caller went away (cancelled, deadline, its process killed) while held.
    abandoned: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Exchange:
    """One call forwarded to the target, and its answer (a reply or a status code)."""

    method: str
    request: bytes
    reply: bytes | None
    code: grpc.StatusCode
    details: str = ""
    trailers: tuple[tuple[str, str | bytes], ...] = ()


class UnaryProxy(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Forwards unary-unary calls to `target`; `hold(method)` parks the next calls of a
    method until `release` (answered to the caller) or `forward` (sent by the test, for a
    caller that is gone). Streaming methods are not proxied."""

    def __init__(self, target: str) -> None:
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((self,))
        self._channel = grpc.aio.insecure_channel(target)
        self._to_hold: dict[str, int] = {}
        self._held_changed = asyncio.Condition()
        self.held: list[HeldCall] = []
        self.exchanges: list[Exchange] = []
        self.address = ""

    async def start(self) -> str:
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        await self._server.stop(None)
        await self._channel.close(None)

    async def retarget(self, target: str) -> None:
        """Forward to `target` from now on (the service moved, e.g. restarted elsewhere)."""
        old, self._channel = self._channel, grpc.aio.insecure_channel(target)
        await old.close(None)

    def hold(self, method: str, count: int = 1) -> None:
        """Hold the next `count` calls of `method` (its full name, /package.Service/Method)."""
        self._to_hold[method] = self._to_hold.get(method, 0) + count

    async def wait_held(self, count: int, timeout_s: float = 30.0) -> list[HeldCall]:
        """The held calls, once there are at least `count`."""
        async with asyncio.timeout(timeout_s), self._held_changed:
            await self._held_changed.wait_for(lambda: len(self.held) >= count)
            return list(self.held)

    def release(self, call: HeldCall) -> None:
        """Let a held call go on to the target; its caller gets the answer."""
        call.released.set()

    async def forward(self, call: HeldCall) -> Exchange:
        """Send a held call's request to the target on the test's behalf (its caller is gone)."""
        return await self._send(call.method, call.request, call.metadata, FORWARD_TIMEOUT_S)

    def answered(self, method: str) -> list[Exchange]:
        """Calls of `method` the target answered, in order."""
        return [e for e in self.exchanges if e.method == method]

    def service(
        self, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = details.method  # type: ignore[attr-defined]

        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            metadata = _forwardable(context.invocation_metadata() or ())
            if self._to_hold.get(method, 0) > 0:
                self._to_hold[method] -= 1
                call = HeldCall(method, request, metadata)
                async with self._held_changed:
                    self.held.append(call)
                    self._held_changed.notify_all()
                try:
                    await call.released.wait()
                except asyncio.CancelledError:
                    call.abandoned.set()
                    raise
            remaining = context.time_remaining()
            timeout = FORWARD_TIMEOUT_S if remaining is None else max(remaining, 0.1)
            exchange = await self._send(method, request, metadata, timeout)
            if exchange.reply is None:
                await context.abort(exchange.code, exchange.details, exchange.trailers)
            return exchange.reply

        return grpc.unary_unary_rpc_method_handler(handle)

    async def _send(
        self,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
        deadline_s: float,
    ) -> Exchange:
        # No (de)serializers: raw bytes both ways.
        call = self._channel.unary_unary(
            method, request_serializer=None, response_deserializer=None
        )
        try:
            reply: bytes = await call(request, metadata=tuple(metadata), timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            trailers = _forwardable(exc.trailing_metadata() or ())
            exchange = Exchange(method, request, None, exc.code(), exc.details() or "", trailers)
        else:
            exchange = Exchange(method, request, reply, grpc.StatusCode.OK)
        self.exchanges.append(exchange)
        return exchange


def _forwardable(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    """Application metadata (and rich error details), without transport headers."""
    return tuple(
        (key, value)
        for key, value in metadata
        if not key.startswith(":")
        and key not in _TRANSPORT
        and (not key.startswith("grpc-") or key == DETAILS_KEY)
    )
