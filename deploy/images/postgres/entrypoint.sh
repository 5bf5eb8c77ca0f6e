#!/bin/bash
# Entrypoint of runbox/postgres (runs as the postgres user, uid 999).
#
# First start (no PG_VERSION in PGDATA): initdb with the superuser "postgres"
# and the password read from POSTGRES_PASSWORD_FILE (required), scram-sha-256
# for every TCP connection, then the databases named in POSTGRES_DATABASES
# (comma separated, owned by postgres) are created on a server listening on a
# Unix socket only. Every start then runs postgres on 0.0.0.0:5432.
# Arguments are passed to postgres (e.g. -c max_connections=200).
set -euo pipefail

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA
# The Unix socket: /run is empty in the image and root-owned; /tmp is writable (a tmpfs
# or emptyDir with a read-only root).
SOCKETS="${PGHOST:-/tmp}"
say() { echo "runbox-postgres: $*" >&2; }

initialise() {
  local password_file="${POSTGRES_PASSWORD_FILE:-}"
  if [ -z "$password_file" ] || [ ! -s "$password_file" ]; then
    say "POSTGRES_PASSWORD_FILE must name a non-empty file (the superuser's password) on first start"
    exit 1
  fi
  # PGDATA may be a subdirectory of the volume (a fresh volume's root can hold
  # lost+found, which initdb refuses): made here when the volume lets us.
  mkdir -p "$PGDATA" 2>/dev/null || true
  if [ ! -w "$PGDATA" ]; then
    say "$PGDATA is not writable by uid $(id -u): give the volume to uid 999 (Kubernetes: fsGroup 999)"
    exit 1
  fi
  say "initialising $PGDATA"
  # initdb reads the first line of the file as the password.
  initdb --username=postgres --pwfile="$password_file" --auth-local=peer \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >&2
  {
    echo "listen_addresses = '*'"
    echo "password_encryption = 'scram-sha-256'"
  } >> "$PGDATA/postgresql.conf"
  {
    echo "host all all 0.0.0.0/0 scram-sha-256"
    echo "host all all ::/0 scram-sha-256"
  } >> "$PGDATA/pg_hba.conf"
  create_databases
}

create_databases() {
  local names="${POSTGRES_DATABASES:-}" name
  [ -n "$names" ] || return 0
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -k $SOCKETS" start >&2
  IFS=',' read -r -a list <<< "$names"
  for name in "${list[@]}"; do
    name="$(echo "$name" | tr -d '[:space:]')"
    [ -n "$name" ] || continue
    if [[ ! "$name" =~ ^[a-z_][a-z0-9_]*$ ]]; then
      say "database name '$name' is not a plain lower-case identifier"
      pg_ctl -D "$PGDATA" -m fast -w stop >&2
      exit 1
    fi
    say "creating database $name"
    psql -v ON_ERROR_STOP=1 -h "$SOCKETS" -U postgres -d postgres -q \
      -c "CREATE DATABASE \"$name\" OWNER postgres" >&2
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >&2
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initialise
fi
# SIGTERM (docker stop, Kubernetes) becomes PostgreSQL's fast shutdown (SIGINT):
# its own SIGTERM would wait for every client to disconnect.
postgres -D "$PGDATA" -k "$SOCKETS" "$@" &
pid=$!
trap 'kill -INT "$pid"' TERM INT
status=0
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || status=$?; done
exit "$status"
