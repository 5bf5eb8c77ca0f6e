"""A benchmark killed with SIGKILL (a test's timeout) leaves no child behind: its nats-server
and service processes are started with `benchmarks.children.preexec()` and die with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PARENT = """
import subprocess, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from benchmarks.children import preexec
from cli import natsd
server = natsd.start(Path(sys.argv[2]), preexec_fn=preexec())
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], preexec_fn=preexec())
print(server.process.pid, child.pid, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_children_die_when_the_benchmark_is_killed(tmp_path: Path) -> None:
    pids: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", PARENT, str(ROOT), str(tmp_path / "nats")],
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        try:
            assert parent.stdout is not None
            pids = [int(pid) for pid in parent.stdout.readline().split()]
            assert len(pids) == 2 and all(alive(pid) for pid in pids)
            parent.send_signal(signal.SIGKILL)
            parent.wait()
            deadline = time.monotonic() + 30
            while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(alive(pid) for pid in pids), "a child outlived its killed parent"
        finally:
            parent.kill()
            for pid in filter(alive, pids):
                os.kill(pid, signal.SIGKILL)
