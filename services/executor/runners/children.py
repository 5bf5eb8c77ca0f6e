"""A command's child process watched from the event loop, with no thread per run.

Its exit is a readable pidfd (Linux 5.3+) and its output pipes are read by protocols that
hand each chunk on as it arrives: no thread blocked in wait4, no wake-up through the loop's
self-pipe, no reader task per pipe. Where pidfd_open is missing, a thread waits instead.
`Pipes` reads a run's pipes with one `add_reader` callback each and nothing else (no
transport, protocol or waiter per pipe: `loop.connect_read_pipe` takes a few loop turns and
objects per pipe, on every run's path)."""

from __future__ import annotations

import asyncio
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


# As much as one read takes (asyncio's pipe transports read 256 KiB at a time too).
READ_SIZE = 256 * 1024


class Pipes:
    """Reads named pipes (their read ends) on the loop until EOF, each chunk to
    on_output(name, chunk) as it arrives; `ended` is done once every pipe reached EOF (or a
    read error). `close()` stops reading and closes the pipes still open; call it in every
    case (it is idempotent)."""

    def __init__(
        self, pipes: dict[str, IO[bytes]], on_output: Callable[[str, bytes], object]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = self._loop.create_future()
        self._sink = on_output
        self._open: dict[int, IO[bytes]] = {}
        try:
            for name, pipe in pipes.items():
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                self._loop.add_reader(fd, self._readable, name, fd)
                self._open[fd] = pipe
        except BaseException:
            self.close()
            raise
        if not self._open:
            self.ended.set_result(None)

    def _readable(self, name: str, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._sink(name, data)
            return
        self._stop(fd)
        if not self._open and not self.ended.done():
            self.ended.set_result(None)

    def _stop(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        self._open.pop(fd).close()

    def close(self) -> None:
        for fd in list(self._open):
            self._stop(fd)
