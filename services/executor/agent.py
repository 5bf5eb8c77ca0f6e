"""The in-sandbox agent. Its source (AGENT_SOURCE) runs as PID 1 of a warm sandbox
container via `python3 -I -u -c` (isolated: no writable directory on sys.path),
started ahead of demand: it waits on stdin for a job (one JSON line), writes the script, parameters and secrets into the work dir, prints
a start marker tagged with the job's nonce (the first bytes of stdout), and forks:

- python jobs with `inprocess` run in the forked child of this already running
  interpreter (runpy, fresh globals, argv, environment and stdio): no interpreter
  start-up on the run's path;
- other jobs fork and exec their interpreter (`/bin/sh`, or python3 elsewhere).

The child gets its own session (process group), /dev/null as stdin and the job's
rlimits. When it exits the agent, as PID 1, kills every other process in the
container (daemons included) and reaps them, measures (container cgroup counters
for a fresh container, wait4 rusage for a reused one), prints a nonce-tagged usage
trailer and then either exits with the child's status (mode "once": one container,
one run) or clears /work, /tmp and /artifacts and waits for the next job of the
same script (mode "reuse").

The local backend (runners/local_runner.py) starts agents ahead of demand too, as child
processes of the executor (RUNBOX_AGENT_WARM: runpy is warmed while it waits), one run
each, in mode "once": python jobs run `inprocess` when the agent is the script's python3.

Secrets reach the script only through a 0600 file and environment variables,
never argv. Kept dependency-free: it runs on any image with python3.
"""

