"""Docker's multiplexed attach stream, read on the event loop.

Each frame is an 8-byte header (stream: 1 stdout, 2 stderr; three zero bytes; big-endian
payload length) and the payload. The socket must be non-blocking.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

STREAMS = {1: "stdout", 2: "stderr"}


async def frames(
    loop: asyncio.AbstractEventLoop, raw: socket.socket, read_size: int = 256 * 1024
) -> AsyncIterator[tuple[str, bytes]]:
    """(stream name, payload) for every frame until the container closes the stream."""
    buffer = bytearray()
    while True:
        chunk = await loop.sock_recv(raw, read_size)
        if not chunk:
            return
        # sock_recv returns without yielding while data is waiting: let the loop breathe,
        # so a flood of output never starves the executor's other work.
        await asyncio.sleep(0)
        buffer += chunk
        while len(buffer) >= 8:
            size = int.from_bytes(buffer[4:8], "big")
            if len(buffer) < 8 + size:
                break
            name = STREAMS.get(buffer[0])
            data = bytes(buffer[8 : 8 + size])
            del buffer[: 8 + size]
            if name and data:
                yield name, data
