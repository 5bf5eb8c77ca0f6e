#!/usr/bin/env bash
# Build the default Python sandbox image without a registry: mmdebstrap makes a
# minimal Debian rootfs from this machine's own apt sources, `docker import`
# turns it into an image. Skips the build if the image exists (use --force).
#   SANDBOX_IMAGE  tag to build (default runbox/sandbox-python:latest)
set -euo pipefail

IMAGE="${SANDBOX_IMAGE:-runbox/sandbox-python:latest}"
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
  esac
done
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

if [ "$FORCE" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "build-image: $IMAGE already exists (use --force to rebuild)" >&2
  exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "build-image: installing mmdebstrap" >&2
  $SUDO apt-get update -q >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >&2
fi

. /etc/os-release
SUITE="${VERSION_CODENAME:-bookworm}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)

echo "build-image: mmdebstrap $SUITE (python3) from this machine's apt sources" >&2
# No mirror argument: mmdebstrap uses the host's apt sources.
$SUDO mmdebstrap --quiet --variant=essential --include=python3,tini \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='echo "runbox:x:10001:" >> "$1/etc/group"' \
  --customize-hook='echo "runbox:x:10001:10001:runbox:/home/runbox:/usr/sbin/nologin" >> "$1/etc/passwd"' \
  --customize-hook='mkdir -p "$1/home/runbox" && chown 10001:10001 "$1/home/runbox"' \
  --customize-hook='mkdir -p "$1/work" "$1/artifacts" && chown 10001:10001 "$1/work" "$1/artifacts"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
  "$SUITE" "$WORK/rootfs.tar" >&2

echo "build-image: docker import -> $IMAGE" >&2
docker import \
  --change 'USER 10001:10001' \
  --change 'WORKDIR /work' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'LABEL org.runbox.sandbox=python' \
  --change 'CMD ["python3"]' \
  "$WORK/rootfs.tar" "$IMAGE" >/dev/null

SIZE=$(docker image inspect "$IMAGE" --format '{{.Size}}')
echo "build-image: built $IMAGE ($(docker image inspect "$IMAGE" --format '{{.Id}}'), $((SIZE / 1024 / 1024)) MiB) in $(( $(date +%s) - START )) s" >&2