AGENT_SOURCE = r"""
import json, os, signal, sys, time
# Imported once, while the sandbox waits, not on a run's path. tarfile is imported when a run
# left artifacts (safe: `python3 -I` puts no writable directory on sys.path).
import ctypes, io, resource, runpy, stat, types

def read_first(paths):
    for path in paths:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            pass
    return ""

def cgroup_usage():
    usage = {}
    stat = read_first(["/sys/fs/cgroup/cpu.stat"])
    for line in stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            usage["cpu_seconds"] = int(value) / 1e6
    if "cpu_seconds" not in usage:
        ns = read_first(["/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"]).strip()
        if ns:
            usage["cpu_seconds"] = int(ns) / 1e9
    peak = read_first(["/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes"]).strip()
    if peak.isdigit():
        usage["peak_memory_bytes"] = int(peak)
    io_read = io_write = 0
    for line in read_first(["/sys/fs/cgroup/io.stat"]).splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes": io_read += int(value)
            if key == "wbytes": io_write += int(value)
    for line in read_first(["/sys/fs/cgroup/blkio/blkio.throttle.io_service_bytes"]).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read": io_read += int(parts[2])
        if len(parts) == 3 and parts[1] == "Write": io_write += int(parts[2])
    usage["io_read_bytes"], usage["io_write_bytes"] = io_read, io_write
    events = read_first(["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"])
    usage["oom_killed"] = any(
        line.split()[0] == "oom_kill" and int(line.split()[1]) > 0
        for line in events.splitlines() if len(line.split()) == 2
    )
    return usage

def oom_kills():
    events = read_first(["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"])
    for line in events.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
            return int(parts[1])
    return 0

def pack(work, artifacts, max_bytes):
    # result.json and the artifacts tree as an uncompressed tar, links recorded as links (never
    # followed; the executor keeps regular files only), cut off before max_bytes of content.
    import tarfile
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        result = os.path.join(work, "result.json")
        if os.path.lexists(result):
            entries.append((result, "result.json"))
        for root, dirs, files in os.walk(artifacts):
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(root, name)
                entries.append((full, "artifacts/" + os.path.relpath(full, artifacts)))
        for full, arcname in entries:
            try:
                info = os.lstat(full)
            except OSError:
                continue
            size = info.st_size if stat.S_ISREG(info.st_mode) else 0
            if max_bytes and total + size > max_bytes:
                continue
            total += size
            try:
                tar.add(full, arcname=arcname, recursive=False)
            except OSError:
                pass
    return buffer.getvalue()

def others(keep):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in keep]

def reap(deadline_s=2.0, keep=(1,)):
    # Wait until every process killed after a run is gone: orphans are re-parented to
    # PID 1, so they are all our children; a zombie left unreaped would outlive the run.
    until = time.monotonic() + deadline_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > until or not others(keep):
                return
            time.sleep(0.001)

def kill_all_but(keep):
    # kill(-1) would take the zygote too: kill the rest by pid until none is left (a
    # process forking meanwhile is caught on the next pass).
    for _ in range(200):
        pids = others(keep)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reap(0.05, keep)
    return not others(keep)

def clear_dir(path):
    # Empty a directory the run could write to; False if anything is left (then the
    # sandbox is not reused). Directories the script made unreadable are opened up first.
    try:
        names = os.listdir(path)
    except OSError:
        return not os.path.exists(path)
    for name in names:
        full = os.path.join(path, name)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                os.chmod(full, 0o700)
                clear_dir(full)
                os.rmdir(full)
            else:
                os.unlink(full)
        except OSError:
            pass
    try:
        return not os.listdir(path)
    except OSError:
        return False

def dumpable(flag):
    # PR_SET_DUMPABLE: 0 keeps same-uid processes (the scripts) out of this process's memory
    # (/proc/<pid>/mem, ptrace), where jobs and their secrets were parsed.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, flag, 0, 0, 0)
    except Exception:
        pass

def die_with_parent():
    # Outside a container (the local backend) nothing else bounds the agent and its run: both
    # are killed when the process that started them dies (an executor killed with -9).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass

def child(job, script, work, env):
    # In the forked child: become the user process (never returns).
    code = 1
    try:
        die_with_parent()
        dumpable(1)  # the run's own process: normal /proc/self; the agent stays closed
        if job.get("own_group"):
            os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.chdir(work)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for name, value in (job.get("rlimits") or {}).items():
            resource.setrlimit(getattr(resource, name), (value, value))
        if not job.get("inprocess"):
            os.execvpe(job["argv"][0], job["argv"] + [script], env)
        # Python in this already running interpreter: no interpreter start-up on the run's path.
        os.environ.clear()
        os.environ.update(env)
        sys.stdin = open(0, "r")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True, line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, line_buffering=True)
        sys.argv = [script]
        sys.path[:] = [work] + [p for p in sys.path if p not in ("", ".")]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code & 0xFF
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            sys.__excepthook__(*sys.exc_info())  # the interpreter's own report: no import here
            code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
    except BaseException as exc:
        try:
            os.write(2, ("runbox agent: cannot start the script: %s\n" % exc).encode())
        except OSError:
            pass
        code = 127
    os._exit(code)

def read_exact(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError("pipe closed")
        data += chunk
    return data

class Zygote:
    # A process forked before the agent reads any job, so its memory holds no run's data
    # (secrets included). Reused sandboxes start each run as a fresh fork of it: the speed of
    # the warm interpreter without inheriting what earlier runs left in the agent's memory.
    # It reads only a one-byte "go"; the child it forks reads its own job from the pipe.

    def __init__(self):
        ctl_r, self.ctl_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.ctl_w)
            os.close(self.res_r)
            self.loop(ctl_r, res_w)
        os.close(ctl_r)
        os.close(res_w)
        self.buffer = b""

    def loop(self, ctl_r, res_w):
        while True:
            if not os.read(ctl_r, 1):
                os._exit(0)
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(res_w)
                    size = int.from_bytes(read_exact(ctl_r, 4), "big")
                    spec = json.loads(read_exact(ctl_r, size))
                    os.close(ctl_r)
                except BaseException:
                    os._exit(127)
                child(spec["job"], spec["script"], spec["work"], spec["env"])
            os.write(res_w, ("P%d\n" % pid).encode())
            while True:
                try:
                    _, status, ru = os.wait4(pid, 0)
                    break
                except InterruptedError:
                    continue
            report = {"status": status, "ru_utime": ru.ru_utime, "ru_stime": ru.ru_stime,
                      "ru_maxrss": ru.ru_maxrss, "ru_inblock": ru.ru_inblock, "ru_oublock": ru.ru_oublock}
            os.write(res_w, ("R" + json.dumps(report) + "\n").encode())

    def line(self):
        while b"\n" not in self.buffer:
            chunk = os.read(self.res_r, 4096)
            if not chunk:
                raise EOFError("zygote gone")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def spawn(self, job, script, work, env):
        os.write(self.ctl_w, b"g")
        pid = int(self.line()[1:])
        spec = json.dumps({"job": {k: job.get(k) for k in ("own_group", "rlimits", "inprocess", "argv")},
                           "script": script, "work": work, "env": env}).encode()
        os.write(self.ctl_w, len(spec).to_bytes(4, "big") + spec)
        return pid

    def wait(self):
        report = json.loads(self.line()[1:])
        return report.pop("status"), types.SimpleNamespace(**report)

    def alive(self):
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

ZYGOTE = None

def run(job):
    work = job.get("work_dir", "/work")
    os.makedirs(work, exist_ok=True)
    artifacts = job.get("artifacts_dir", "/artifacts")
    script = os.path.join(work, job["filename"])
    with open(script, "w") as f:
        f.write(job["content"])
    params_file = os.path.join(work, "params.json")
    with open(params_file, "w") as f:
        json.dump(job["parameters"], f)
    secrets_file = os.path.join(work, ".secrets.json")
    fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(job["secrets"], f)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1", "RUNBOX_PARAMS_FILE": params_file,
           "RUNBOX_SECRETS_FILE": secrets_file, "RUNBOX_RUN_ID": job["run_id"],
           "RUNBOX_ARTIFACTS_DIR": artifacts}
    for name, value in {**job["parameters"], **job["secrets"]}.items():
        env["RUNBOX_PARAM_" + name.upper()] = value if isinstance(value, str) else json.dumps(value)
    # The start marker: the first bytes on stdout, before any of the script's.
    os.write(1, ("%sS%.6f\n" % (job["nonce"], time.time())).encode())
    oom_before = oom_kills()
    started = time.monotonic()
    zygote = ZYGOTE if job.get("mode") == "reuse" and ZYGOTE is not None else None
    pid = 0
    if zygote is not None:
        try:
            pid = zygote.spawn(job, script, work, env)
        except (OSError, EOFError, ValueError):
            zygote, pid = None, 0
    if not pid:
        if job.get("mode") == "reuse":
            job["inprocess"] = False  # this interpreter has parsed earlier jobs: exec afresh
        pid = os.fork()
        if pid == 0:
            child(job, script, work, env)
    def forward(signum, frame):
        try:
            if job.get("own_group"):
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    signal.signal(signal.SIGTERM, forward)
    status, ru = 0, None
    while zygote is not None:
        try:
            status, ru = zygote.wait()
            break
        except InterruptedError:
            continue
        except (OSError, EOFError, ValueError):
            # The zygote died under the run (killed by it?): report the run killed; the
            # sandbox retires (zygote_ok is false below).
            status = signal.SIGKILL
            ru = types.SimpleNamespace(ru_utime=0.0, ru_stime=0.0, ru_maxrss=0, ru_inblock=0, ru_oublock=0)
            break
    while ru is None:
        try:
            _, status, ru = os.wait4(pid, 0)
            break
        except ChildProcessError:
            status, ru = 0, None
            break
        except InterruptedError:
            continue
    wall = time.monotonic() - started
    signal.signal(signal.SIGTERM, signal.SIG_DFL if os.getpid() != 1 else signal.SIG_IGN)
    if os.getpid() == 1 and ZYGOTE is not None and ZYGOTE.alive():
        job["zygote_ok"] = kill_all_but((1, ZYGOTE.pid))  # everything the run left behind
    elif os.getpid() == 1:
        job["zygote_ok"] = False
        try:
            os.kill(-1, signal.SIGKILL)  # everything the run left behind, daemons included
        except OSError:
            pass
        reap()
    elif job.get("own_group"):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    if job.get("measure") == "cgroup":
        usage = cgroup_usage()
        if ru is not None and not (usage["io_read_bytes"] or usage["io_write_bytes"]):
            # A kernel without block I/O accounting in cgroups (its counters stay 0): the run's own.
            usage.update(io_read_bytes=ru.ru_inblock * 512, io_write_bytes=ru.ru_oublock * 512)
    else:
        usage = {"io_read_bytes": 0, "io_write_bytes": 0, "oom_killed": oom_kills() > oom_before}
        if ru is not None:
            usage.update(cpu_seconds=ru.ru_utime + ru.ru_stime, peak_memory_bytes=ru.ru_maxrss * 1024,
                         io_read_bytes=ru.ru_inblock * 512, io_write_bytes=ru.ru_oublock * 512)
    code = os.waitstatus_to_exitcode(status) if ru is not None else 0
    usage["wall_seconds"] = wall
    usage["exit_code"] = code if code >= 0 else 0
    usage["signal"] = -code if code < 0 else 0
    try:
        usage["artifact_entries"] = len(os.listdir(artifacts))
    except OSError:
        usage["artifact_entries"] = 0
    usage["result_json"] = os.path.lexists(os.path.join(work, "result.json"))
    archive = b""
    if job.get("archive") and (usage["artifact_entries"] or usage["result_json"]):
        archive = pack(work, artifacts, int(job.get("archive_max_bytes") or 0))
    usage["archive_bytes"] = len(archive)
    if job.get("mode") == "reuse":
        # Nothing of this run may reach the next one: every writable place is emptied now
        # (and again before the next job); a place that will not empty retires the sandbox.
        cleared = all([clear_dir(path) for path in scratch_dirs(job)])
        usage["clean"] = cleared and bool(job.get("zygote_ok"))
    # End markers: everything the run wrote on either stream came before them. The archive
    # of result.json and /artifacts follows the trailer on stdout, exactly archive_bytes long.
    if job.get("end_marker"):
        os.write(2, ("\n" + job["nonce"] + "E\n").encode())
    os.write(1, ("\n" + job["nonce"] + json.dumps(usage) + "\n").encode())
    view = memoryview(archive)
    while view:
        view = view[os.write(1, view):]
    return code

def scratch_dirs(job):
    return ("/tmp", "/dev/shm", job.get("artifacts_dir", "/artifacts"), job.get("work_dir", "/work"))

def warm_up(path="/tmp/.runbox-warm.py"):
    # runpy's first use (path hooks, finders, code reading) costs ~8 ms; paid here once,
    # every forked run inherits it warm. "x": never through a link someone else put there.
    try:
        with open(path, "x") as f:
            f.write("pass\n")
        try:
            runpy.run_path(path, run_name="__warm__")
        finally:
            os.unlink(path)
    except OSError:
        pass

def main():
    global ZYGOTE
    if os.getpid() != 1:
        parent = os.getppid()
        die_with_parent()
        if os.getppid() != parent:  # it died before the line above
            return 1
    if os.getpid() == 1:
        dumpable(0)
        warm_up()
        # Before stdin is read at all (a buffered read could already hold a job).
        ZYGOTE = Zygote()
    elif os.environ.get("RUNBOX_AGENT_WARM"):
        # A local agent started ahead of demand (its cwd is the executor's work dir): a
        # python run is a fork of it, so runpy is warmed while it waits.
        warm_up(os.path.join(os.getcwd(), ".runbox-warm-%d.py" % os.getpid()))
    if os.environ.get("RUNBOX_AGENT_READY"):
        os.write(1, b"RUNBOX-READY\n")  # the pool counts this sandbox as warm from here
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0
        job = json.loads(line)
        if job.get("mode") == "reuse":
            for path in scratch_dirs(job):
                clear_dir(path)
        code = run(job)
        if job.get("mode") != "reuse":
            return code if code >= 0 else 128 - code
        del job

# os._exit: every byte went out through os.write, and the interpreter's own teardown (tens
# of milliseconds) would sit between the run's trailer and the runner seeing the agent exit.
os._exit(main())
"""
