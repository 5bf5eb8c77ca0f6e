#!/usr/bin/env bash
# Make a Docker engine available: install docker.io with apt if dockerd is
# missing, start dockerd with the flags Runbox needs (no bridge, no iptables:
# sandboxes use network "none"), register gVisor (runsc) when installed.
# Idempotent; never stops a dockerd it did not start.
#   --with-gvisor   also install Debian's runsc package and register it
set -euo pipefail

WITH_GVISOR=0
for arg in "$@"; do
  case "$arg" in
    --with-gvisor) WITH_GVISOR=1 ;;
    *) echo "usage: $0 [--with-gvisor]" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-docker: need root or sudo" >&2; exit 1; fi
fi
LOG=/var/log/runbox-dockerd.log
PIDFILE=/var/run/runbox-dockerd.pid

apt_install() {
  $SUDO apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

register_runsc() {
  command -v runsc >/dev/null 2>&1 || return 0
  $SUDO mkdir -p /etc/docker
  $SUDO python3 - <<'PY'
import json, os
path = "/etc/docker/daemon.json"
data = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read().strip()
        data = json.loads(text) if text else {}
runtimes = data.setdefault("runtimes", {})
want = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
if runtimes.get("runsc") != want:
    runtimes["runsc"] = want
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    print("registered runsc in " + path)
PY
}

if [ "$WITH_GVISOR" = 1 ] && ! command -v runsc >/dev/null 2>&1; then
  echo "install-docker: installing gVisor (runsc)" >&2
  apt_install runsc
fi

if docker info >/dev/null 2>&1; then
  if [ "$WITH_GVISOR" = 1 ] && ! docker info --format '{{json .Runtimes}}' | grep -q runsc; then
    echo "install-docker: a Docker engine is running without runsc; register it in /etc/docker/daemon.json and restart it" >&2
    register_runsc
  fi
  echo "install-docker: Docker engine reachable" >&2
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "install-docker: installing docker.io" >&2
  apt_install docker.io
fi
register_runsc >&2

if pgrep -x dockerd >/dev/null 2>&1; then
  echo "install-docker: dockerd is running but not reachable yet; waiting" >&2
else
  echo "install-docker: starting dockerd (log $LOG)" >&2
  # containerd ships with docker.io; dockerd starts its own when none runs.
  $SUDO sh -c "nohup dockerd --bridge=none --iptables=false --ip6tables=false \
      --pidfile $PIDFILE >>$LOG 2>&1 &"
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    echo "install-docker: Docker engine ready ($(docker version --format '{{.Server.Version}}'))" >&2
    exit 0
  fi
  sleep 0.5
done
echo "install-docker: Docker engine did not become ready in 60 s; see $LOG" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
