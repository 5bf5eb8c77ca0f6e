#!/usr/bin/env bash
# Make the secrets of the compose stack (once; existing files are kept):
#   <dir>/admin.token            admin bearer token, for the CLI (RUNBOX_TOKEN_FILE)
#   <dir>/service.token          token the services use to call each other
#   <dir>/principals.json        both principals, tokens stored only as SHA-256 digests
#   <dir>/postgres.password      PostgreSQL superuser password
#   <dir>/grafana-admin.password Grafana's admin password (profile grafana)
# and, for the default DIR, deploy/compose/.env with DOCKER_GID (the group owning the Docker
# socket) when missing.
#
# Usage: deploy/compose/init-secrets.sh [DIR]   (default: deploy/compose/secrets; another DIR
#        is then given to compose as RUNBOX_SECRETS_DIR)
#
# The directory is 0700 (only its owner on the host reads it). The files are 0644 because
# compose bind-mounts them as they are (docker-compose ignores uid/mode outside swarm) and
# the services read them as uid 10001, postgres as its own user and grafana as uid 472.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/secrets}"
mkdir -p "$dir"
chmod 0700 "$dir"
umask 0022

random() { # $1 = bytes of entropy; URL-safe text
    head -c "$1" /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_'
}

make_secret() { # $1 = file, $2 = prefix
    if [[ ! -s "$dir/$1" ]]; then
        printf '%s%s\n' "$2" "$(random 32)" >"$dir/$1"
        echo "made $dir/$1"
    fi
    chmod 0644 "$dir/$1"
}

make_secret admin.token rbx_
make_secret service.token rbx_
make_secret postgres.password ""
make_secret grafana-admin.password ""

digest() { tr -d '\n' <"$dir/$1" | sha256sum | cut -d' ' -f1; }
admin_sha=$(digest admin.token)
service_sha=$(digest service.token)
cat >"$dir/principals.json.tmp" <<EOF
{
  "principals": [
    {"name": "admin", "token_sha256": "$admin_sha", "permissions": ["*"]},
    {"name": "runbox-services", "token_sha256": "$service_sha", "permissions": ["*"]}
  ]
}
EOF
chmod 0644 "$dir/principals.json.tmp"
mv "$dir/principals.json.tmp" "$dir/principals.json"

# The executor joins the socket's group to reach the engine (the image has no docker group).
socket="${DOCKER_SOCKET:-/var/run/docker.sock}"
if [[ $# -eq 0 ]] && [[ ! -e "$here/.env" ]] && [[ -S "$socket" ]]; then
    echo "DOCKER_GID=$(stat -c %g "$socket")" >"$here/.env"
    echo "made $here/.env (DOCKER_GID of $socket)"
fi
echo "secrets in $dir; the CLI's token: RUNBOX_TOKEN_FILE=$dir/admin.token"
