"""The local execution type's fork server: a small single-threaded Python process the
executor starts once, which forks each command and execs it, so a run costs one fork of a
small process and the command's own exec (no setpriv/prlimit exec chain, no interpreter
start-up on the run's path).

Per run the executor sends one request over a unix socket: the command's stdout and stderr
pipes (SCM_RIGHTS) and a JSON body (argv, cwd, environment, rlimits). The server forks; the
child starts its own session, sets PR_SET_PDEATHSIG (SIGKILL when the server dies; the
server itself dies with the executor the same way), sets the rlimits (soft and hard, as
prlimit does), takes the pipes as fds 1 and 2 and /dev/null as fd 0, closes every other fd,
changes to the work dir and execs the command: nothing of it runs before those are set. The
server answers with the pid (or the errno the child could not get past), and when the command
exits, with its wait4 status and rusage: the pid, signals, status and rusage are the
command's own, as under the exec chain. The executor signals the command's group itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from services.executor.runners.children import ExitStatus

SERVER_SOURCE = r"""
import ctypes, gc, json, os, resource, select, signal, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the executor
if os.getppid() != int(sys.argv[2]):  # the executor died before the line above
    os._exit(1)
for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # a command gets them at their defaults
    signal.signal(sig, signal.SIG_DFL)
sock = socket.socket(fileno=int(sys.argv[1]))
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
me = os.getpid()
gc.freeze()
gc.disable()

def send(message):
    sock.sendall(json.dumps(message).encode() + b"\n")

def exactly(size, data=b""):
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data

def child(job, out, err, ready):
    try:
        os.setsid()
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != me:  # the server died before the line above
            os._exit(127)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, ready)
        os.closerange(ready + 1, 1 << 20)
        for name, value in job["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        os.chdir(job["cwd"])
        os.execve(job["argv"][0], job["argv"], job["env"])
    except BaseException as exc:
        os.write(ready, str(getattr(exc, "errno", None) or 22).encode())
    os._exit(127)

def launch():
    header, fds, _, _ = sock.recvmsg(4, socket.CMSG_SPACE(8), socket.MSG_CMSG_CLOEXEC)
    if not header:
        sys.exit(0)
    (size,) = struct.unpack("!I", exactly(4, header))
    pipes = [fd for level, kind, data in fds for fd in struct.unpack(f"{len(data) // 4}i", data)]
    job = json.loads(exactly(size))
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        child(job, pipes[0], pipes[1], ready_w)
    for fd in (*pipes, ready_w):
        os.close(fd)
    error = os.read(ready_r, 16)  # EOF: the exec went through
    os.close(ready_r)
    if error:
        os.waitpid(pid, 0)
        send({"id": job["id"], "errno": int(error)})
    else:
        send({"id": job["id"], "pid": pid})

def reap():
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        send({"pid": pid, "status": status, "rusage": list(usage)})

poller = select.poll()
poller.register(sock, select.POLLIN)
poller.register(wake_r, select.POLLIN)
while True:
    for fd, _ in poller.poll():
        if fd == wake_r:
            os.read(wake_r, 512)
            reap()
        else:
            launch()
"""
# How long the executor may block handing a request to the server (it reads at once).
SEND_TIMEOUT_S = 10.0


@dataclass
class Child:
    """A command the fork server started: its pid (the leader of its own session), the read
    ends of its output pipes, and a future done with its wait4 status and rusage."""

    pid: int
    stdout: IO[bytes]
    stderr: IO[bytes]
    exited: asyncio.Future[ExitStatus]
    returncode: int | None = field(default=None)


class ForkServer:
    """The executor's end of one fork server, started ahead of the first run (or by it) and
    again if it died, always from the executor's main or event loop thread: the server's
    PR_SET_PDEATHSIG follows the thread that started it."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reading = False  # its answers are read on the loop (from the first run on)
        self._buffer = b""
        self._ids = 0
        # Per request id: the pid and its exit's future (made when the pid arrives, which may
        # be in the same read as the exit itself).
        self._starts: dict[int, asyncio.Future[tuple[int, asyncio.Future[ExitStatus]]]] = {}
        self._exits: dict[int, asyncio.Future[ExitStatus]] = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the server if it is not running (no event loop needed)."""
        if self._sock is not None:
            return
        self._base.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = str(os.getpid())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", SERVER_SOURCE, str(theirs.fileno()), parent],
                cwd=self._base,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(SEND_TIMEOUT_S)
        self._sock = ours

    async def spawn(
        self, argv: list[str], cwd: Path, env: dict[str, str], limits: dict[str, int]
    ) -> Child:
        """Start the command; OSError (with the child's errno) if it could not be started."""
        self.start()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        if not self._reading:
            loop.add_reader(self._sock.fileno(), self._readable)
            self._reading = True
        self._ids += 1
        request = self._ids
        started: asyncio.Future[tuple[int, asyncio.Future[ExitStatus]]] = loop.create_future()
        self._starts[request] = started
        body = json.dumps(
            {"id": request, "argv": argv, "cwd": str(cwd), "env": env, "rlimits": limits}
        ).encode()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            try:
                fds = struct.pack("2i", out_w, err_w)
                header = struct.pack("!I", len(body))
                # One sendmsg carries the fds and, most often, the whole request.
                sent = self._sock.sendmsg(
                    [header, body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
                )
                if sent < len(header) + len(body):
                    self._sock.sendall((header + body)[sent:])
            except OSError:
                del self._starts[request]
                self.close()  # gone or stuck: the next run starts a fresh one
                raise
            finally:
                os.close(out_w)
                os.close(err_w)
            pid, exited = await started
        except BaseException:
            self._starts.pop(request, None)
            os.close(out_r)
            os.close(err_r)
            if started.done() and not started.cancelled() and started.exception() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(started.result()[0], signal.SIGKILL)  # started, then cancelled
            raise
        return Child(pid, _reader(out_r), _reader(err_r), exited)

    def _readable(self) -> None:
        assert self._sock is not None
        try:  # os.read: the socket's timeout (for sends) would make recv wait
            data = os.read(self._sock.fileno(), 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self._dispatch(json.loads(line))

    def _dispatch(self, message: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        if "id" in message:
            started = self._starts.pop(message["id"], None)
            if "pid" in message:
                exited: asyncio.Future[ExitStatus] = loop.create_future()
                self._exits[message["pid"]] = exited
                if started is not None and not started.done():
                    started.set_result((message["pid"], exited))
            elif started is not None and not started.done():
                code = message["errno"]
                started.set_exception(OSError(code, os.strerror(code)))
            return
        ended = self._exits.pop(message["pid"], None)
        if ended is not None and not ended.done():
            ended.set_result((message["status"], resource.struct_rusage(message["rusage"])))

    def close(self) -> None:
        """End the server (its commands die with it); every run waiting on it learns so."""
        self._stop()
        gone = OSError("the local fork server ended")
        waiters: list[asyncio.Future[Any]] = [*self._starts.values(), *self._exits.values()]
        for future in waiters:
            if not future.done():
                future.set_exception(gone)
        self._starts.clear()
        self._exits.clear()

    def _stop(self) -> None:
        """Stop reading, end the server and reap it."""
        if self._sock is not None:
            if self._reading:
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().remove_reader(self._sock.fileno())
                self._reading = False
            self._sock.close()
            self._sock = None
            self._buffer = b""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None


def _reader(fd: int) -> IO[bytes]:
    """An unbuffered file object of a pipe's read end (no I/O here: the loop reads it)."""
    return os.fdopen(fd, "rb", 0)
