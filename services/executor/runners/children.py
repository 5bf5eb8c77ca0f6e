"""A command's child process watched from the event loop, with no thread per run.

Its exit is a readable pidfd (Linux 5.3+) and its output pipes are read by protocols that
hand each chunk on as it arrives: no thread blocked in wait4, no wake-up through the loop's
self-pipe, no reader task per pipe. Where pidfd_open is missing, a thread waits instead."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
from collections.abc import Callable
from typing import IO, Any

ExitStatus = tuple[int, Any]  # wait4's status and rusage


def watch_exit(proc: subprocess.Popen[bytes]) -> asyncio.Future[ExitStatus]:
    """Done with the child's wait4 status and rusage once it exits (it is reaped then)."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd on this kernel
        return asyncio.ensure_future(asyncio.to_thread(wait, proc))
    exited: asyncio.Future[ExitStatus] = loop.create_future()

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        status = wait(proc)  # readable: it has exited, so this does not block
        if not exited.done():
            exited.set_result(status)

    loop.add_reader(pidfd, reap)
    return exited


def wait(proc: subprocess.Popen[bytes]) -> ExitStatus:
    """os.wait4, not Popen.wait, for this child's own rusage (blocks until it exits)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits again
    return status, usage


class _Pipe(asyncio.Protocol):
    """Hands every chunk of one pipe to a sink; `closed` is done at EOF (or a read error)."""

    def __init__(self, sink: Callable[[bytes], object], closed: asyncio.Future[None]) -> None:
        self._sink = sink
        self._closed = closed

    def data_received(self, data: bytes) -> None:
        self._sink(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


async def read_pipes(
    pipes: dict[str, IO[bytes]],
    on_output: Callable[[str, bytes], object],
    transports: list[asyncio.BaseTransport],
) -> asyncio.Future[list[None]]:
    """Read each named pipe on the loop until EOF, chunks to on_output(name, chunk): a future
    done when every pipe reached EOF. Each pipe's transport is added to `transports` as soon
    as it exists, so the caller closes every one even if this is interrupted."""
    loop = asyncio.get_running_loop()
    ends: list[asyncio.Future[None]] = []
    for name, pipe in pipes.items():
        closed: asyncio.Future[None] = loop.create_future()
        ends.append(closed)
        protocol = functools.partial(_Pipe, functools.partial(on_output, name), closed)
        transport, _ = await loop.connect_read_pipe(protocol, pipe)
        transports.append(transport)
    return asyncio.gather(*ends)
