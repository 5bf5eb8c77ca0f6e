#!/usr/bin/env bash
# Build the default Python sandbox image without a registry.
#
#   deploy/sandbox/build-image.sh [--force]
#
# mmdebstrap makes a small Debian rootfs (this machine's suite, from this
# machine's own apt sources: no mirror argument) with python3, ca-certificates
# and tini; `docker import` turns it into an image. Skips the build when the
# image already exists, unless --force.
#
# Environment:
#   SANDBOX_IMAGE    tag to build (default runbox/sandbox-python:latest)
#   SANDBOX_VARIANT  mmdebstrap variant (default apt; "essential" drops apt
#                    and makes the image ~17 MB smaller)
#   SANDBOX_SUITE    Debian suite (default: VERSION_CODENAME of /etc/os-release)
#
# Prints "<tag> <image id> <size in bytes>" on stdout; progress goes to stderr.
set -euo pipefail

IMAGE="${SANDBOX_IMAGE:-runbox/sandbox-python:latest}"
VARIANT="${SANDBOX_VARIANT:-apt}"
UID_GID=10001

say() { echo "build-image: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) say "unknown argument: $arg"; echo "usage: $0 [--force]" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    die "must run as root (or with sudo available): mmdebstrap needs root to build the rootfs"
  fi
fi

summary() {
  local id size
  id="$($SUDO docker image inspect "$IMAGE" --format '{{.Id}}')"
  size="$($SUDO docker image inspect "$IMAGE" --format '{{.Size}}')"
  say "image $IMAGE: id $id, size $((size / 1000 / 1000)) MB ($size bytes)"
  echo "$IMAGE $id $size"
}

$SUDO docker info >/dev/null 2>&1 \
  || die "no Docker engine reachable; run deploy/docker/install-docker.sh first"

OLD_ID="$($SUDO docker image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)"
if [ -n "$OLD_ID" ] && [ "$FORCE" = 0 ]; then
  say "$IMAGE already exists; skipping the build (use --force to rebuild)"
  summary
  exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
  say "mmdebstrap not found; installing it with apt-get"
  $SUDO apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2
fi

SUITE="${SANDBOX_SUITE:-}"
if [ -z "$SUITE" ]; then
  # shellcheck disable=SC1091
  SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
fi
[ -n "$SUITE" ] || die "cannot tell the Debian suite (no VERSION_CODENAME in /etc/os-release); set SANDBOX_SUITE"

# usr-is-merged: otherwise apt satisfies init-system-helpers with usrmerge,
# which drags in the whole of perl (~50 MB).
INCLUDE="python3,ca-certificates,usr-is-merged"
if apt-cache show tini >/dev/null 2>&1; then
  INCLUDE="$INCLUDE,tini"
else
  say "tini is not in this machine's apt lists; building without it"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/runbox-sandbox.XXXXXX")"
trap '$SUDO rm -rf "$WORK"' EXIT
# The user and the directories, written directly: the rootfs has no useradd
# (passwd is not Essential). mmdebstrap runs this on the host, rootfs path as $1.
cat > "$WORK/user-hook.sh" <<EOF
set -eu
r="\$1"
grep -q '^runbox:' "\$r/etc/group"  || echo 'runbox:x:$UID_GID:' >> "\$r/etc/group"
grep -q '^runbox:' "\$r/etc/passwd" || echo 'runbox:x:$UID_GID:$UID_GID:Runbox sandbox:/home/runbox:/usr/sbin/nologin' >> "\$r/etc/passwd"
if [ -f "\$r/etc/shadow" ]; then grep -q '^runbox:' "\$r/etc/shadow" || echo 'runbox:!:19000::::::' >> "\$r/etc/shadow"; fi
if [ -f "\$r/etc/gshadow" ]; then grep -q '^runbox:' "\$r/etc/gshadow" || echo 'runbox:!::' >> "\$r/etc/gshadow"; fi
mkdir -p "\$r/home/runbox" "\$r/work" "\$r/artifacts" "\$r/tmp"
chown $UID_GID:$UID_GID "\$r/home/runbox" "\$r/work" "\$r/artifacts"
chmod 0750 "\$r/home/runbox"
chmod 0755 "\$r/work" "\$r/artifacts"
chmod 1777 "\$r/tmp"
EOF
START_NS=$(date +%s%N)

say "mmdebstrap --variant=$VARIANT $SUITE (+$INCLUDE) from this machine's apt sources"
# No mirror argument: mmdebstrap uses the host's apt sources.
$SUDO mmdebstrap --quiet --mode=root --variant="$VARIANT" --include="$INCLUDE" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook="sh $WORK/user-hook.sh \"\$1\"" \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/* "$1"/tmp/* "$1"/usr/share/man "$1"/usr/share/info "$1"/usr/share/locale "$1"/usr/share/lintian' \
  --customize-hook='find "$1/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete; find "$1/usr/share/doc" -mindepth 1 -type d -empty -delete; rm -f "$1"/var/cache/debconf/*-old' \
  "$SUITE" "$WORK/rootfs.tar" >&2
ROOTFS_NS=$(date +%s%N)
say "rootfs: $(( $(stat -c %s "$WORK/rootfs.tar") / 1000 / 1000 )) MB in $(( (ROOTFS_NS - START_NS) / 1000000 )) ms"

say "docker import -> $IMAGE"
$SUDO docker import \
  --change "USER $UID_GID:$UID_GID" \
  --change 'WORKDIR /work' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1' \
  --change 'LABEL org.runbox.sandbox=python' \
  --change 'CMD ["python3"]' \
  --message "runbox sandbox: mmdebstrap --variant=$VARIANT $SUITE +$INCLUDE" \
  "$WORK/rootfs.tar" "$IMAGE" >/dev/null
END_NS=$(date +%s%N)

NEW_ID="$($SUDO docker image inspect "$IMAGE" --format '{{.Id}}')"
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
  # Best effort: drop the previous build if nothing else uses or tags it.
  if $SUDO docker image rm "$OLD_ID" >/dev/null 2>&1; then
    say "removed the previous build ${OLD_ID#sha256:}"
  else
    say "kept the previous build ${OLD_ID#sha256:} (still in use or tagged)"
  fi
fi
say "built in $(( (END_NS - START_NS) / 1000000 )) ms (rootfs $(( (ROOTFS_NS - START_NS) / 1000000 )) ms, import $(( (END_NS - ROOTFS_NS) / 1000000 )) ms)"
summary
