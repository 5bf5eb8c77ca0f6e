# shellcheck shell=bash
# Helpers of deploy/images/build.sh: a Debian root filesystem from this
# machine's apt sources (mmdebstrap, as deploy/sandbox/build-image.sh makes the
# sandbox image) turned into an image with `docker import`.

say() { echo "images: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# "<tag> <image id> <size in bytes>" on stdout, a readable line on stderr.
summary() {
  local id size
  id="$(docker image inspect "$1" --format '{{.Id}}')"
  size="$(docker image inspect "$1" --format '{{.Size}}')"
  say "$1: $((size / 1000 / 1000)) MB ($size bytes), id ${id#sha256:}"
  echo "$1 $id $size"
}

debian_suite() {
  local suite="${IMAGES_SUITE:-}"
  if [ -z "$suite" ]; then
    # shellcheck disable=SC1091
    suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  fi
  [ -n "$suite" ] || die "cannot tell the Debian suite (no VERSION_CODENAME in /etc/os-release); set IMAGES_SUITE"
  echo "$suite"
}

ensure_mmdebstrap() {
  command -v mmdebstrap >/dev/null 2>&1 && return
  say "mmdebstrap not found; installing it with apt-get"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2
}

# A shell snippet (for an mmdebstrap hook, rootfs path as $1) that adds a
# user and its group with fixed ids: the rootfs has no useradd.
user_hook() {
  local name="$1" id="$2" home="$3"
  cat <<HOOK
set -eu
r="\$1"
grep -q '^$name:' "\$r/etc/group"  || echo '$name:x:$id:' >> "\$r/etc/group"
grep -q '^$name:' "\$r/etc/passwd" || echo '$name:x:$id:$id:$name:$home:/usr/sbin/nologin' >> "\$r/etc/passwd"
if [ -f "\$r/etc/shadow" ]; then grep -q '^$name:' "\$r/etc/shadow" || echo '$name:!:19000::::::' >> "\$r/etc/shadow"; fi
if [ -f "\$r/etc/gshadow" ]; then grep -q '^$name:' "\$r/etc/gshadow" || echo '$name:!::' >> "\$r/etc/gshadow"; fi
HOOK
}

# debian_rootfs OUT.tar PACKAGES [mmdebstrap hook options...]
# variant ROOTFS_VARIANT (default "essential": no apt in the image; "custom":
# only PACKAGES and what they depend on), no docs/man/locales, no apt lists.
debian_rootfs() {
  local out="$1" include="$2" variant="${ROOTFS_VARIANT:-essential}"
  shift 2
  # usr-is-merged: otherwise apt satisfies init-system-helpers with usrmerge,
  # which drags in the whole of perl.
  mmdebstrap --quiet --mode=root --variant="$variant" --include="usr-is-merged,$include" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    "$@" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/* "$1"/tmp/* "$1"/usr/share/man "$1"/usr/share/info "$1"/usr/share/locale "$1"/usr/share/lintian; mkdir -p "$1/tmp"; chmod 1777 "$1/tmp"' \
    --customize-hook='find "$1/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete; find "$1/usr/share/doc" -mindepth 1 -type d -empty -delete; rm -f "$1"/var/cache/debconf/*-old' \
    "$(debian_suite)" "$out" >&2
}

# oci_labels TITLE DESCRIPTION: the OCI annotations as key=value lines.
oci_labels() {
  local title="$1" description="$2"
  printf '%s\n' \
    "org.opencontainers.image.title=$title" \
    "org.opencontainers.image.version=$VERSION" \
    "org.opencontainers.image.revision=$REVISION" \
    "org.opencontainers.image.created=$CREATED" \
    "org.opencontainers.image.source=$SOURCE" \
    "org.opencontainers.image.licenses=$LICENSES" \
    "org.opencontainers.image.description=$description"
}
