#!/usr/bin/env bash
# Make a Docker engine available for Runbox.
#
#   deploy/docker/install-docker.sh [--with-gvisor]
#
# - If `docker info` already works (and, with --with-gvisor, runsc is
#   registered), do nothing.
# - Otherwise install docker.io with apt-get if dockerd is missing, and start
#   dockerd in the background with the flags Runbox needs: --bridge=none
#   --iptables=false --ip6tables=false (sandboxes use network "none"; nothing
#   ever addresses a container by IP). Log: /var/log/runbox-dockerd.log,
#   pidfile: /var/run/runbox-dockerd.pid, default --data-root.
# - If runsc (gVisor, Debian package `runsc`) is installed, register it in
#   /etc/docker/daemon.json (merged, never clobbered) with --network=none.
#   --with-gvisor installs the runsc package first.
# - Waits up to 60 s for `docker info`; fails loudly otherwise.
#
# Idempotent. Never stops or restarts a process it did not start; a running
# dockerd that this script started is only sent SIGHUP (config reload, running
# containers are not touched) after runsc was newly registered.
set -euo pipefail

LOG=/var/log/runbox-dockerd.log
PIDFILE=/var/run/runbox-dockerd.pid
DAEMON_JSON=/etc/docker/daemon.json
WAIT_SECONDS=60

say() { echo "install-docker: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

WITH_GVISOR=0
for arg in "$@"; do
  case "$arg" in
    --with-gvisor) WITH_GVISOR=1 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) say "unknown argument: $arg"; echo "usage: $0 [--with-gvisor]" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    die "must run as root (or with sudo available)"
  fi
fi

docker_ok() { $SUDO docker info >/dev/null 2>&1; }
runsc_registered() {
  $SUDO docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -q >&2
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# Merge {"runtimes": {"runsc": {...}}} into daemon.json, keeping everything
# else in it. Fails (set -e) if the file exists but is not a JSON object.
register_runsc() {
  $SUDO mkdir -p "$(dirname "$DAEMON_JSON")"
  $SUDO python3 - "$DAEMON_JSON" <<'PY'
import json, os, sys
path = sys.argv[1]
data = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
    if text:
        try:
            data = json.loads(text)
        except ValueError as e:
            sys.exit("install-docker: ERROR: %s is not valid JSON (%s); not touching it" % (path, e))
    if not isinstance(data, dict):
        sys.exit("install-docker: ERROR: %s is not a JSON object; not touching it" % path)
# --oci-seccomp: apply the container's seccomp profile (Docker's default) inside gVisor too,
# so what runc denies (unshare of a user namespace, ...) gVisor denies as well.
want = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--oci-seccomp"]}
runtimes = data.setdefault("runtimes", {})
if runtimes.get("runsc") == want:
    print("install-docker: runsc already registered in " + path, file=sys.stderr)
    sys.exit(0)
changed = "runsc" in runtimes
runtimes["runsc"] = want
tmp = path + ".runbox.tmp"
with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
print("install-docker: registered runsc in " + path, file=sys.stderr)
sys.exit(10 if changed else 0)
PY
}

# 0: runsc was already registered as wanted; 1: daemon.json changed (the engine must reload).
runsc_config_changed() {
  local rc=0
  register_runsc || rc=$?
  [ "$rc" = 10 ] && return 0
  [ "$rc" = 0 ] || exit "$rc"
  ! runsc_registered
}

# PID of a running dockerd that this script started (from our pidfile), if any.
our_dockerd_pid() {
  local pid
  [ -r "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "dockerd" ] || return 1
  echo "$pid"
}

wait_for_docker() {
  local deadline=$((SECONDS + WAIT_SECONDS))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if docker_ok; then return 0; fi
    sleep 0.5
  done
  return 1
}

# --- gVisor package ----------------------------------------------------------
if [ "$WITH_GVISOR" = 1 ] && ! command -v runsc >/dev/null 2>&1; then
  say "installing gVisor (Debian package runsc)"
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  if [ -n "$codename" ] && ! apt-cache policy runsc 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    # Debian 12 ships runsc in bookworm-backports only; enable it for this package.
    say "enabling ${codename}-backports for runsc"
    echo "deb http://deb.debian.org/debian ${codename}-backports main" |
      $SUDO tee /etc/apt/sources.list.d/runbox-backports.list >/dev/null
    APT_UPDATED=0
    apt_install -t "${codename}-backports" runsc
  else
    apt_install runsc
  fi
fi

# --- engine already reachable ------------------------------------------------
if docker_ok; then
  if command -v runsc >/dev/null 2>&1 && runsc_config_changed; then
    if pid="$(our_dockerd_pid)"; then
      say "reloading dockerd (pid $pid, started by this script) to pick up runsc"
      $SUDO kill -HUP "$pid"
      for _ in $(seq 1 20); do runsc_registered && break; sleep 0.5; done
      runsc_registered || die "dockerd did not pick up the runsc runtime; see $LOG"
      say "runsc runtime registered"
    else
      say "WARNING: a Docker engine not started by this script is running without runsc;"
      say "  $DAEMON_JSON now registers it: reload that engine (e.g. 'systemctl reload docker' or SIGHUP to dockerd)"
    fi
  fi
  say "Docker engine reachable ($($SUDO docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
  exit 0
fi

# --- install -------------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
  say "dockerd not found; installing docker.io"
  apt_install docker.io
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd still missing after installing docker.io"
command -v docker >/dev/null 2>&1 || die "docker CLI missing (package docker.io / docker-cli)"

if command -v runsc >/dev/null 2>&1; then
  register_runsc || [ "$?" = 10 ]
fi

# --- start -------------------------------------------------------------------
if pgrep -x dockerd >/dev/null 2>&1; then
  say "a dockerd is already running (pid $(pgrep -x dockerd | tr '\n' ' ')) but 'docker info' fails; waiting for it, not starting another"
else
  say "starting dockerd --bridge=none --iptables=false --ip6tables=false (log $LOG, pidfile $PIDFILE)"
  # containerd ships with docker.io; dockerd starts its own when none runs.
  $SUDO sh -c "nohup dockerd --bridge=none --iptables=false --ip6tables=false \
      --pidfile '$PIDFILE' >>'$LOG' 2>&1 </dev/null &"
fi

if wait_for_docker; then
  say "Docker engine ready ($($SUDO docker version --format '{{.Server.Version}}'))"
  if command -v runsc >/dev/null 2>&1 && ! runsc_registered; then
    say "WARNING: runsc is installed but the engine does not list it as a runtime"
  fi
  exit 0
fi
say "ERROR: Docker engine did not become ready within ${WAIT_SECONDS} s; last lines of $LOG:"
$SUDO tail -n 30 "$LOG" >&2 || true
exit 1
