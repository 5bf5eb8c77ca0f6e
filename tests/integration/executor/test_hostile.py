"""Hostile scripts in the Docker sandbox, on runc and on gVisor.

Each test runs one hostile script and asserts its outcome; then, in the same executor, a
canary run must find a clean sandbox (only its own files in /work, nothing in /tmp,
/artifacts or /dev/shm, no other process, uid 10001 without capabilities), the executor must
answer GetPoolStatus, and the host must be unchanged: the sentinel file the script was told
about, the executor's environment, the run's container removed with none of its processes
left, and no more sandboxes of this module's classes than the pool accounts for.

One executor serves the whole module (small limits keep it fast); its sandbox classes have
limits no other test module uses, so that counting their containers is exact. The output
floods get an executor each, watched by a memory guard that kills the sandbox and fails the
test at once when the executor's memory runs away (it must never take the machine down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import nats
import pytest
import pytest_asyncio

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from services.executor.config import ExecutorSettings
from services.executor.server import build
from shared.clients import open_channel
from shared.runtime import build_runtime, launch
from tests.conftest import docker_available, require, sandbox_image_available
from tests.integration.executor.conftest import ExecutorHarness
from tests.integration.executor.hostile import (
    WHO,
    Ended,
    HostWatch,
    MemoryGuard,
    assert_clean,
    canary,
    drive,
    host_process_count,
    script_request,
)
from tests.integration.helpers import settings_for

pytestmark = [pytest.mark.usefixtures("docker_engine"), pytest.mark.asyncio(loop_scope="module")]
RS = common_pb2
MIB = 1024 * 1024
MEMORY, PIDS, DISK, OUTPUT = 96 * MIB, 48, 16 * MIB, 64 * 1024
CLASSES = {f"{rt}-1cpu-96mib-48pids-16mib-none" for rt in ("runc", "runsc")}


class Hostile:
    """The module's executor, its host watch and the host's process count at the start."""

    def __init__(self, h: ExecutorHarness, host: HostWatch, tmp: Path) -> None:
        self.h = h
        self.host = host
        self.tmp = tmp
        self.processes = host_process_count()

    async def after(self, ended: Ended, runtime: int, *, reuse_name: str | None = None) -> None:
        """The executor is healthy, the next run is clean, nothing on the host changed."""
        status = await self.h.stub.GetPoolStatus(executor_pb2.GetPoolStatusRequest())
        assert status.backend == "docker"
        if reuse_name is None:
            assert_clean(await canary(self.h, runtime))
        else:
            assert_clean(await canary(self.h, runtime, name=reuse_name, reuse=True))
        self.host.assert_unchanged()
        await self.host.assert_settled(self.h, None if reuse_name else ended.host)
        # Loose on purpose (other work shares the host): a bomb that escaped would show.
        assert host_process_count() < self.processes + 4 * PIDS


@contextlib.asynccontextmanager
async def open_hostile(tmp: Path, nats_url: str, tokens: Any) -> AsyncIterator[Hostile]:
    """An executor with small limits, its client, and a watch on the host."""
    require(docker_available(), "no Docker engine reachable (make docker)")
    require(sandbox_image_available(), "the sandbox image is missing (make sandbox-image)")
    (tmp / "host").mkdir()
    host = HostWatch(tmp / "host", CLASSES)
    # Set before the executor starts: had it passed its own environment on, this would show.
    os.environ[host.env_name] = host.env_value
    settings = settings_for(
        ExecutorSettings,
        tmp,
        "executor",
        nats_url=nats_url,
        principals_file=tokens.principals_file,
        sandbox={
            "backend": "docker",
            "timeout_s": 10,
            "memory_bytes": MEMORY,
            "pids": PIDS,
            "work_bytes": DISK,
            "tmp_bytes": DISK,
            "output_bytes": OUTPUT,
            "cancel_grace_s": 1,
            "pool": {"min_idle": 1, "max_idle": 2, "reuse_max_runs": 20},
        },
        artifacts={"max_total_bytes": MIB, "max_file_bytes": MIB // 2},
        work_dir=str(tmp / "work"),
        max_concurrent_runs=2,
    )
    running = await launch(build_runtime("executor", settings), build)
    try:
        nc = await nats.connect(nats_url)
        try:
            async with open_channel(running.address, token=tokens.service) as channel:
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                yield Hostile(ExecutorHarness(running, stub, nc.jetstream()), host, tmp)
        finally:
            await nc.close()
    finally:
        await running.stop()
        os.environ.pop(host.env_name, None)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hostile(
    tmp_path_factory: pytest.TempPathFactory, nats_server: Any, tokens: Any
) -> AsyncIterator[Hostile]:
    """One executor for the module's hostile runs."""
    async with open_hostile(tmp_path_factory.mktemp("hostile"), nats_server.url, tokens) as h:
        yield h


