"""Child processes of a benchmark die with it.

A benchmark starts nats-server, the services and a Celery worker as children and stops them
at the end. If the benchmark itself is killed (a test's timeout, Ctrl-\\, `kill -9`), nothing
runs its `finally`, and the children would go on using the machine's two cores under every
later test. `die_with_parent` is a `preexec_fn` that asks the kernel for SIGKILL when the
parent goes (PR_SET_PDEATHSIG, kept across exec). The kernel sends it when the *thread* that
forked exits, so spawn from the main thread or from a pool thread that outlives the child
(asyncio.to_thread's threads live until the loop shuts down, after the benchmark's stops).

A `preexec_fn` makes Popen fork (not vfork) while gRPC's threads run, so gRPC's own fork
handlers run too, and since grpcio 1.81 the poller they restart in the child can die on
EBADF before the exec (grpc/grpc#43055: a service that "failed to start" about once in 40).
Nothing in a benchmark uses gRPC in a forked child (every child execs at once), so each
benchmark sets GRPC_ENABLE_FORK_SUPPORT=false before it imports grpc: no handlers at all."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """In the child, between fork and exec: SIGKILL when the parent dies; if the parent is
    already gone (it died before this ran), exit at once."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def preexec() -> Callable[[], None]:
    """The `preexec_fn` for a child of this process."""
    parent = os.getpid()
    return lambda: die_with_parent(parent)
