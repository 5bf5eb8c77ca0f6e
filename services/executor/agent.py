"""The in-sandbox agent. Its source (AGENT_SOURCE) runs as PID 1 of a sandbox
container via `python3 -u -c`: it waits for exactly one job (one JSON line on
stdin), writes the script and parameters into the tmpfs work dir, runs the
interpreter on it as a child process, then kills anything left behind, reads
the container's cgroup counters and prints them as a trailer line tagged with
the job's nonce, and exits with the child's status.

Secrets reach the script only through a 0600 file and environment variables,
never argv. Kept dependency-free: it runs on any image with python3.
"""

AGENT_SOURCE = r"""
import json, os, signal, subprocess, sys, time

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

def main():
    job = json.loads(sys.stdin.readline())
    work = job.get("work_dir", "/work")
    os.makedirs(work, exist_ok=True)
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
           "RUNBOX_ARTIFACTS_DIR": "/artifacts"}
    for name, value in {**job["parameters"], **job["secrets"]}.items():
        env["RUNBOX_PARAM_" + name.upper()] = value if isinstance(value, str) else json.dumps(value)
    started = time.monotonic()
    limits = job.get("rlimits") or {}

    def apply_limits():
        import resource
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, name), (value, value))

    child = subprocess.Popen(job["argv"] + [script], cwd=work, env=env, stdin=subprocess.DEVNULL,
                             preexec_fn=apply_limits if limits else None)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    status = child.wait()
    wall = time.monotonic() - started
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    if job.get("measure") == "rusage":
        import resource
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        usage = {"cpu_seconds": ru.ru_utime + ru.ru_stime, "peak_memory_bytes": ru.ru_maxrss * 1024,
                 "io_read_bytes": ru.ru_inblock * 512, "io_write_bytes": ru.ru_oublock * 512,
                 "oom_killed": False}
    else:
        usage = cgroup_usage()
    usage["wall_seconds"] = wall
    usage["exit_code"] = status if status >= 0 else 0
    usage["signal"] = -status if status < 0 else 0
    sys.stdout.flush()
    sys.stdout.write("\n" + job["nonce"] + json.dumps(usage) + "\n")
    sys.stdout.flush()
    sys.exit(status if status >= 0 else 128 - status)

main()
"""