@pytest_asyncio.fixture(loop_scope="module")
async def flooded(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[Hostile]:
    """An executor of its own for each output flood: whatever a flood does to one executor
    (its memory, its event relay) cannot spill into the other tests."""
    async with open_hostile(tmp_path, nats_server.url, tokens) as h:
        yield h


@pytest.fixture(params=["runc", "gvisor"])
def runtime(request: pytest.FixtureRequest) -> int:
    """Every hostile script runs on the engine's default runtime and on gVisor."""
    if request.param == "runc":
        return RS.RUNTIME_UNSPECIFIED
    client = docker.from_env()
    try:
        runtimes = client.info().get("Runtimes") or {}
    finally:
        client.close()
    require("runsc" in runtimes, "the Docker engine has no runsc runtime (--with-gvisor)")
    return RS.RUNTIME_RUNSC


def _json(ended: Ended) -> dict[str, Any]:
    """The script's report: its last stdout line."""
    lines = ended.finished.output.stdout.strip().splitlines()
    report: dict[str, Any] = json.loads(lines[-1])
    return report


# --- processes ------------------------------------------------------------------------------

FORK_BOMB = (
    WHO
    + """
import os, time
if os.fork() == 0:
    while True:  # every process forks forever
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
peak, end = 0, time.monotonic() + 2
while time.monotonic() < end:
    try:
        peak = max(peak, sum(1 for p in os.listdir("/proc") if p.isdigit()))
    except OSError:
        pass
    time.sleep(0.02)
print("PEAK=%d" % peak, flush=True)
"""
)


@pytest.mark.parametrize("reuse", [False, True], ids=["per-run", "reuse"])
async def test_fork_bomb_is_capped_by_the_pids_limit(
    hostile: Hostile, runtime: int, reuse: bool
) -> None:
    """A fork bomb is contained: either it never gets past the pids limit and the run ends
    normally, or the run fails as the script's doing (never as an infrastructure error, which
    the scheduler would retry); every bomb process dies."""
    name = f"fork-bomb-{runtime}-{reuse}"
    request = script_request(hostile.h, FORK_BOMB, runtime, name=name, reuse=reuse)
    ended = await drive(hostile.h, request)
    finished = ended.finished
    if finished.state == RS.RUN_STATE_SUCCEEDED:
        peak = int(finished.output.stdout.split(b"PEAK=")[1].split()[0])
        assert PIDS // 2 < peak <= PIDS
    else:
        assert finished.state == RS.RUN_STATE_FAILED, finished.exit
        assert finished.exit.reason != RS.FAILURE_REASON_INFRASTRUCTURE, finished.exit
    await hostile.after(ended, runtime, reuse_name=name if reuse else None)


MEMORY_BOMB = (
    WHO
    + """
import os, sys, time
kids = []
for _ in range(4):  # 4 x 48 MiB: each child alone fits in 96 MiB, together they do not
    pid = os.fork()
    if pid == 0:
        hoard = [b"\\x01" * (8 << 20) for _ in range(6)]
        time.sleep(2)
        os._exit(0)
    kids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in kids]
print("CODES=%s" % codes, flush=True)
sys.exit(3)
"""
)


async def test_memory_bomb_spread_over_children_is_oom_killed(
    hostile: Hostile, runtime: int
) -> None:
    """Children that together exceed the memory limit: FAILED with reason OOM_KILLED."""
    ended = await drive(hostile.h, script_request(hostile.h, MEMORY_BOMB, runtime))
    finished = ended.finished
    assert finished.state == RS.RUN_STATE_FAILED, (finished.exit, finished.output.stdout)
    assert finished.exit.reason == RS.FAILURE_REASON_OOM_KILLED, (
        finished.exit,
        finished.output.stdout[-300:],
    )
    await hostile.after(ended, runtime)


INFINITE_LOOP = (
    WHO
    + """
import signal
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
while True:
    pass
"""
)


async def test_infinite_loop_is_timed_out(hostile: Hostile, runtime: int) -> None:
    """A busy loop ignoring every catchable signal ends TIMED_OUT at its timeout."""
    request = script_request(hostile.h, INFINITE_LOOP, runtime, timeout_s=2)
    ended = await drive(hostile.h, request)
    assert ended.finished.state == RS.RUN_STATE_TIMED_OUT
    assert ended.finished.exit.reason == RS.FAILURE_REASON_TIMEOUT
    await hostile.after(ended, runtime)


STUBBORN = (
    WHO
    + """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()  # a daemon: its own session, re-parented to PID 1
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            open("/tmp/daemon-alive", "w").write(str(time.time()))
            time.sleep(0.1)
    os._exit(0)
time.sleep(0.3)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""
)


@pytest.mark.parametrize("reuse", [False, True], ids=["per-run", "reuse"])
async def test_cancelled_script_ignoring_sigterm_and_its_daemon_are_gone(
    hostile: Hostile, runtime: int, reuse: bool
) -> None:
    """Cancel of a script that ignores SIGTERM after double-forking a daemon: CANCELLED,
    and neither the script nor the daemon is there for the next run."""
    name = f"stubborn-{runtime}-{reuse}"
    request = script_request(hostile.h, STUBBORN, runtime, name=name, reuse=reuse, timeout_s=30)
    replies: list[executor_pb2.CancelResponse] = []

    async def cancel_when_ready(data: bytes) -> None:
        if b"ready" in data and not replies:
            replies.append(
                await hostile.h.stub.Cancel(executor_pb2.CancelRequest(run_id=request.run_id))
            )

    ended = await drive(hostile.h, request, on_log=cancel_when_ready)
    assert replies and replies[0].cancelled
    assert ended.finished.state == RS.RUN_STATE_CANCELLED
    assert ended.finished.exit.reason == RS.FAILURE_REASON_CANCELLED
    await hostile.after(ended, runtime, reuse_name=name if reuse else None)


# --- disk and output ------------------------------------------------------------------------

DISK_FILL = (
    WHO
    + """
import errno, json, os, sys
sizes, errors = {}, {}
block = b"\\x00" * (1 << 20)
for path in ("/work/fill", "/tmp/fill"):
    try:
        with open(path, "wb") as f:
            while f.tell() < (1 << 30):
                f.write(block)
                f.flush()
    except OSError as exc:
        errors[path] = exc.errno
    sizes[path] = os.path.getsize(path)
print(json.dumps({"sizes": sizes, "errors": errors}), flush=True)
raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # left full on purpose
"""
)


async def test_disk_fill_stops_at_the_tmpfs_caps(hostile: Hostile, runtime: int) -> None:
    """Filling /work and /tmp ends in ENOSPC at their size caps; the run fails cleanly."""
    ended = await drive(hostile.h, script_request(hostile.h, DISK_FILL, runtime))
    finished = ended.finished
    assert finished.state == RS.RUN_STATE_FAILED
    assert (finished.exit.reason, finished.exit.exit_code) == (RS.FAILURE_REASON_EXIT_CODE, 1)
    assert b"No space left on device" in finished.output.stderr
    report = _json(ended)
    assert report["errors"] == {"/work/fill": 28, "/tmp/fill": 28}
    for size in report["sizes"].values():
        assert DISK // 2 < size <= DISK
    await hostile.after(ended, runtime)


FLOOD_MIB = 1024
# os.write may write less than asked (gVisor's stdout does, under pressure): write it all.
PUT = """
import os
def put(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
"""
FLOOD = (
    WHO
    + PUT
    + f"""
chunk = (b"x" * 1023 + b"\\n") * 1024
for _ in range({FLOOD_MIB}):
    put(chunk)
put(b"THE-END\\n")
"""
)
# The executor keeps a few head/tail budgets of output in memory, and events in flight: far
# below this. Past it, the guard kills the sandbox (an executor buffering the whole flood
# would take the machine's memory).
MEMORY_GROWTH_LIMIT = 256 * MIB


async def _flood(flooded: Hostile, request: executor_pb2.ExecuteRequest) -> Ended:
    """Drive a flood under the memory guard; fail at once if the executor's memory runs away
    (the fixture's teardown then stops it) or the run never finishes."""
    with MemoryGuard(flooded.host, MEMORY_GROWTH_LIMIT) as guard:
        driving = asyncio.ensure_future(drive(flooded.h, request, wait_s=60))
        tripped = asyncio.ensure_future(guard.tripped.wait())
        await asyncio.wait({driving, tripped}, return_when=asyncio.FIRST_COMPLETED)
        tripped.cancel()
        if guard.tripped.is_set():
            driving.cancel()
            await asyncio.gather(driving, return_exceptions=True)
            pytest.fail(
                f"the executor's memory grew past {MEMORY_GROWTH_LIMIT >> 20} MiB during the "
                "flood (the guard killed the sandbox)"
            )
        try:
            ended = driving.result()
        except TimeoutError:
            pytest.fail(
                f"no FINISHED event within 60 s (memory grew {guard.peak_growth >> 20} MiB)"
            )
    return ended


def _assert_live_events_bounded(ended: Ended) -> None:
    # Live output must travel in events any NATS server takes (default max_payload: 1 MiB).
    assert ended.largest_log <= MIB, f"a LOG event carried {ended.largest_log} bytes"


async def test_gigabyte_of_output_keeps_head_and_tail_within_the_budget(
    flooded: Hostile, runtime: int
) -> None:
    """A gigabyte on stdout: SUCCEEDED, head and tail kept within the byte budget, the
    truncation marked and counted, live LOG events bounded, the executor's memory bounded."""
    request = script_request(flooded.h, FLOOD, runtime, timeout_s=50)
    ended = await _flood(flooded, request)
    finished = ended.finished
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output)
    output = finished.output
    assert output.truncated
    host_line = len(f"HOST={ended.host}\n")
    assert output.stdout_total_bytes == host_line + FLOOD_MIB * MIB + len(b"THE-END\n")
    assert output.stdout.startswith(b"HOST=") and output.stdout.endswith(b"x\nTHE-END\n")
    assert b"bytes truncated" in output.stdout
    assert len(output.stdout) <= OUTPUT // 2 + 100
    _assert_live_events_bounded(ended)
    await flooded.after(ended, runtime)


ENDLESS_LINE = WHO + PUT + "chunk = b'A' * (1 << 20)\nwhile True:\n    put(chunk)\n"


async def test_one_endless_line_is_cut_and_timed_out(flooded: Hostile, runtime: int) -> None:
    """Output without a newline, forever: TIMED_OUT with head and tail of the one line, live
    LOG events bounded, the executor's memory bounded."""
    request = script_request(flooded.h, ENDLESS_LINE, runtime, timeout_s=3)
    ended = await _flood(flooded, request)
    finished = ended.finished
    assert finished.state == RS.RUN_STATE_TIMED_OUT
    output = finished.output
    assert output.truncated and output.stdout_total_bytes > 8 * MIB
    assert output.stdout.startswith(f"HOST={ended.host}\nAAAA".encode())
    assert output.stdout.endswith(b"A" * 1000)
    assert len(output.stdout) <= OUTPUT // 2 + 100
    _assert_live_events_bounded(ended)
    await flooded.after(ended, runtime)


# --- network ----------------------------------------------------------------------------------

EGRESS = (
    WHO
    + """
import json, os, socket
port = int(os.environ["RUNBOX_PARAM_PORT"])
def tcp(host, p):
    try:
        socket.create_connection((host, p), timeout=2).close()
        return "open"
    except OSError:
        return "blocked"
def udp(host, p):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.sendto(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00", (host, p))
        s.recvfrom(512)
        return "open"
    except OSError:
        return "blocked"
def dns(name):
    try:
        socket.getaddrinfo(name, 80)
        return "resolved"
    except OSError:
        return "blocked"
print(json.dumps({
    "loopback": tcp("127.0.0.1", port),
    "loopback6": tcp("::1", port),
    "docker_gateway": tcp("172.17.0.1", port),
    "metadata": tcp("169.254.169.254", 80),
    "public": tcp("1.1.1.1", 443),
    "dns_udp": udp("8.8.8.8", 53),
    "dns": dns("example.com"),
    "interfaces": [n for _, n in socket.if_nameindex()],
}))
"""
)


async def test_network_egress_is_blocked(hostile: Hostile, runtime: int) -> None:
    """Loopback services of the host, the metadata address, the internet and DNS: all blocked."""
    connections: list[str] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(str(writer.get_extra_info("peername")))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        request = script_request(hostile.h, EGRESS, runtime, params={"port": port})
        ended = await drive(hostile.h, request)
    finally:
        server.close()
        await server.wait_closed()
    assert ended.finished.state == RS.RUN_STATE_SUCCEEDED, ended.finished.output.stderr
    report = _json(ended)
    assert report.pop("interfaces") == ["lo"]
    assert report == {
        "loopback": "blocked",
        "loopback6": "blocked",
        "docker_gateway": "blocked",
        "metadata": "blocked",
        "public": "blocked",
        "dns_udp": "blocked",
        "dns": "blocked",
    }
    assert connections == []
    await hostile.after(ended, runtime)


# --- secrets and privileges -------------------------------------------------------------------

SNOOP = (
    WHO
    + """
import json, os
def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as exc:
        return "error:%d" % exc.errno
sentinel = os.environ["RUNBOX_PARAM_SENTINEL"]
seen = {
    "shadow": read("/etc/shadow"),
    "agent_environ": read("/proc/1/environ"),
    "agent_cmdline_has_secret": os.environ["RUNBOX_PARAM_TOKEN"] in read("/proc/1/cmdline"),
    "host_file": read(sentinel),
    "mounts": read("/proc/self/mountinfo"),
    "docker_sock": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
    "own_secret": json.load(open(os.environ["RUNBOX_SECRETS_FILE"]))["token"]
    == os.environ["RUNBOX_PARAM_TOKEN"],
    "environ": sorted(os.environ),
}
try:
    open(sentinel, "w").write("pwned")
    seen["host_write"] = "written"
except OSError as exc:
    seen["host_write"] = "error:%d" % exc.errno
print(json.dumps(seen))
"""
)


async def test_host_secrets_and_env_are_out_of_reach(
    hostile: Hostile, runtime: int, tokens: Any
) -> None:
    """/etc/shadow, the agent's environment, the host's files, env and Docker socket: none
    readable; the run's own secret is its own."""
    host = hostile.host
    own = secrets.token_hex(12)
    request = script_request(
        hostile.h,
        SNOOP,
        runtime,
        params={"sentinel": str(host.sentinel)},
        secrets={"token": own},
    )
    ended = await drive(hostile.h, request)
    assert ended.finished.state == RS.RUN_STATE_SUCCEEDED, ended.finished.output.stderr
    seen = _json(ended)
    assert seen["shadow"] == "error:13"
    assert seen["host_file"] == "error:2" and seen["host_write"].startswith("error:")
    assert seen["docker_sock"] == [] and seen["own_secret"] is True
    assert seen["agent_cmdline_has_secret"] is False
    raw = ended.finished.output.stdout.decode()
    for leaked in (host.env_name, host.env_value, tokens.service, str(hostile.tmp), "nats://"):
        assert leaked not in raw
    assert not any(n.startswith("RUNBOX_HOSTILE") for n in seen["environ"])
    await hostile.after(ended, runtime)


SCAVENGE = (
    WHO
    + """
import json, os, re
pattern = re.compile(b"zq" + b"-other-run-" + b"[0-9a-f]{32}")
def scan(pid):
    found = set()
    try:
        maps = open("/proc/%s/maps" % pid).read().splitlines()
        mem = open("/proc/%s/mem" % pid, "rb", buffering=0)
    except OSError as exc:
        return "error:%d" % exc.errno
    with mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("rw"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                found.update(m.decode() for m in pattern.findall(mem.read(end - start)))
            except (OSError, OverflowError, ValueError):
                continue
    return sorted(found)
def grep(path):
    try:
        return sorted({m.decode() for m in pattern.findall(open(path, "rb").read())})
    except OSError as exc:
        return "error:%d" % exc.errno
print(json.dumps({
    "agent_environ": grep("/proc/1/environ"),
    "agent_cmdline": grep("/proc/1/cmdline"),
    "agent_memory": scan(1),
    "own_memory": scan("self"),
}))
"""
)


async def test_reused_sandbox_holds_no_secret_of_an_earlier_run(
    hostile: Hostile, runtime: int
) -> None:
    """In reuse mode a run finds no secret of the script's earlier run: not in the agent's
    environment or argv, not in the agent's memory, not in its own (forked) memory."""
    name = f"keeper-{runtime}"
    earlier = f"zq-other-run-{secrets.token_hex(16)}"
    first = await drive(
        hostile.h,
        script_request(
            hostile.h,
            WHO + "print('ok')\n",
            runtime,
            name=name,
            reuse=True,
            secrets={"token": earlier},
        ),
    )
    assert first.finished.state == RS.RUN_STATE_SUCCEEDED
    ended = await drive(
        hostile.h, script_request(hostile.h, SCAVENGE, runtime, name=name, reuse=True)
    )
    assert ended.finished.state == RS.RUN_STATE_SUCCEEDED, ended.finished.output.stderr
    assert ended.host == first.host  # the same kept container
    found = {k: v for k, v in _json(ended).items() if v and not str(v).startswith("error:")}
    assert found == {}, f"the earlier run's secret is readable: {found}"
    assert earlier.encode() not in ended.finished.output.stdout
    await hostile.after(ended, runtime, reuse_name=name)


PRIVILEGES = (
    WHO
    + """
import ctypes, json, os, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
def attempt(fn, *args):
    # In a child, so that one success cannot change what the next check sees:
    # 0 = allowed, else the errno.
    pid = os.fork()
    if pid == 0:
        os._exit(0 if fn(*args) == 0 else (ctypes.get_errno() or 255))
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
su = subprocess.Popen(["/usr/bin/su", "-c", "id", "root"], stdin=subprocess.PIPE,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
su_uid = None
for _ in range(100):
    try:
        su_uid = [l.split()[1:3] for l in open("/proc/%d/status" % su.pid) if l.startswith("Uid")][0]
    except (OSError, IndexError):
        pass
    if su_uid and su.poll() is None:
        break
    time.sleep(0.02)
su.kill(); su.wait()
unshare = subprocess.run(["unshare", "-r", "true"], capture_output=True)
print(json.dumps({
    "caps": {k: v.strip() for k, v in status.items() if k.startswith("Cap")},
    "no_new_privs": libc.prctl(39, 0, 0, 0, 0),
    "setuid_root": attempt(libc.setuid, 0),
    "mount": attempt(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
    "unshare_mount_ns": attempt(libc.unshare, 0x00020000),
    "unshare_user_ns": attempt(libc.unshare, 0x10000000),
    "unshare_net_ns": attempt(libc.unshare, 0x40000000),
    "chroot": attempt(libc.chroot, b"/tmp"),
    "unshare_cmd": unshare.returncode,
    "setuid_binary_uid": su_uid,
}))
"""
)


async def test_no_privilege_can_be_gained(hostile: Hostile, runtime: int) -> None:
    """No capability at all, no-new-privileges set, and setuid(0), mount, unshare (mount,
    user and network namespaces), chroot and a setuid-root binary all gain nothing."""
    ended = await drive(hostile.h, script_request(hostile.h, PRIVILEGES, runtime))
    assert ended.finished.state == RS.RUN_STATE_SUCCEEDED, ended.finished.output.stderr
    seen = _json(ended)
    caps = seen.pop("caps")
    assert {"CapPrm", "CapEff", "CapBnd"} <= set(caps)  # gVisor has no CapAmb line
    assert set(caps.values()) == {"0000000000000000"}, caps
    seen["unshare_cmd"] = "denied" if seen["unshare_cmd"] else "allowed"
    assert seen == {
        "no_new_privs": 1,
        "setuid_root": 1,  # EPERM
        "mount": 1,
        "unshare_mount_ns": 1,
        "unshare_user_ns": 1,
        "unshare_net_ns": 1,
        "chroot": 1,
        "unshare_cmd": "denied",  # unshare -r: a user namespace with a uid map
        "setuid_binary_uid": ["10001", "10001"],  # real, effective: su runs as the caller
    }
    await hostile.after(ended, runtime)


# --- what a run leaves behind ---------------------------------------------------------------

LINKS = (
    WHO
    + """
import os
a = "/artifacts"
open(a + "/ok.txt", "w").write("fine")
os.symlink("/etc/passwd", a + "/passwd")
os.symlink(os.environ["RUNBOX_PARAM_SENTINEL"], a + "/host-secret")
os.symlink("/etc", a + "/etc")
os.symlink("/proc/1/root/etc/shadow", a + "/shadow")
os.link(a + "/ok.txt", a + "/hard.txt")
os.symlink("/etc/passwd", "/work/result.json")
"""
)


async def test_links_planted_at_artifact_paths_are_not_followed(
    hostile: Hostile, runtime: int
) -> None:
    """Symlinks (to /etc/passwd, /etc, a host path) and a hardlink under /artifacts, and
    result.json as a symlink: only the regular file is collected, nothing is followed."""
    request = script_request(
        hostile.h, LINKS, runtime, params={"sentinel": str(hostile.host.sentinel)}
    )
    ended = await drive(hostile.h, request)
    finished = ended.finished
    assert finished.state == RS.RUN_STATE_SUCCEEDED, (finished.exit, finished.output.stderr)
    names = {a.name for a in finished.artifacts}
    assert len(names) == 1 and names <= {"ok.txt", "hard.txt"}, names
    assert not finished.HasField("result")
    assert "symlink" in finished.exit.message
    stored = hostile.tmp / "work" / "artifacts" / request.run_id
    files = list(stored.rglob("*"))
    assert not any(p.is_symlink() for p in files)
    assert [p.read_bytes() for p in files if p.is_file()] == [b"fine"]
    await hostile.after(ended, runtime)


LEFTOVERS = (
    WHO
    + """
import os, signal, time
for path in ("/work/.hidden", "/work/left", "/tmp/left", "/tmp/.hidden", "/artifacts/left",
             "/dev/shm/left"):
    open(path, "w").write("x")
os.makedirs("/tmp/locked/inner")
open("/tmp/locked/inner/file", "w").write("x")
os.chmod("/tmp/locked/inner", 0o500)  # its owner may not delete what is inside
os.chmod("/tmp/locked", 0o500)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(300)
    os._exit(0)
"""
)


async def test_reused_sandbox_keeps_no_files_or_processes_of_the_last_run(
    hostile: Hostile, runtime: int
) -> None:
    """Reuse mode: files (hidden, in /dev/shm, in a directory made read-only) and a daemon
    left by one run are all gone when the next run of the script starts."""
    name = f"leftovers-{runtime}"
    request = script_request(hostile.h, LEFTOVERS, runtime, name=name, reuse=True)
    ended = await drive(hostile.h, request)
    assert ended.finished.state == RS.RUN_STATE_SUCCEEDED, ended.finished.output.stderr
    after = await canary(hostile.h, runtime, name=name, reuse=True)
    assert after["host"] == ended.host  # the same kept container
    assert_clean(after)
    await hostile.after(ended, runtime, reuse_name=name)
